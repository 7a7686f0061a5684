"""Gone history is loud, on a real broker: `replicate` refuses a partition whose records
before its shard's position were deleted, or whose shard is beyond a recreated topic's end,
and warns when the ops topic deletes old records. No backup with missing rows is published.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from consumers.replica import open_readonly, read_state, shard_path
from cutline import settings
from cutline.broker import local
from cutline.kafka_clients import (
    TopicSpec,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    source_topic_specs,
)
from cutline.settings import Topics
from tests.integration.pipeline import (
    CUTLINE,
    Pipeline,
    Process,
    avro_rows,
    backup_rows,
    wait_until,
)
from tests.integration.test_backups_in_use import restore, restored_rows

PARTITIONS = 2


def assert_backup_is_the_primary(pipeline: Pipeline, marker_id: int, scratch: Path) -> None:
    """Backup ``marker_id`` equals the primary recorded at its cut: DuckDB, Avro, restore."""
    backup = pipeline.published()[marker_id]
    expected = pipeline.oracle[marker_id]
    assert backup_rows(backup) == expected
    assert avro_rows(backup)[0] == expected
    target = scratch / f"restored-{marker_id}.sqlite"
    restore(pipeline, marker_id, target)
    assert restored_rows(target)[0] == expected


def watermarks(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    consumer = make_consumer(bootstrap, f"watermarks-{time.monotonic_ns()}")
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()


def delete_records_before(bootstrap: str, topic: str, partition: int, offset: int) -> None:
    admin = make_admin(bootstrap)  # kept referenced until its futures are done
    futures = admin.delete_records(
        [TopicPartition(topic, partition, offset)], request_timeout=20, operation_timeout=20
    )
    for future in futures.values():
        future.result(timeout=30)


def shard_next_offset(pipeline: Pipeline, replica: Path, partition: int) -> int:
    conn = open_readonly(shard_path(replica, pipeline.source, partition))
    try:
        state = read_state(conn, partition)
        assert state is not None
        return state.offset + 1
    finally:
        conn.close()


def refused(pipeline: Pipeline, process: Process, deadline_s: float = 60.0) -> str:
    """``process`` exits 1 within the deadline (it must never hang); return its output."""
    wait_until(lambda: process.popen.poll() is not None, deadline_s, f"{process.name} to exit")
    pipeline.processes.remove(process)  # its exit status is checked here, not as a crash
    output = process.log.read_text()
    assert process.popen.returncode == 1, output
    assert "Traceback" not in output, output
    return output


def test_replicate_refuses_a_partition_whose_records_were_deleted(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    topics = Topics(pipeline.source)
    # the ops topic exists beforehand with a finite retention, as an estate might create it
    specs = [
        TopicSpec(s.name, PARTITIONS, {**s.config, "retention.ms": "3600000"})
        if s.name == topics.ops
        else s
        for s in source_topic_specs(topics, PARTITIONS)
    ]
    ensure_topics(pipeline.bootstrap, specs)
    pipeline.create_primary(accounts=30)
    pipeline.start_capture(partitions=PARTITIONS)
    replicate = pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    pipeline.wait_for_backups([first.marker_id], deadline_s=90)
    assert_backup_is_the_primary(pipeline, first.marker_id, tmp_path)
    assert replicate.stop() == 0, replicate.tail()
    warning = f"warning: {topics.ops} has retention.ms=3600000"
    assert warning in replicate.log.read_text(), "finite retention must be warned at start-up"

    # a NEW replica needs every record from offset 0; partition 0's first one is deleted
    delete_records_before(pipeline.bootstrap, topics.ops, 0, 1)
    fresh_backups = tmp_path / "fresh-backups"
    fresh = pipeline.start(
        "replicate-fresh", "replicate", "--replica", str(tmp_path / "fresh-replica"),
        "--backups", str(fresh_backups), "--source", pipeline.source,
        "--bootstrap-servers", pipeline.bootstrap,
    )  # fmt: skip
    output = refused(pipeline, fresh)
    assert (
        f"{topics.ops} partition 0 starts at offset 1 but a new shard needs it from offset 0"
    ) in output
    assert "new --source" in output
    assert "partition 1 starts" not in output, "partition 1's history is whole"
    assert not list(fresh_backups.glob(f"{pipeline.source}/marker-*")), "no backup published"

    # the old replica is past the deleted record: it resumes, and cut 2 is exact
    pipeline.processes.remove(replicate)
    replicate = pipeline.start_replicator("replicate-again")
    conn.execute("UPDATE accounts SET balance = balance + 7 WHERE id % 2 = 0")
    second = pipeline.cut(conn)
    pipeline.wait_for_backups([second.marker_id], deadline_s=90)
    assert_backup_is_the_primary(pipeline, second.marker_id, tmp_path)
    assert replicate.stop() == 0, replicate.tail()

    # records the old replica has not applied yet are deleted: it must stop, not skip them
    resume_at = shard_next_offset(pipeline, pipeline.replica, 1)
    conn.execute("UPDATE accounts SET balance = balance - 3")
    third = pipeline.cut(conn)
    wait_until(
        lambda: watermarks(pipeline.bootstrap, topics.ops)[1][1] > resume_at + 2,
        60,
        "cut 3 in partition 1",
    )
    end = watermarks(pipeline.bootstrap, topics.ops)[1][1]
    delete_records_before(pipeline.bootstrap, topics.ops, 1, end)
    pipeline.processes.remove(replicate)
    again = pipeline.start_replicator("replicate-after-delete")
    output = refused(pipeline, again)
    assert (
        f"{topics.ops} partition 1 starts at offset {end:,} but the replica shard needs it "
        f"from offset {resume_at:,}"
    ) in output
    assert third.marker_id not in pipeline.published(), "a backup without the deleted rows"
    assert shard_next_offset(pipeline, pipeline.replica, 1) == resume_at, "nothing applied"
    verify = pipeline.cli("verify", "--backups", str(pipeline.backups))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_running_replicate_stops_when_records_it_has_not_read_are_deleted(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Deleted while the process runs (not at an assignment): its fetch offset falls out of
    the log. Resetting to the earliest offset would skip the deleted rows, and the next
    cut's count would match: a published backup without them. It must stop instead."""
    topics = Topics(pipeline.source)
    pipeline.create_primary(accounts=30)
    pipeline.start_capture(partitions=PARTITIONS)
    replicate = pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    pipeline.wait_for_backups([first.marker_id], deadline_s=90)
    assert_backup_is_the_primary(pipeline, first.marker_id, tmp_path)
    wait_until(
        lambda: (
            shard_next_offset(pipeline, pipeline.replica, 1)
            == watermarks(pipeline.bootstrap, topics.ops)[1][1] - 1
        ),  # all but the commit marker
        30,
        "partition 1 applied up to its end",
    )
    read_to = watermarks(pipeline.bootstrap, topics.ops)[1][1]

    os.kill(replicate.popen.pid, signal.SIGSTOP)  # well within its session timeout
    try:
        # a fetch in flight when the process stopped may still bring the first cut's
        # records; the second cut's are never fetched before they are deleted
        ends = [read_to]
        for delta in (1, 2):
            conn.execute("UPDATE accounts SET balance = balance + ?", (delta,))
            pipeline.cut(conn)
            wait_until(
                lambda: watermarks(pipeline.bootstrap, topics.ops)[1][1] > ends[-1] + 2,
                30,
                "the cut in partition 1",
            )
            ends.append(watermarks(pipeline.bootstrap, topics.ops)[1][1])
        delete_records_before(pipeline.bootstrap, topics.ops, 1, ends[-1])
    finally:
        os.kill(replicate.popen.pid, signal.SIGCONT)
    output = refused(pipeline, replicate)
    assert f"{topics.ops} partition 1 starts at offset {ends[-1]:,} but the replica shard" in output
    last = max(pipeline.oracle)
    assert last not in pipeline.published(), "a backup without the deleted rows"
    scratch = tmp_path / "after"
    scratch.mkdir()
    for marker_id in pipeline.published():  # whatever was published had every row
        assert_backup_is_the_primary(pipeline, marker_id, scratch)


