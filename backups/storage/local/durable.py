"""Durable, atomic publication of a directory: temp name, fsync, rename, fsync parent.

A crash at any point leaves either no backup or the complete one (invariant 4): readers
only look at directories whose final name is in place, and the manifest is written last,
inside the temp directory, before the rename.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from cutline import failpoints

TEMP_PREFIX = ".tmp-"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def publish_directory(temp: Path, final: Path) -> None:
    """fsync every file in ``temp``, then rename it to ``final`` and fsync the parent."""
    for path in sorted(temp.rglob("*")):
        if path.is_file():
            fsync_file(path)
    for path in sorted((p for p in temp.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(path)
    fsync_dir(temp)
    failpoints.hit("snapshot.before_publish")  # written and durable, not yet visible
    os.rename(temp, final)
    fsync_dir(final.parent)


def remove_stale_temps(parent: Path) -> list[Path]:
    """Delete half-written backups a crash left behind; return what was removed."""
    removed = []
    if parent.is_dir():
        for path in parent.iterdir():
            if path.name.startswith(TEMP_PREFIX) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed
