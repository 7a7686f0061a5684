"""Where cutline keeps its state, how it names topics, and how it finds Kafka.

Every command resolves bootstrap servers the same way, in this order:
``--bootstrap-servers``, then ``bootstrap.servers`` of the client settings, then
``KAFKA_BOOTSTRAP_SERVERS``, then the broker recorded by ``cutline kafka start``. Nothing
here opens a socket.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
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
        "no Kafka cluster to talk to: pass --bootstrap-servers HOST:PORT (or a --kafka-config "
        "with bootstrap.servers), "
        f"set {ENV_BOOTSTRAP}, or start a local broker with `cutline kafka start`"
    )


def resolve_kafka(
    explicit: str | None, config_file: Path | None = None, options: Sequence[str] = ()
) -> KafkaTarget:
    """Bootstrap servers plus the estate's client settings (see ``cutline.kafka_config``).

    Bootstrap order: ``--bootstrap-servers``; ``bootstrap.servers`` of the client settings
    (a client.properties usually has it: a file named on the command line beats an ambient
    variable); ``KAFKA_BOOTSTRAP_SERVERS``; the recorded local broker.
    """
    client = resolve_client_settings(config_file, options)
    from_properties = client.properties.pop("bootstrap.servers", None)
    if explicit or not from_properties:
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


ENV_TOPIC_TEMPLATE = "CUTLINE_TOPIC_TEMPLATE"
DEFAULT_TOPIC_TEMPLATE = "cutline.{source}.{kind}"
_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")


def validate_topic_template(template: str, origin: str = "--topic-template") -> str:
    """A name template must hold {source} and {kind} (and nothing else in braces)."""
    fields = set(_TEMPLATE_FIELD.findall(template))
    if fields != {"source", "kind"}:
        raise ConfigError(
            f"{origin} {template!r}: use exactly the fields {{source}} and {{kind}}, e.g. "
            "'acme.backup.{source}.{kind}' (kinds: ops, capture, control, dlq, replicate, replay)"
        )
    example = template.format(source="s", kind="ops")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", example):
        raise ConfigError(
            f"{origin} {template!r}: Kafka names take letters, digits, '.', '_' and '-' only"
        )
    return template


def topic_template() -> str:
    """The estate's naming rule: ``--topic-template`` (set into the environment by the
    command, so child processes inherit it), else ``$CUTLINE_TOPIC_TEMPLATE``, else cutline's."""
    value = os.environ.get(ENV_TOPIC_TEMPLATE)
    return validate_topic_template(value, ENV_TOPIC_TEMPLATE) if value else DEFAULT_TOPIC_TEMPLATE


@dataclass(frozen=True)
class Topics:
    """The Kafka names of one source: topics, group ids and the transactional id.

    Named by a template (default ``cutline.{source}.{kind}``) so estates with naming rules
    (a prefix per team, a suffix per environment) can fit cutline in.
    """

    source: str
    template: str = field(default_factory=topic_template)

    # Names are pure functions of the frozen fields, cached because capture asks for the
    # ops topic once per captured change.
    def name(self, kind: str) -> str:
        return self.template.format(source=self.source, kind=kind)

    @cached_property
    def ops(self) -> str:
        return self.name("ops")

    @cached_property
    def control(self) -> str:
        return self.name("control")

    @cached_property
    def dead_letter(self) -> str:
        return self.name("dlq")

    @cached_property
    def capture_position(self) -> str:
        return self.name("capture")

    @cached_property
    def replication_group(self) -> str:
        return self.name("replicate")

    @cached_property
    def capture_transactional_id(self) -> str:
        return self.name("capture")

    @cached_property
    def replay_group_prefix(self) -> str:
        return self.name("replay") + "."
