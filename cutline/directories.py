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
