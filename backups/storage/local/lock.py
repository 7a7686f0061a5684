"""The backup writer lock of one source: only one process writes or prunes its backups.

Why a lock file and ``flock``: the kernel drops the lock with the process, so a writer
that dies never leaves the source locked; and every process that writes backups
(``replicate``, ``replay``, ``prune``) agrees on one file, ``<backups>/<source>/.writer.lock``.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from cutline.errors import DeadlineExceeded

WRITER_LOCK = ".writer.lock"


class WriterLock:
    """An exclusive flock on ``<backups>/<source>/.writer.lock``, taken with a deadline."""

    def __init__(self, directory: Path):
        self.path = directory / WRITER_LOCK
        self._fd: int | None = None

    def acquire(self, deadline_s: float, stop: threading.Event) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        end = time.monotonic() + deadline_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return
            except BlockingIOError:
                if time.monotonic() > end or stop.is_set():
                    os.close(fd)
                    raise DeadlineExceeded(
                        f"another process held the backup writer lock {self.path} for over "
                        f"{deadline_s:.0f} s"
                    ) from None
                time.sleep(0.05)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
