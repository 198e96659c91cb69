"""One trainer per output folder: an OS file lock held by the main process for the whole run.

`output_dir/.lock` is locked with `filelock` (flock on Linux), which the OS releases when the process dies,
so a lock left by a killed run is free again at once. Who holds it (pid, host, start time) is written next to
it in `.lock.owner`, so that a second trainer can say whom it is waiting for; the lock file itself stays
empty (filelock truncates it on every attempt).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner"


class RunLocked(RuntimeError):
    """Another trainer holds the output folder: `str()` is the one line to print."""


class RunLock:
    def __init__(self, output_dir: str | Path) -> None:
        self.root = Path(output_dir)
        self._lock = FileLock(self.root / LOCK_FILE, timeout=0)

    def acquire(self) -> None:
        """Take the lock at once or raise RunLocked naming the holder. Creates the output folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunLocked(
                f"output_dir {self.root} is in use by another trainer ({self._holder()}): wait for it to "
                "end or stop it, or choose another output_dir"
            ) from None
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        (self.root / OWNER_FILE).write_text(json.dumps(owner))

    def release(self) -> None:
        if self._lock.is_locked:
            (self.root / OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()

    def _holder(self) -> str:
        try:
            owner = json.loads((self.root / OWNER_FILE).read_text())
            return f"pid {owner['pid']} on {owner['host']}, since {owner['started']}"
        except (OSError, ValueError, KeyError):  # the holder is between taking the lock and writing this
            return "holder not yet recorded"
