"""Broker loss on a 3-broker cluster: SIGKILL of one broker while writes and markers run,
then its restart. Topics are replicated 3 times with min.insync.replicas 2, so capture and
replication ride out the leader changes, and every backup equals the primary at its cut.

This module runs its own cluster (under its own CUTLINE_HOME), never the shared broker.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from cutline import settings
from cutline.broker import local
from cutline.kafka_clients import make_admin, topic_config
from cutline.settings import Topics
from tests.integration.pipeline import TABLES, Pipeline, backup_rows, wait_until
from tests.integration.workload import writes

PARTITIONS = 3


@contextlib.contextmanager
def _home(path: Path) -> Iterator[None]:
    """CUTLINE_HOME pointing at the test cluster's record, for the broker helpers."""
    previous = os.environ.get(settings.ENV_HOME)
    os.environ[settings.ENV_HOME] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(settings.ENV_HOME, None)
        else:
            os.environ[settings.ENV_HOME] = previous


@pytest.fixture(scope="module")
def three_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("three-broker-home")

    def say(message: str) -> None:
        print(f"[kafka x3] {message}", file=sys.stderr, flush=True)

    with _home(home):
        info = local.start_local_cluster(3, progress=say, deadline_s=180)
    try:
        yield info.bootstrap_servers, home
    finally:
        with _home(home):
            local.stop_local_cluster(progress=say)


def _config(bootstrap: str, topic: str) -> dict[str, str] | None:
    """A topic's config, or None while the broker asked does not know the topic yet."""
    try:
        return topic_config(bootstrap, topic)
    except KafkaException:
        return None


def _transaction_coordinator(bootstrap: str, transactional_id: str) -> int:
    """The broker coordinating capture's transactions: the leader of its partition of
    ``__transaction_state`` (Kafka picks it by the id's Java hashCode)."""
    code = 0
    for unit in transactional_id.encode("utf-16-be").hex(" ", 2).split():
        code = (code * 31 + int(unit, 16)) & 0xFFFFFFFF
    state = "__transaction_state"
    topic = make_admin(bootstrap).list_topics(state, timeout=10).topics[state]
    return topic.partitions[(code & 0x7FFFFFFF) % len(topic.partitions)].leader


def test_pipeline_rides_out_the_loss_of_a_broker(
    three_brokers: tuple[str, Path], tmp_path: Path
) -> None:
    bootstrap, home = three_brokers
    source = f"it-broker-{os.getpid()}"
    with Pipeline(bootstrap, source, tmp_path) as pipeline:
        pipeline.create_primary()
        pipeline.start_capture(PARTITIONS)
        pipeline.start_replicator("replicate")
        conn = pipeline.connect()
        first = pipeline.cut(conn)
        pipeline.wait_for_backups([first.marker_id], deadline_s=90)

        topics = Topics(source)
        metadata = make_admin(bootstrap).list_topics(timeout=10).topics
        for topic in (topics.ops, topics.capture_position, topics.control, topics.dead_letter):
            assert all(len(p.replicas) == 3 for p in metadata[topic].partitions.values()), topic
            config = wait_until(lambda t=topic: _config(bootstrap, t), 30, f"config of {topic}")
            assert config["min.insync.replicas"] == "2", topic

        stop = threading.Event()
        writer = threading.Thread(target=writes, args=(pipeline, stop, 5), daemon=True)
        writer.start()
        try:

            def markers_for(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    pipeline.check_alive()
                    pipeline.cut(conn)
                    time.sleep(0.7)

            markers_for(2)
            victim = _transaction_coordinator(bootstrap, topics.capture_transactional_id)
            with _home(home):
                local.kill_node(victim)
            markers_for(12)  # through the failover (the controller waits ~9 s)

            def moved() -> bool:
                """Markers go on until capture's transactions have another coordinator."""
                markers_for(0.7)
                try:
                    leader = _transaction_coordinator(bootstrap, topics.capture_transactional_id)
                except KafkaException:
                    return False  # metadata unavailable mid-election: ask again
                return leader not in (victim, -1)

            # a slow machine notices the loss later than the ~9 s session timeout
            wait_until(moved, 90, "capture's transactions to move to another broker", poll_s=0)
            with _home(home):
                local.restart_node(victim, deadline_s=90)
            markers_for(3)
        finally:
            stop.set()
            writer.join(30)
        final = pipeline.cut(conn)
        published = pipeline.wait_for_backups(sorted(pipeline.oracle), deadline_s=180)

        for marker_id, expected in pipeline.oracle.items():
            rows = backup_rows(published[marker_id])
            for table in TABLES:
                assert rows[table] == expected[table], f"backup {marker_id}, table {table}"
        assert backup_rows(published[final.marker_id]) == pipeline.state(conn)
        for process in pipeline.processes:
            assert process.stop() == 0, process.tail()
        conn.close()
