"""Where cutline keeps its state, how it names topics, and how it finds Kafka.

Every command resolves bootstrap servers the same way, in this order:
``--bootstrap-servers``, then ``KAFKA_BOOTSTRAP_SERVERS``, then ``bootstrap.servers`` of the
client settings, then the broker recorded by ``cutline kafka start``. Nothing here opens a
socket.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cutline.errors import ConfigError
from cutline.kafka_config import KafkaTarget, resolve_client_settings

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


_BROKER_ADDRESS = re.compile(
    r"^(?:[A-Za-z_]+://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})$"
)


def validate_bootstrap(text: str, origin: str) -> str:
    """``HOST:PORT[,HOST:PORT...]``, checked before any client waits on a bad address."""
    for address in text.split(","):
        match = _BROKER_ADDRESS.fullmatch(address.strip())
        if match is None or not 0 < int(match["port"]) < 65536:
            raise ConfigError(
                f"{origin} {text!r}: {address.strip()!r} is not HOST:PORT (a port from 1 to "
                "65535); use e.g. 127.0.0.1:9092 or broker1:9092,broker2:9092"
            )
    return text


def resolve_bootstrap(explicit: str | None) -> str:
    """Bootstrap servers from the flag, the environment, or the recorded local broker."""
    if explicit:
        return validate_bootstrap(explicit, "--bootstrap-servers")
    from_env = os.environ.get(ENV_BOOTSTRAP)
    if from_env:
        return validate_bootstrap(from_env, ENV_BOOTSTRAP)
    recorded = recorded_bootstrap()
    if recorded:
        return recorded
    raise ConfigError(
        "no Kafka cluster to talk to: pass --bootstrap-servers HOST:PORT, "
        f"set {ENV_BOOTSTRAP}, or start a local broker with `cutline kafka start`"
    )


def resolve_kafka(
    explicit: str | None, config_file: Path | None = None, options: Sequence[str] = ()
) -> KafkaTarget:
    """Bootstrap servers plus the estate's client settings (see ``cutline.kafka_config``).

    Bootstrap order: ``--bootstrap-servers``, ``KAFKA_BOOTSTRAP_SERVERS``, the settings'
    ``bootstrap.servers`` (a client.properties usually has it), the recorded local broker.
    """
    client = resolve_client_settings(config_file, options)
    from_properties = client.properties.pop("bootstrap.servers", None)
    if explicit or os.environ.get(ENV_BOOTSTRAP) or not from_properties:
        return KafkaTarget(
            resolve_bootstrap(explicit),
            client.properties,
            named=bool(explicit or os.environ.get(ENV_BOOTSTRAP)),
        )
    origin = f"{client.origins['bootstrap.servers']} bootstrap.servers"
    return KafkaTarget(validate_bootstrap(from_properties, origin), client.properties)


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
