"""What ``cutline replay`` is asked to do, and the error it fails with."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cutline.digest_options import DEFAULT_DIGEST_TIMEOUT_S
from cutline.errors import CutlineError
from cutline.settings import Topics


class ReplayError(CutlineError):
    """The replay could not finish: it says what it waited for or what to do."""


def replay_group(source: str) -> str:
    """A group id of replay's own: never the replicate group, so no offset of it moves."""
    return f"{Topics(source).replay_group_prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class ReplayConfig:
    bootstrap: str
    replica_dir: Path
    backups_dir: Path
    source: str = "default"
    from_marker: int | None = None
    until_marker: int | None = None
    force: bool = False
    full_every: int = 1
    idle_timeout_s: float = 60.0
    digest_timeout_s: float = DEFAULT_DIGEST_TIMEOUT_S  # wait for the primary's digest
    lock_deadline_s: float = 600.0
    queue_high: int = 20_000
    batch_size: int = 1000
    member: str = field(
        default_factory=lambda: (
            f"replay-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
    )
