"""A throwaway single-broker Kafka in Docker, for machines that have a Docker engine.

testcontainers-python's ``KafkaContainer`` only knows how to boot Confluent images (its start
script sources ``/etc/confluent/docker/...`` and its ``with_kraft()`` rejects tags below 7.0.0),
so a small subclass keeps its env-based KRaft configuration and port handling but boots the
official ``apache/kafka`` image through ``/etc/kafka/docker/run``, as testcontainers-java does.
testcontainers' Ryuk reaper removes the container if this process dies without stopping it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cutline.broker.local import ClusterInfo, new_cluster_id
from cutline.broker.maven import KAFKA_VERSION
from cutline.errors import BrokerError

KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
# Where the apache/kafka image keeps its data (KAFKA_LOG_DIRS default); gone with the container.
CONTAINER_DATA_DIR = Path("/tmp/kraft-combined-logs")

Progress = Callable[[str], object]


def _docker_host() -> str | None:
    """The engine testcontainers would use (TESTCONTAINERS_HOST_OVERRIDE, DOCKER_HOST, context)."""
    from testcontainers.core.docker_client import get_docker_host

    return get_docker_host()


def docker_available(timeout_s: float = 2.0) -> bool:
    """True only if a Docker engine answers a ping within ``timeout_s``; never raises.

    The ping runs in a daemon thread so that no client setup (contexts, ssh hosts) can stall the
    caller past the timeout.
    """
    answer: list[bool] = []

    def ping() -> None:
        try:
            import docker

            host = _docker_host()
            client = (
                docker.DockerClient(base_url=host, timeout=int(timeout_s) or 1)
                if host
                else docker.from_env(timeout=int(timeout_s) or 1)
            )
            try:
                answer.append(bool(client.ping()))
            finally:
                client.close()
        except Exception:
            answer.append(False)

    thread = threading.Thread(target=ping, name="cutline-docker-ping", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return bool(answer and answer[0])


def _apache_kafka_container(image: str) -> Any:
    """Build the container lazily: importing testcontainers pulls in the docker client."""
    from testcontainers.community.kafka import KafkaContainer

    class ApacheKafkaContainer(KafkaContainer):  # type: ignore[misc]
        def configure(self) -> None:
            # _configure_kraft sets node id, CONTROLLER listener, quorum voters and the
            # "Kafka Server started" wait pattern; calling it directly skips the version check
            # meant for Confluent tags.
            self._configure_kraft()
            self.env.pop("KAFKA_BROKER_ID", None)  # ZooKeeper-era name; KRaft uses node.id
            for key, value in {
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
                "KAFKA_MIN_INSYNC_REPLICAS": "1",
                "KAFKA_NUM_PARTITIONS": "1",
                "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
            }.items():
                self.with_env(key, value)

        def tc_start(self) -> None:
            # Advertise the host-mapped port, known only once the container runs; the start
            # command in KafkaContainer.start() waits for this script to appear.
            host = self.get_container_host_ip()
            port = self.get_exposed_port(self.port)
            script = (
                f"export KAFKA_ADVERTISED_LISTENERS="
                f"PLAINTEXT://{host}:{port},BROKER://$(hostname):9092\n"
                "exec /etc/kafka/docker/run\n"
            )
            self.create_file(script.encode(), self.TC_START_SCRIPT)

    return ApacheKafkaContainer(image).with_cluster_id(new_cluster_id())


def start_container_cluster(
    *, image: str = KAFKA_IMAGE, deadline_s: float = 120, progress: Progress = print
) -> tuple[ClusterInfo, Callable[[], None]]:
    """Start a one-broker KRaft Kafka container; returns its info and a function that removes it."""
    progress(f"starting Kafka in Docker ({image})…")
    container = _apache_kafka_container(image)
    try:
        container.start(timeout=int(deadline_s))
    except Exception as exc:
        try:
            logs = b"".join(container.get_logs()).decode(errors="replace")
            tail = "\n".join(logs.strip().splitlines()[-20:])
        except Exception:
            tail = "(no container logs)"
        with contextlib.suppress(Exception):
            container.stop()
        raise BrokerError(
            f"the Kafka container ({image}) did not log 'Kafka Server started' within "
            f"{deadline_s:.0f} s: {exc}\n{tail}"
        ) from exc
    info = ClusterInfo(
        bootstrap_servers=container.get_bootstrap_server(),
        brokers=1,
        pids=[],
        data_dir=CONTAINER_DATA_DIR,
        kind="container",
    )
    return info, container.stop
