"""Backups as directories on the local filesystem, behind :class:`~backups.storage.BackupStorage`.

Atomicity is the filesystem's: a temp name beside the final one, fsync of the data, a
rename, fsync of the parent (see :mod:`backups.storage.local.durable`). Temp names start
with ``.tmp-``, so listings by the catalog (``marker-*``) never see a half-written backup.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from backups.storage import StorageError
from backups.storage.local.durable import (
    TEMP_PREFIX,
    fsync_dir,
    fsync_file,
    publish_directory,
)
from backups.storage.local.lock import WriterLock


class LocalStorage:
    """One ``--backups`` directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def local_path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if any(part in ("..", "/") for part in parts):
            raise StorageError(f"backup store key {key!r} leaves the backups directory")
        return self.root.joinpath(*parts)

    def list(self, prefix: str = "") -> list[str]:
        directory = self.local_path(prefix)
        if not directory.is_dir():
            return []
        return sorted(entry.name for entry in directory.iterdir())

    def open_read(self, key: str) -> BinaryIO:
        return open(self.local_path(key), "rb")

    def write_atomic(self, key: str, data: bytes) -> None:
        final = self.local_path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.with_name(f"{TEMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
        try:
            with open(temp, "wb") as f:
                f.write(data)
            fsync_file(temp)
            os.replace(temp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {final}: {exc}") from exc

    def publish(self, staged: Path, key: str) -> None:
        publish_directory(staged, self.local_path(key))

    def delete(self, key: str) -> None:
        path = self.local_path(key)
        hidden = path.parent / f"{TEMP_PREFIX}prune-{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            path.rename(hidden)
            fsync_dir(path.parent)
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc}") from exc
        shutil.rmtree(hidden, ignore_errors=True)

    def lock(self, prefix: str) -> WriterLock:
        return WriterLock(self.local_path(prefix))
