"""The non-finite guard: a NaN or infinite loss or gradient norm never reaches the optimizer or a checkpoint.

Each update's summed loss and global gradient norm are checked after clipping and before `optimizer.step()`,
with one host sync (and, with several processes, one all-reduce so that every rank takes the same branch).
A bad update is skipped (gradients dropped, the scheduler still steps so the learning rate follows the step
count, as with fp16 loss scaling) while fewer than `train.max_nonfinite_skips` have been skipped in the run;
otherwise the run stops without saving and `train.py` exits with `NONFINITE_EXIT`. Under DeepSpeed the
optimizer steps inside `backward`, so the loss is checked before it instead and a bad one always stops the
run; a bad gradient norm there can only stop the run before the next checkpoint.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

NONFINITE_EXIT = 3  # not 1 (a crash) or 2 (a user mistake): the run diverged, retrying it as is will not help


class NonFiniteError(RuntimeError):
    """The run stops: `str()` is the one line to print."""


class NonFiniteGuard:
    def __init__(self, accelerator: Accelerator, max_skips: int, skipped: int = 0) -> None:
        self.accelerator = accelerator
        self.max_skips = max_skips
        self.skipped = skipped  # over the whole run: restored from trainer_state.json on resume

    def _agreed_bad(self, loss: torch.Tensor, grad_norm: torch.Tensor | float | None) -> tuple[bool, bool]:
        """(loss bad, grad norm bad) on any rank; one host sync."""
        loss_bad = ~torch.isfinite(loss.detach().float())
        norm_bad = torch.zeros_like(loss_bad)
        if grad_norm is not None:
            norm_bad = ~torch.isfinite(torch.as_tensor(grad_norm, device=loss.device).float())
        flags = torch.stack([loss_bad, norm_bad]).float()
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        loss_flag, norm_flag = flags.tolist()
        return loss_flag > 0, norm_flag > 0

    def update_ok(
        self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | float | None, stepped: bool = False
    ) -> bool:
        """True: take the optimizer step. False: skip this update. Raises NonFiniteError to stop.
        `stepped`: DeepSpeed has already taken the step, so a bad update cannot be skipped."""
        loss_bad, norm_bad = self._agreed_bad(loss, grad_norm)
        if not (loss_bad or norm_bad):
            return True
        what = " and ".join(name for name, bad in (("loss", loss_bad), ("gradient norm", norm_bad)) if bad)
        if stepped:
            raise NonFiniteError(
                self._message(step, what, "after DeepSpeed's optimizer step, before any save")
            )
        return self._skip_or_stop(step, what, "before its optimizer step")

    def check_loss_before_backward(self, step: int, loss: torch.Tensor) -> None:
        """DeepSpeed: the check before `backward` (which also steps). Stops on a bad loss: skipping one
        micro-batch's backward would put DeepSpeed's accumulation out of step."""
        if self._agreed_bad(loss, None)[0]:
            raise NonFiniteError(self._message(step, "loss", "before its backward and optimizer step"))

    def _skip_or_stop(self, step: int, what: str, when: str) -> bool:
        if self.skipped < self.max_skips:
            self.skipped += 1
            self.accelerator.print(
                f"\nwarning: step {step}: non-finite {what}; update skipped "
                f"({self.skipped} of train.max_nonfinite_skips={self.max_skips})"
            )
            return False
        raise NonFiniteError(self._message(step, what, when))

    def _message(self, step: int, what: str, when: str) -> str:
        return (
            f"step {step}: non-finite {what}; stopped {when}; nothing non-finite was saved "
            f"(skipped so far: {self.skipped}, train.max_nonfinite_skips={self.max_skips}). "
            "Lower optim.lr or raise optim.warmup_steps, then rerun to resume from the newest checkpoint."
        )


def any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """True on every rank when `flag` is True on any (collective with several processes)."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum")
    return bool(total.item() > 0)


@torch.no_grad()
def weights_finite(accelerator: Accelerator, model: torch.nn.Module) -> bool:
    """Every parameter finite, on every rank (collective). Under ZeRO-3 a rank checks its own partition
    (`ds_tensor`); the full parameters are placeholders there."""
    flags = [torch.isfinite(getattr(p, "ds_tensor", p)).all() for p in model.parameters()]
    return not any_rank(accelerator, bool(flags) and not bool(torch.stack(flags).all()))
