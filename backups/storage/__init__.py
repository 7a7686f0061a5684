"""Where backups are kept, behind one small interface; one package per backend.

Why an interface: the catalog, retention and the writer say *what* they do with the
store (list, read, write atomically, publish, delete, lock), not how a filesystem does
it, so another backend (an object store) is a new package beside ``local/``, not edits
all over the store (the shape of Litestream's ``ReplicaClient``).

Keys are relative paths with ``/`` (``shop/marker-0000000007/manifest.json``); the
backend maps them to where it keeps things. Readers that hand a file to DuckDB or SQLite
ask for :meth:`BackupStorage.local_path`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO, Protocol

from cutline.errors import CutlineError


class StorageError(CutlineError):
    """The store refused an operation (permissions, a full disk, a missing key)."""


class StoreLock(Protocol):
    """An exclusive lock on one source's backups, taken with a deadline."""

    path: Path

    def acquire(self, deadline_s: float, stop: threading.Event) -> None: ...

    def release(self) -> None: ...


class BackupStorage(Protocol):
    """The operations the backup store needs from where it keeps its files."""

    def list(self, prefix: str = "") -> list[str]:
        """Names directly under ``prefix``, sorted; empty if there is nothing there."""
        ...

    def open_read(self, key: str) -> BinaryIO:
        """The file at ``key``, for reading; FileNotFoundError if there is none."""
        ...

    def write_atomic(self, key: str, data: bytes) -> None:
        """``data`` at ``key``, durable and whole or not at all (temp, fsync, rename)."""
        ...

    def publish(self, staged: Path, key: str) -> None:
        """A fully written directory ``staged`` becomes visible at ``key``, durably, at once."""
        ...

    def delete(self, key: str) -> None:
        """``key`` and everything under it: hidden at once, then removed."""
        ...

    def lock(self, prefix: str) -> StoreLock:
        """The writer lock of ``prefix`` (a source), not yet taken."""
        ...

    def local_path(self, key: str) -> Path:
        """Where ``key`` is on this machine, for readers that open files by path."""
        ...