def test_replicate_refuses_a_shard_beyond_a_recreated_topics_end(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    topics = Topics(pipeline.source)
    pipeline.create_primary(accounts=30)
    capture = pipeline.start_capture(partitions=PARTITIONS)
    replicate = pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    pipeline.wait_for_backups([first.marker_id], deadline_s=90)
    assert_backup_is_the_primary(pipeline, first.marker_id, tmp_path)
    assert replicate.stop() == 0 and capture.stop() == 0, pipeline.logs()
    resume_at = {p: shard_next_offset(pipeline, pipeline.replica, p) for p in range(PARTITIONS)}
    assert all(at > 1 for at in resume_at.values())

    # the topic is recreated (as on a new cluster), holding a record or none per partition
    admin = make_admin(pipeline.bootstrap)
    for future in admin.delete_topics([topics.ops], operation_timeout=30).values():
        future.result(timeout=60)
    wait_until(
        lambda: topics.ops not in admin.list_topics(timeout=10).topics, 60, "the topic deleted"
    )
    ensure_topics(
        pipeline.bootstrap,
        [s for s in source_topic_specs(topics, PARTITIONS) if s.name == topics.ops],
    )
    started = time.monotonic()
    again = pipeline.start_replicator("replicate-recreated")
    output = refused(pipeline, again, deadline_s=60)
    for p in range(PARTITIONS):
        assert (
            f"{topics.ops} partition {p} ends at offset 0 but the replica shard resumes at "
            f"offset {resume_at[p]:,}: the topic was recreated"
        ) in output
    assert time.monotonic() - started < 60
    assert sorted(pipeline.published()) == [first.marker_id]

    # written past the shards' offsets, the new topic looks like the old one by offsets
    # alone: its topic id tells them apart
    producer = make_producer(pipeline.bootstrap)
    for p in range(PARTITIONS):
        for i in range(resume_at[p] + 5):
            producer.produce(topics.ops, f"new-history-{i}".encode(), b"k", p)
    assert producer.flush(30) == 0
    past = pipeline.start_replicator("replicate-written-past")
    output = refused(pipeline, past)
    assert f"{topics.ops} is not the topic the replica shards of partitions [0, 1]" in output
    assert "the topic was recreated" in output
    assert sorted(pipeline.published()) == [first.marker_id]
    for p in range(PARTITIONS):
        assert shard_next_offset(pipeline, pipeline.replica, p) == resume_at[p], "none applied"


# -- `cutline kafka start` keeps a dead local cluster's data -------------------------------


def kafka_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, settings.ENV_HOME: str(home)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return subprocess.run(
        [*CUTLINE, "kafka", *args], capture_output=True, text=True, timeout=300, env=env
    )


def started(home: Path, *args: str) -> tuple[str, str]:
    """Run `cutline kafka start`; return the bootstrap it prints last, and its messages."""
    result = kafka_cli(home, "start", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1], result.stderr


def kill_broker_jvm(home: Path) -> None:
    """SIGKILL the node's JVM, as a crash or a reboot would; the record stays."""
    record = json.loads((home / "kafka" / "state.json").read_text())
    pid = record["nodes"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not local.pid_alive(pid), 20, f"broker pid {pid} to exit")


def topic_values(bootstrap: str, topic: str) -> list[bytes]:
    """Every record of partition 0 of ``topic``, or [] if the topic does not exist."""
    if topic not in make_admin(bootstrap).list_topics(timeout=30).topics:
        return []
    consumer = make_consumer(bootstrap, f"kafka-start-{time.monotonic_ns()}")
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    values: list[bytes] = []
    _, end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30, cached=False)
    deadline = time.monotonic() + 60
    try:
        while len(values) < end and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.5):
                if message.error() is None:
                    values.append(message.value())
    finally:
        consumer.close()
    return values


