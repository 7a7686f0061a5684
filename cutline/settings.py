"""Where cutline keeps its state, how it names topics, and how it finds Kafka.

Every command resolves bootstrap servers the same way, in this order:
``--bootstrap-servers``, then ``KAFKA_BOOTSTRAP_SERVERS``, then the broker recorded by
``cutline kafka start``. Nothing here opens a socket.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cutline.errors import ConfigError

ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"
ENV_HOME = "CUTLINE_HOME"
ENV_CACHE = "CUTLINE_CACHE"

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def cutline_home() -> Path:
    """Per-user state: the recorded local broker and its data (``$CUTLINE_HOME``)."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".cutline")


def cache_dir() -> Path:
    """Downloaded artefacts (Kafka jars) that survive ``cutline kafka stop``."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "cutline")


def broker_state_file() -> Path:
    return cutline_home() / "kafka" / "state.json"


def recorded_bootstrap() -> str | None:
    """The bootstrap servers recorded by ``cutline kafka start``, if any."""
    path = broker_state_file()
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    value = state.get("bootstrap_servers")
    return value if isinstance(value, str) and value else None


def resolve_bootstrap(explicit: str | None) -> str:
    """Bootstrap servers from the flag, the environment, or the recorded local broker."""
    for lookup in (lambda: explicit, lambda: os.environ.get(ENV_BOOTSTRAP), recorded_bootstrap):
        candidate = lookup()
        if candidate:
            return candidate
    raise ConfigError(
        "no Kafka cluster to talk to: pass --bootstrap-servers HOST:PORT, "
        f"set {ENV_BOOTSTRAP}, or start a local broker with `cutline kafka start`"
    )


def validate_source(name: str) -> str:
    """Source names become topic and directory names, so keep them to a safe alphabet."""
    if not _SOURCE_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid source name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 100 characters, starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class Topics:
    """The topics of one source. The ops topic carries operations, schemas and markers."""

    source: str

    @property
    def ops(self) -> str:
        return f"cutline.{self.source}.ops"

    @property
    def control(self) -> str:
        return f"cutline.{self.source}.control"

    @property
    def dead_letter(self) -> str:
        return f"cutline.{self.source}.dlq"

    @property
    def capture_position(self) -> str:
        return f"cutline.{self.source}.capture"

    @property
    def replication_group(self) -> str:
        return f"cutline.{self.source}.replicate"

    @property
    def capture_transactional_id(self) -> str:
        return f"cutline.{self.source}.capture"
