"""Train a Bounded-Cache Transformer with Accelerate, on one CPU, one GPU, DDP or DeepSpeed ZeRO.

    accelerate launch train.py --config configs/debug.yaml max_steps=20 output_dir=runs/try model.window=64
    python train.py export runs/try --push-to-hub user/my-bct
    python train.py relayout runs/try/export --out runs/try-m32 --memory-slots 32 --chunk-size 16

config -> accelerator -> model + tokenizer -> data (+ passkey probe) -> optimizer/schedule -> prepare -> resume ->
steps (log, eval, probe, save, best checkpoint, preemption) -> final eval + checkpoint -> sample + export
(+ export-best, Hub upload).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration
from tqdm.auto import tqdm

from data import build_train_loader, build_validation_batches, prepare_corpus
from training.best import BEST_FILE, BestCheckpoint
from training.checkpoint import remove_partial, save_checkpoint
from training.config import (
    ConfigError,
    RunConfig,
    bct_checkpoint_fields,
    config_dict,
    load_run_config,
    sample_settings,
    save_run_config,
)
from training.export import export_checkpoint, export_from_accelerator, generate_sample
from training.guard import NONFINITE_EXIT, NonFiniteError, NonFiniteGuard, any_rank, weights_finite
from training.hub import close_run_uploads, export_and_push, push_save, run_uploader
from training.launcher import stop_with_launcher
from training.lines import plan_resume, record_line
from training.lock import RunLock, RunLocked
from training.loss import synthetic_answer_hits, synthetic_weighted_loss
from training.model import build_model_and_tokenizer, load_init_source
from training.optim import build_optimizer, build_scheduler
from training.plots import plot_metrics
from training.preemption import StopRequest
from training.probe import PasskeyProbe
from training.relayout import relayout_command
from training.resume import ResumeError, resume
from training.round_robin import deal
from training.tracking import MetricsFile, init_trackers, read_metrics


def build_accelerator(cfg: RunConfig) -> Accelerator:
    mixed_precision = cfg.train.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # DDP: parameters may sit out a step (e.g. memory writes when a sequence fits in the window).
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # DeepSpeed on CPU counts processes right only with gloo (docs/training.md, launch pitfalls); a lone process needs no group.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    out = Path(cfg.output_dir)
    return Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision=mixed_precision,
        log_with=cfg.tracking.trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")),
        dynamo_backend="inductor" if cfg.train.compile else None,
        kwargs_handlers=handlers,
    )


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, batches: list[dict]) -> dict[str, float]:
    """Token-weighted mean loss over the validation batches, dealt round-robin to the ranks. Every rank
    runs the same number of forwards (ZeRO-3 gathers parameters collectively); padding forwards count 0."""
    if not batches:
        return {}
    model.eval()
    totals = torch.zeros(2, device=accelerator.device, dtype=torch.float64)  # (loss * tokens, tokens)
    for cpu_batch, counts in deal(accelerator, batches):
        batch = {k: v.to(accelerator.device) for k, v in cpu_batch.items()}
        tokens = (batch["labels"][:, 1:] != -100).sum() * counts  # the model shifts labels
        loss = model(**batch).loss.double()
        totals += torch.stack([loss * tokens, tokens.double()])
    model.train()
    loss_sum, tokens = accelerator.reduce(totals, reduction="sum").tolist()
    mean = loss_sum / tokens
    return {"val/loss": mean, "val/ppl": math.exp(min(mean, 50.0))}


def forward_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    synthetic: torch.Tensor | None,
    synthetic_weight: float | None,
    answer_mean: str,
    signals: bool,
) -> tuple:
    """The forward (memory signals only where logged) and its loss: the model's own mean over every labelled
    token, or, with `data.synthetic_loss_weight`, that share for the synthetic answers (training/loss.py)."""
    if synthetic_weight is None:
        output = model(**batch, output_memory_signals=signals)
        return output, output.loss
    output = model(input_ids=batch["input_ids"], output_memory_signals=signals)
    loss = synthetic_weighted_loss(output.logits, batch["labels"], synthetic, synthetic_weight, answer_mean)
    return output, loss


def train(cfg: RunConfig) -> int:
    if cfg.train.cpu_threads is not None:
        torch.set_num_threads(cfg.train.cpu_threads)
    stop_with_launcher()  # a SIGTERM to `accelerate launch` must reach this process (training/launcher.py)
    accelerator = build_accelerator(cfg)
    if accelerator.distributed_type == DistributedType.NO and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            "several processes were launched but accelerate runs them unsynchronised; "
            "on CPU set ACCELERATE_USE_CPU=1 (launch/README.md)"
        )
    top = Path(cfg.output_dir)
    # One trainer per output folder, decided before anything in it is read or written (training/lock.py).
    lock, refusal = RunLock(top), None
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except RunLocked as err:
            refusal = str(err)
    if any_rank(accelerator, refusal is not None):
        if refusal is not None:
            print(f"error: {refusal}", file=sys.stderr)
        return 2
    # Where this run continues: the folder's main line or a branch of it (training/lines.py). Every rank
    # reads the folder before the main process changes it.
    plan = plan_resume(top, cfg.resume_mode)
    accelerator.wait_for_everyone()
    if plan.run_dir != top:
        cfg = cfg.model_copy(update={"output_dir": str(plan.run_dir)})
    out = plan.run_dir
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        remove_partial(out)
    accelerator.wait_for_everyone()

    model, tokenizer = build_model_and_tokenizer(accelerator, cfg)
    with accelerator.main_process_first():  # tokenised and packed once, then read from the disk cache
        corpus = prepare_corpus(cfg.data, tokenizer)
    # The loader shards by rank itself and is not prepared: batches are moved to the device below.
    loader = build_train_loader(
        cfg.data,
        corpus,
        tokenizer,
        batch_size=cfg.train.micro_batch_size,
        seed=cfg.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    # eval_batches global batches of micro_batch_size x num_processes rows: the same rows in any launch.
    val_batches = build_validation_batches(
        corpus, cfg.train.micro_batch_size, cfg.train.eval_batches * accelerator.num_processes
    )
    # Held-out passkeys scored while training (training/probe.py), drawn once from the validation rows.
    probe = PasskeyProbe(cfg.probe, tokenizer, corpus.validation) if cfg.probe.every else None

    if cfg.train.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.max_steps, accelerator.num_processes)
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed:
        # With no prepared dataloader accelerate cannot infer the micro batch; clipping is DeepSpeed's job.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = cfg.train.micro_batch_size
        ds_config["gradient_clipping"] = cfg.optim.grad_clip
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    metrics_file = MetricsFile(out / "metrics.jsonl", enabled=accelerator.is_main_process)
    start_step, skipped, resumed_from = 0, 0, None
    if plan.checkpoint is not None:
        # Refuses a changed model or data, skips a checkpoint that does not load (training/resume.py).
        try:
            resumed_from, state = resume(
                accelerator,
                plan.checkpoint,
                plan.walk_back,
                loader,
                config_dict(cfg),
                accelerator.unwrap_model(model),
                cfg.resume_allow_changes,
            )
        except ResumeError as err:
            if accelerator.is_main_process:
                print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        start_step, skipped = state["step"], state.get("nonfinite_skips", 0)
    if accelerator.is_main_process:
        record_line(top, plan)
        save_run_config(cfg, out / "config.yaml")
        if plan.note:
            print(plan.note)
    init_trackers(accelerator, cfg)
    # train.keep_best: the best checkpoint so far, continued on resume (training/best.py).
    best = BestCheckpoint(out, cfg.train.keep_best)
    best.restore(start_step if resumed_from is not None else None, write=accelerator.is_main_process)
    if resumed_from is not None:
        metrics_file.truncate_after(start_step)
        accelerator.print(f"resumed from {resumed_from} at step {start_step}")
    else:
        set_aside = metrics_file.set_aside()  # a fresh run never appends to an old run's rows
        if set_aside is not None:
            print(f"an earlier run's metrics.jsonl is kept as {set_aside}")
        if cfg.init_from is not None and val_batches:
            # Step 0 of continued training: the converted model beside the source model it came from, on the
            # same batches (docs/design.md §4: equal where the window covers the sequence). A BCT checkpoint
            # is continued as it is: it is its own source.
            extra = {}
            if bct_checkpoint_fields(cfg.init_from) is None:
                source = evaluate(accelerator, load_init_source(cfg).to(accelerator.device), val_batches)
                extra = {"val/source_loss": source["val/loss"], "val/source_ppl": source["val/ppl"]}
            log_eval(accelerator, model, val_batches, metrics_file, 0, extra=extra)
        if cfg.init_from is not None and probe is not None:  # where the continued model starts
            log_metrics(accelerator, metrics_file, 0, probe.run(accelerator, model))

    stop = StopRequest()
    hub = run_uploader(cfg, accelerator.is_main_process)  # None without push_to_hub
    guard = NonFiniteGuard(accelerator, cfg.train.max_nonfinite_skips, skipped)

    def save(step: int) -> Path:
        """A checkpoint of finite weights only; pruning keeps the one this run resumed from."""
        if not weights_finite(accelerator, model):
            raise NonFiniteError(
                f"step {step}: the weights hold non-finite values after the update; this step was not saved. "
                "Lower optim.lr or raise optim.warmup_steps, then rerun to resume from the newest checkpoint."
            )
        return save_checkpoint(
            accelerator,
            cfg,
            step,
            model,
            loader,
            tokenizer,
            metrics,
            extra_state={"nonfinite_skips": guard.skipped},
            protect=tuple(p for p in (resumed_from, best.checkpoint) if p is not None),
        )

    batches = iter(loader)
    tokens_per_step = (
        cfg.train.micro_batch_size * cfg.data.seq_len * cfg.train.grad_accum * accelerator.num_processes
    )
    metrics: dict[str, float] = {}
    last_saved = start_step if resumed_from is not None else None
    progress = tqdm(
        total=cfg.max_steps, initial=start_step, desc="train", disable=not accelerator.is_local_main_process
    )
    model.train()
    step, grad_norm = start_step, None
    # Time spent in steps since the last log (not in eval or saving), and their count: tokens/s.
    busy, busy_steps = 0.0, 0
    try:
        while step < cfg.max_steps:
            started = time.perf_counter()
            log_now = (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.max_steps
            lr = scheduler.get_last_lr()[0]  # the rate of this update (group 0: base lr)
            loss_sum = torch.zeros((), device=accelerator.device)
            signals: dict[str, torch.Tensor] = {}
            answer_hits = torch.zeros(
                2, device=accelerator.device
            )  # [correct, total] synthetic answer tokens
            for _ in range(cfg.train.grad_accum):
                batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}  # (B, T) each
                synthetic = batch.pop("synthetic", None)  # (B,) rows holding synthetic answers, if mixed
                with accelerator.accumulate(model):
                    output, loss = forward_loss(
                        model,
                        batch,
                        synthetic,
                        cfg.data.synthetic_loss_weight,
                        cfg.data.synthetic_answer_mean,
                        log_now,
                    )
                    if deepspeed:  # DeepSpeed steps inside backward: the loss is checked before it
                        guard.check_loss_before_backward(step + 1, loss)
                    accelerator.backward(loss)
                    update_ok = True
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(
                            model.parameters(), cfg.optim.grad_clip or math.inf
                        )
                        # Before optimizer.step(): a non-finite loss or gradient never reaches the weights.
                        update_ok = guard.update_ok(
                            step + 1, loss_sum + loss.detach().float(), grad_norm, stepped=deepspeed
                        )
                    if update_ok:
                        optimizer.step()
                    scheduler.step()  # also after a skipped update: the rate follows the step count
                    optimizer.zero_grad()
                loss_sum += loss.detach().float()
                for name, value in (output.memory_signals or {}).items():
                    signals[name] = signals.get(name, 0.0) + value.detach().float()
                if log_now and synthetic is not None:
                    answer_hits += synthetic_answer_hits(output.logits.detach(), batch["labels"], synthetic)
            step += 1
            busy, busy_steps = busy + time.perf_counter() - started, busy_steps + 1
            progress.update(1)

            if log_now:
                names = sorted(signals)
                # One all-reduce for the loss and every memory signal: means over micro-batches and ranks.
                packed = torch.stack([loss_sum, *(signals[n] for n in names)]) / cfg.train.grad_accum
                packed = accelerator.reduce(packed, reduction="mean").tolist()
                correct, answers = accelerator.reduce(answer_hits, reduction="sum").tolist()
                metrics = {
                    "train/loss": packed[0],  # non-finite values are written as null (training/tracking.py)
                    "train/lr": lr,
                    "train/grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                    "train/tokens_per_s": tokens_per_step * busy_steps / busy,
                    "train/tokens": tokens_per_step * step,
                    **{f"memory/{n}": v for n, v in zip(names, packed[1:])},
                    **({"train/nonfinite_skips": guard.skipped} if guard.skipped else {}),
                    # Greedy exact-token accuracy on the synthetic answers of this step's batches (recall).
                    **({"train/answer_accuracy": correct / answers} if answers else {}),
                }
                metrics_file.log({"step": step, **metrics})
                accelerator.log(metrics, step=step)
                progress.set_postfix(loss=f"{packed[0]:.3f}", lr=f"{lr:.2e}")
                busy, busy_steps = 0.0, 0
            measured = {}  # this step's validation and probe metrics
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.max_steps:
                measured |= log_eval(accelerator, model, val_batches, metrics_file, step)
            if probe is not None and step % cfg.probe.every == 0 and step < cfg.max_steps:
                measured |= log_metrics(accelerator, metrics_file, step, probe.run(accelerator, model))
            metrics.update(measured)
            improved = best.improved_by(measured)  # saved now, so that the best step has a checkpoint
            # The last step is saved after the final eval, so that its checkpoint (and card) holds val/*.
            if improved or (
                cfg.train.save_every and step % cfg.train.save_every == 0 and step < cfg.max_steps
            ):
                saved = save(step)
                push_save(accelerator, hub, cfg, saved, model, tokenizer, metrics, step)  # hub.strategy
                last_saved = step
                if improved:
                    best.record(step, measured, write=accelerator.is_main_process)
            if stop.agreed(accelerator):  # preemption: every rank saves this step and leaves
                if last_saved != step:
                    save(step)
                accelerator.end_training()
                accelerator.print(
                    f"\nstopped by a signal at step {step}; saved {out / f'step_{step}'}; rerun to resume"
                )
                close_run_uploads(hub, cfg)
                lock.release()
                return 0
        progress.close()

        val = log_eval(accelerator, model, val_batches, metrics_file, step)
        measured = dict(val)
        if probe is not None:
            measured |= log_metrics(accelerator, metrics_file, step, probe.run(accelerator, model))
        metrics.update(measured)
        if last_saved != step:
            saved = save(step)
            push_save(accelerator, hub, cfg, saved, model, tokenizer, metrics, step)
        if best.improved_by(measured):
            best.record(step, measured, write=accelerator.is_main_process)
    except NonFiniteError as err:  # nothing non-finite was stepped into the weights' checkpoints or saved
        progress.close()
        if accelerator.is_main_process:
            print(f"\nerror: {err}", file=sys.stderr)
        accelerator.end_training()
        close_run_uploads(hub, cfg)
        return NONFINITE_EXIT
    # Every rank generates (under ZeRO-3 each forward gathers the shards collectively).
    sample = generate_sample(
        accelerator.unwrap_model(model),
        tokenizer,
        cfg.export.sample_prompt,
        cfg.export.max_new_tokens,
        cfg.seed,
        **sample_settings(cfg.export.model_dump()),
    )
    export_dir = export_from_accelerator(
        accelerator, model, tokenizer, out / "export", config_dict(cfg), metrics, sample, step
    )
    accelerator.end_training()
    plot = out / "metrics.png"  # the run's curves, also for runs with no tracker
    if accelerator.is_main_process:
        plot_metrics(read_metrics(out / "metrics.jsonl"), plot, title=out.name)

    config = accelerator.unwrap_model(model).config
    accelerator.print(
        f"\nvalidation loss {val.get('val/loss', math.nan):.4f}, perplexity {val.get('val/ppl', math.nan):.2f}"
    )
    accelerator.print(
        f"KV cache: {config.kv_capacity} entries per layer per KV head = "
        f"{config.kv_cache_bytes(batch_size=1, dtype=torch.float32):,} bytes per sequence (float32), any context length"
    )
    if sample is not None:
        accelerator.print(f"sample: {sample!r}")
    accelerator.print(f"export: {export_dir}")
    accelerator.print(f"curves: {plot}")
    if best.checkpoint is not None and accelerator.is_main_process:
        best_dir = export_checkpoint(best.checkpoint, out / "export-best")
        print(f"best: {best.metric} {best.value:.4f} at step {best.step}; export {best_dir} ({BEST_FILE})")
    if hub is not None:
        hub.submit("final export", export_dir, "End of training")
    close_run_uploads(hub, cfg)  # waits; failed uploads are a warning, not a failed run
    lock.release()
    return 0


def log_eval(
    accelerator: Accelerator,
    model: torch.nn.Module,
    batches: list[dict],
    metrics_file: MetricsFile,
    step: int,
    extra: dict[str, float] | None = None,
) -> dict[str, float]:
    return log_metrics(
        accelerator, metrics_file, step, {**evaluate(accelerator, model, batches), **(extra or {})}
    )


def log_metrics(
    accelerator: Accelerator, metrics_file: MetricsFile, step: int, values: dict[str, float]
) -> dict[str, float]:
    """Record a step's measured `values` in metrics.jsonl and the trackers, print them, return them."""
    metrics_file.log({"step": step, **values})
    accelerator.log(values, step=step)
    accelerator.print(f"\nstep {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    return values


def export_command(argv: list[str]) -> int:
    """`train.py export RUN [--push-to-hub REPO]`: export a run's checkpoint for `from_pretrained` and the Hub."""
    parser = argparse.ArgumentParser(
        prog="train.py export", description="Export a run's newest checkpoint (or a step_N) and push it."
    )
    parser.add_argument("run", nargs="?", help="a run's output_dir (its newest checkpoint) or a step_N")
    parser.add_argument("--checkpoint", help="a step_N folder written by train.py (instead of RUN)")
    parser.add_argument("--out", help="export folder; default RUN/export (RUN/export-step_N if older)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--revision", default=None, metavar="BRANCH", help="branch to push to")
    args = parser.parse_args(argv)
    if (args.run is None) == (args.checkpoint is None):
        parser.error("give either a RUN folder or --checkpoint")
    return export_and_push(
        args.checkpoint or args.run, args.out, args.push_to_hub, args.private, args.revision
    )


def train_command(argv: list[str]) -> int:
    """`train.py --config X key=value ...`: validate everything cheap first, then train."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="run config YAML (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3")
    args = parser.parse_args(argv)
    try:
        # Checks that need the tokenizer or the corpus (e.g. the probe's lengths) raise from inside train.
        return train(load_run_config(args.config, args.overrides))
    except ConfigError as err:
        # One line, exit 2, once (not once per process). Under `accelerate launch`, add `-q` so that the
        # launcher prints no traceback of its own (its exit status is then 1).
        if os.environ.get("RANK", "0") == "0":
            print(f"config error: {err}", file=sys.stderr)
        return 2


# `train.py export ...` exports, `train.py relayout ...` lays a checkpoint's cache out anew; anything else is a
# training run (`accelerate launch train.py --config ...` must keep working without a sub-command).
COMMANDS = {"export": export_command, "relayout": relayout_command}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = COMMANDS.get(argv[0]) if argv else None
    return command(argv[1:]) if command else train_command(argv)


if __name__ == "__main__":
    sys.exit(main())
