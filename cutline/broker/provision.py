"""Find or start the Kafka cluster a command (or a test) should use.

Users with their own Kafka get it untouched; everyone else gets a cluster without having to
install Kafka: a Docker container when an engine is available, else local JVMs from Maven jars.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import KafkaException

from cutline import settings
from cutline.broker.container import docker_available, start_container_cluster
from cutline.broker.local import (
    broker_ids,
    quiet_admin,
    recorded_cluster,
    start_local_cluster,
    stop_local_cluster,
)
from cutline.errors import BrokerError

Kind = Literal["external", "container", "local"]
Progress = Callable[[str], object]


@dataclass(frozen=True)
class Provided:
    """A cluster to use; ``owned`` means this process started it and ``stop()`` removes it."""

    bootstrap_servers: str
    kind: Kind
    owned: bool
    stopper: Callable[[], object] | None = field(default=None, repr=False, compare=False)

    def stop(self) -> None:
        """Remove the cluster if this process started it; never touch one it merely found."""
        if self.owned and self.stopper is not None:
            self.stopper()


def provide_cluster(
    explicit: str | None = None, *, brokers: int = 1, progress: Progress = print
) -> Provided:
    """A cluster from, in order: ``explicit``, ``$KAFKA_BOOTSTRAP_SERVERS``, the live recorded
    local cluster (one broker wanted), a Docker container (one broker wanted), local JVMs.

    The container path only provides one broker; multi-broker clusters are always local.
    """
    for candidate in (explicit, os.environ.get(settings.ENV_BOOTSTRAP)):
        if candidate:
            return Provided(candidate, "external", owned=False)
    if brokers == 1:
        found = recorded_cluster()
        if found is not None:
            progress(f"using the local Kafka cluster at {found.bootstrap_servers}")
            return Provided(found.bootstrap_servers, "local", owned=False)
        if docker_available():
            info, stop = start_container_cluster(progress=progress)
            return Provided(info.bootstrap_servers, "container", owned=True, stopper=stop)
    info = start_local_cluster(brokers, progress=progress)
    return Provided(
        info.bootstrap_servers,
        "local",
        owned=not info.reused,
        stopper=lambda: stop_local_cluster(progress=progress),
    )


def wait_for_broker(bootstrap: str, deadline_s: float = 15) -> None:
    """Fail fast, with an actionable message, when no broker answers at ``bootstrap``.

    Without this, librdkafka clients retry silently forever and a command just hangs.
    """
    failure = BrokerError(
        f"Kafka at {bootstrap} did not answer a metadata request within {deadline_s:g} s: "
        "check the address, or start a local broker with `cutline kafka start`"
    )
    try:
        admin = quiet_admin(bootstrap)
    except (KafkaException, ValueError, TypeError) as exc:
        raise BrokerError(f"invalid Kafka bootstrap servers {bootstrap!r}: {exc}") from exc
    deadline = time.monotonic() + deadline_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise failure
        if broker_ids(admin, min(remaining, 5.0)) is not None:
            return
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
