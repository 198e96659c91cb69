"""Preemption: SIGTERM (schedulers, `kill`) or SIGINT (Ctrl-C) asks the run to stop after the current step.

The handler only raises a flag. Every rank then agrees on the flag with one all-reduce per step, so all
ranks save the same step and exit together even when only one of them got the signal.
A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch
from accelerate import Accelerator


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def agreed(self, accelerator: Accelerator) -> bool:
        """Collective when there are several processes: True on every rank if any rank got a signal."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
