"""A signal to `accelerate launch` must reach the trainer.

With one process, `accelerate launch` runs the trainer as a plain child and does not forward signals: a
SIGTERM to the launcher ends the launcher alone and leaves the trainer running as an orphan, still holding
the output folder. Under the launcher, the trainer therefore asks Linux to send it SIGTERM when its parent
dies (`prctl(PR_SET_PDEATHSIG)`), which the preemption handler turns into save-and-stop. With several
processes torchrun's agent forwards SIGTERM/SIGINT to every worker itself (and kills them 30 s later).
A plain `python train.py` is left alone: its parent is a shell, which may exit while the run goes on.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def stop_with_launcher() -> bool:
    """Under a one-process `accelerate launch` on Linux: SIGTERM this process when its launcher dies.
    True if that was set up."""
    launched = "ACCELERATE_MIXED_PRECISION" in os.environ  # set by every `accelerate launch`
    # Several processes: torchrun's agent is the parent and forwards signals itself.
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1
    if not (launched and single and sys.platform.startswith("linux")):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True
