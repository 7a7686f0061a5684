"""Bad input gets a clear error and loses nothing: dead letters, and fast, specific failures."""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from consumers.dead_letter import ORIGIN_OFFSET, ORIGIN_PARTITION, REASON
from cutline.kafka_clients import make_consumer, make_producer
from cutline.settings import Topics
from schemas.codec import MAGIC, encode
from schemas.records import ConsistencyMarker, Operation, OpType
from tests.integration.pipeline import TABLES, Pipeline, backup_rows, wait_until


def _read_all(bootstrap: str, topic: str, expected: int, deadline_s: float = 30.0) -> list:
    consumer = make_consumer(bootstrap, f"reader-{time.monotonic_ns()}")
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    found: list = []
    end = time.monotonic() + deadline_s
    try:
        while len(found) < expected and time.monotonic() < end:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                found.append(message)
    finally:
        consumer.close()
    return found


def test_malformed_records_go_to_the_dead_letter_topic_and_cuts_go_on(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    pipeline.start_capture(partitions=4)
    pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    pipeline.wait_for_backups([first.marker_id])

    topics = Topics(pipeline.source)
    operation = Operation(pipeline.source, 1, "accounts", OpType.INSERT, {"id": 1}, None, {}, 0)
    bad = {
        0: (b"garbage", b"not avro at all", "not an Avro single-object encoded value"),
        1: (b"unknown", MAGIC + b"\x01\x02\x03\x04\x05\x06\x07\x08payload", "unknown schema"),
        2: (b"truncated", encode(operation)[:-3], "truncated or malformed"),
        3: (
            b"intruder",
            encode(ConsistencyMarker("intruder", 99, 0, 0, 4, (0, 0, 0, 0), ())),
            "source 'intruder'",
        ),
    }
    producer = make_producer(pipeline.bootstrap)
    for partition, (key, value, _) in bad.items():
        producer.produce(topics.ops, value, key, partition)
    assert producer.flush(15) == 0

    # the writes after the bad records and the next cut are unaffected
    conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id < 10")
    second = pipeline.cut(conn)
    published = pipeline.wait_for_backups([second.marker_id])
    rows = backup_rows(published[second.marker_id])
    for table in TABLES:
        assert rows[table] == pipeline.oracle[second.marker_id][table]

    letters = _read_all(pipeline.bootstrap, topics.dead_letter, expected=len(bad))
    assert len(letters) == len(bad), f"dead letters: {len(letters)}\n{pipeline.logs()}"
    by_key = {m.key(): m for m in letters}
    for partition, (key, value, reason) in bad.items():
        letter = by_key[key]
        headers = {k: v.decode() for k, v in letter.headers()}
        assert letter.value() == value, "the record is kept whole"
        assert reason in headers[REASON], headers[REASON]
        assert headers[ORIGIN_PARTITION] == str(partition)
        assert int(headers[ORIGIN_OFFSET]) >= 0
    pipeline.check_alive()
    conn.close()


def _timed(pipeline: Pipeline, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = pipeline.cli(*args, timeout_s=60)
    return result.returncode, result.stderr + result.stdout, time.monotonic() - started


def test_capture_of_a_missing_database_fails_fast_and_says_so(pipeline: Pipeline) -> None:
    missing = pipeline.root / "nope.sqlite"
    code, output, elapsed = _timed(
        pipeline, "capture", "--db", str(missing), "--tables", "accounts",
        "--bootstrap-servers", pipeline.bootstrap,
    )  # fmt: skip
    assert code == 2 and elapsed < 10
    assert str(missing) in output and "does not exist" in output
    assert not missing.exists(), "a missing primary is never created"


def test_capture_of_a_missing_table_names_the_tables_there(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    code, output, elapsed = _timed(
        pipeline, "capture", "--db", str(pipeline.db), "--tables", "accounts,acounts",
        "--bootstrap-servers", pipeline.bootstrap,
    )  # fmt: skip
    assert code == 2 and elapsed < 10
    assert "'acounts' does not exist" in output and "accounts" in output
    conn = pipeline.connect()
    installed = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE name LIKE '_cutline_%'"
    ).fetchone()[0]
    assert installed == 0, "nothing is installed on the primary when the input is wrong"


def test_an_unreachable_broker_fails_within_seconds(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.create_primary()
    for args in (
        ["capture", "--db", str(pipeline.db), "--tables", "accounts"],
        ["replicate", "--replica", str(tmp_path / "r"), "--backups", str(tmp_path / "b")],
    ):
        code, output, elapsed = _timed(pipeline, *args, "--bootstrap-servers", "127.0.0.1:9")
        assert code == 1, output
        assert elapsed < 25, f"took {elapsed:.1f} s"
        assert "127.0.0.1:9 did not answer" in output and "connection refused" in output
        assert "cutline kafka start" not in output, "a cluster was named: no advice to start one"


def test_an_unknown_host_is_named_in_one_line_within_seconds(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """A name that does not resolve is final: said as soon as the client sees it."""
    pipeline.create_primary()
    for args in (
        ["capture", "--db", str(pipeline.db), "--tables", "accounts"],
        ["replicate", "--replica", str(tmp_path / "r"), "--backups", str(tmp_path / "b")],
        ["status"],
        ["replay", "--replica", str(tmp_path / "r2"), "--backups", str(tmp_path / "b2")],
    ):
        code, output, elapsed = _timed(
            pipeline, *args, "--bootstrap-servers", "nohost.invalid:9092"
        )
        assert code == 1, output
        assert elapsed < 10, f"{args[0]} took {elapsed:.1f} s"
        (line,) = output.strip().splitlines()
        assert "unknown host" in line and "nohost.invalid" in line, line
        assert "cutline kafka start" not in line, "a cluster was named: no advice to start one"


def test_dead_letters_survive_a_restart_of_replication(pipeline: Pipeline) -> None:
    """A bad record is dead-lettered once, not again after the worker restarts."""
    pipeline.create_primary()
    pipeline.start_capture(partitions=2)
    worker = pipeline.start_replicator("replicate-1")
    conn = pipeline.connect()
    topics = Topics(pipeline.source)
    producer = make_producer(pipeline.bootstrap)
    producer.produce(topics.ops, b"junk", b"junk", 0)
    producer.flush(15)
    first = pipeline.cut(conn)
    pipeline.wait_for_backups([first.marker_id])
    assert worker.stop() == 0
    pipeline.start_replicator("replicate-2")
    second = pipeline.cut(conn)
    pipeline.wait_for_backups([second.marker_id])
    wait_until(lambda: True, 1, "")
    letters = _read_all(pipeline.bootstrap, topics.dead_letter, expected=2, deadline_s=5)
    assert len(letters) == 1
    conn.close()
