"""Directories a command writes to, checked before any work starts.

Why a probe file: permission bits do not tell the truth for root, nor for a read-only
mount, a full or immutable filesystem; creating and removing a file does.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cutline.errors import ConfigError


def writable_directory(label: str, path: Path | str) -> Path:
    """``path`` as a directory this process can write, created if only it is missing.

    A missing parent is refused rather than created: it is more often a typo than a wish.
    Raises ConfigError (exit status 2) naming the option, the path and what to do.
    """
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{label} {directory} is not a directory: pass a directory")
    if not directory.exists():
        parent = directory.absolute().parent
        if not parent.is_dir():
            raise ConfigError(
                f"{label} {directory} does not exist, nor does its parent {parent}: "
                "create it first (mkdir -p) or fix the path"
            )
        try:
            directory.mkdir()
        except FileExistsError:
            pass  # another process created it meanwhile
        except OSError as exc:
            raise ConfigError(
                f"{label} {directory} does not exist and cannot be created "
                f"({exc.strerror or exc}): create it, or choose a writable place"
            ) from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=".cutline-probe-", dir=directory)
    except OSError as exc:
        raise ConfigError(
            f"{label} {directory} is not writable ({exc.strerror or exc}): fix its "
            "permissions or mount, or choose another directory"
        ) from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return directory


def distinct_directories(replica: Path | None, backups: Path | None) -> None:
    """Refuse ``--replica`` and ``--backups`` naming one directory (also via a symlink).

    Why: replica shards and backup folders are both per-source trees; one directory
    would mix them and retention/``replay --force`` could remove the other's files.
    Each must also be a directory if it already exists (replay creates missing ones).
    """
    for label, path in (("--replica", replica), ("--backups", backups)):
        if path is not None and path.exists() and not path.is_dir():
            raise ConfigError(f"{label} {path} is not a directory: pass a directory")
    if replica is None or backups is None:
        return
    if replica.resolve() == backups.resolve():
        raise ConfigError(
            f"--replica {replica} and --backups {backups} are the same directory: "
            "give each its own directory"
        )


DEMO_STAMP = ".cutline-demo"


def demo_workdir(path: Path) -> Path:
    """The demo's work directory, safe to wipe: missing, empty, or made by an earlier demo.

    Why: the demo deletes its directory before it starts; ``--workdir .`` or ``~`` must
    never remove a user's files.
    """
    workdir = Path(path).resolve()
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {path} is a file: pass a directory for the demo's files")
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / DEMO_STAMP).exists():
        raise ConfigError(
            f"--workdir {path} is not empty and was not made by `cutline demo`: "
            "pass a new or empty directory (the demo deletes its directory's contents)"
        )
    return workdir