def squat(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def test_kafka_start_restarts_a_killed_local_broker_with_its_data(tmp_path: Path) -> None:
    home = tmp_path / "home"  # never the shared broker's home
    try:
        bootstrap, _ = started(home)
        topic = "kept-history"
        ensure_topics(bootstrap, [TopicSpec(topic, 1, {"retention.ms": "-1"})])
        written = [f"record-{i}".encode() for i in range(50)]
        producer = make_producer(bootstrap)
        for value in written:
            producer.produce(topic, value, partition=0)
        assert producer.flush(30) == 0
        assert topic_values(bootstrap, topic) == written

        kill_broker_jvm(home)
        again, said = started(home)
        assert again == bootstrap, "the same ports are free, so the same bootstrap"
        assert "restarting the local Kafka cluster" in said and "--fresh" in said
        assert topic_values(again, topic) == written, "the records survive the restart"

        kill_broker_jvm(home)
        port = int(bootstrap.rsplit(":", 1)[1])
        with socket.socket() as squatter:  # another program took the port meanwhile
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            wait_until(lambda: squat(squatter, port), 60, f"port {port} out of TIME_WAIT")
            squatter.listen()
            moved, said = started(home)
        assert moved != bootstrap and "moves to" in said
        record = json.loads((home / "kafka" / "state.json").read_text())
        assert record["bootstrap_servers"] == moved, "the new bootstrap is recorded"
        assert topic_values(moved, topic) == written
    finally:
        kafka_cli(home, "stop")
