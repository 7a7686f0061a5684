"""`cutline replay` on a real broker: backups rebuilt from the ops topic's history equal the
primary at each cut, and a running `cutline replicate` is not disturbed."""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

from confluent_kafka import KafkaError, TopicPartition

from backups.catalog import list_backups, source_dir
from consumers.coordinator import WriterLock
from consumers.replica import shard_path
from cutline.kafka_clients import (
    committed_offsets,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    source_topic_specs,
)
from cutline.progress import CLEAR_LINE
from cutline.settings import Topics
from schemas.codec import decode, encode
from schemas.records import (
    Column,
    ConsistencyMarker,
    ControlEvent,
    MarkerDigest,
    Operation,
    OpType,
    TableDefinition,
)
from tests.integration.pipeline import (
    TABLES,
    Pipeline,
    avro_rows,
    backup_rows,
    manifest_json,
    wait_until,
)


def _writes(pipeline: Pipeline, stop: threading.Event, seed: int) -> None:
    """Transfers, new accounts and deleted transfers, committed until ``stop``."""
    rng = random.Random(seed)
    conn = pipeline.connect()
    try:
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in conn.execute("SELECT id FROM accounts")]
            choice = rng.random()
            if choice < 0.7:
                src, dst = rng.sample(ids, 2)
                amount = rng.randint(1, 40)
                conn.execute(
                    "UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, src)
                )
                conn.execute(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, dst)
                )
                conn.execute(
                    "INSERT INTO transfers (src, dst, amount, note) VALUES (?, ?, ?, 'replay')",
                    (src, dst, amount),
                )
            elif choice < 0.85:
                next_account = max(ids) + 1
                conn.execute(
                    "INSERT INTO accounts VALUES (?, ?, 0, 0.5, NULL)",
                    (next_account, f"n{next_account}"),
                )
                conn.execute("INSERT INTO tags VALUES (?, 'new')", (next_account,))
            else:
                conn.execute("DELETE FROM transfers WHERE id IN (SELECT min(id) FROM transfers)")
            conn.execute("COMMIT")
            time.sleep(rng.random() * 0.003)
    finally:
        conn.close()


def _cut_during_writes(pipeline: Pipeline, conn: sqlite3.Connection, markers: int) -> list[int]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            _writes(pipeline, stop, len(pipeline.oracle))
        except BaseException as exc:
            errors.append(exc)
            raise

    writer = threading.Thread(target=write)
    writer.start()
    ids = []
    try:
        for _ in range(markers):
            time.sleep(0.4)
            ids.append(pipeline.cut(conn).marker_id)
    finally:
        stop.set()
        writer.join(30)
    assert not errors, f"the writer failed: {errors[0]!r}"
    return ids


def _assert_backups_equal_oracle(pipeline: Pipeline, backups: Path, marker_ids: list[int]):
    found = {b.marker_id: b for b in list_backups(backups, pipeline.source)}
    for marker_id in marker_ids:
        backup = found[marker_id]
        in_duckdb = backup_rows(backup)
        assert set(in_duckdb) == set(TABLES)
        for table in TABLES:
            assert in_duckdb[table] == pipeline.oracle[marker_id][table], (
                f"replayed backup {marker_id} table {table} differs from the primary at its cut"
            )
        in_avro, headers = avro_rows(backup)
        assert in_avro == in_duckdb, f"backup {marker_id}: Avro and DuckDB disagree"
        ticket = pipeline.tickets[marker_id]
        assert backup.t1 == ticket.t1
        assert {h["cutline.t1"] for h in headers.values()} == {ticket.t1}
    return found


def _replay(pipeline: Pipeline, replica: Path, backups: Path, *extra: str):
    return pipeline.cli(
        "replay",
        "--replica",
        str(replica),
        "--backups",
        str(backups),
        "--source",
        pipeline.source,
        "--bootstrap-servers",
        pipeline.bootstrap,
        "--json",
        *extra,
        timeout_s=90,
    )


def _dead_letters(bootstrap: str, topic: str) -> int:
    consumer = make_consumer(bootstrap, f"{topic}.test-{time.monotonic_ns()}")
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return high - low
    finally:
        consumer.close()


def _control_members(bootstrap: str, topic: str, deadline_s: float = 20.0) -> set[str]:
    """Who wrote to the control topic: the member of every event in it."""
    consumer = make_consumer(
        bootstrap, f"{topic}.test-{time.monotonic_ns()}", **{"enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    members: set[str] = set()
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    return members
                continue
            event = decode(message.value())
            if isinstance(event, MarkerDigest):
                continue  # the primary's digests, written by capture
            assert isinstance(event, ControlEvent)
            members.add(event.member)
    finally:
        consumer.close()
    raise AssertionError(f"did not reach the end of {topic} within {deadline_s:.0f} s")


def test_replay_rebuilds_every_backup_after_the_store_is_lost(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    capture = pipeline.start_capture(partitions=4)
    replicate = pipeline.start_replicator("replicate")
    topics = Topics(pipeline.source)
    conn = pipeline.connect()
    first = pipeline.cut(conn).marker_id
    # two records no cutline reader can use: replicate dead-letters them, replay skips them
    producer = make_producer(pipeline.bootstrap)
    producer.produce(topics.ops, b"not avro at all", b"garbage", 0)
    producer.produce(topics.ops, b"\xc3\x01short", b"garbage", 3)
    assert producer.flush(15) == 0
    markers = [first, *_cut_during_writes(pipeline, conn, 3), pipeline.cut(conn).marker_id]
    original = pipeline.wait_for_backups(markers, deadline_s=90)
    offsets = {m: manifest_json(original[m])["offsets"] for m in markers}
    wait_until(lambda: _dead_letters(pipeline.bootstrap, topics.dead_letter) == 2, 30, "2 DLQs")
    assert replicate.stop() == 0, replicate.tail()

    # the backup store and the replica are lost
    shutil.rmtree(pipeline.backups)
    shutil.rmtree(pipeline.replica)
    replica, backups = pipeline.root / "replica-rebuilt", pipeline.root / "backups-rebuilt"
    result = _replay(pipeline, replica, backups)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["written"] == markers
    assert summary["failed"] == {}
    assert summary["records_skipped"] == 2
    rebuilt = _assert_backups_equal_oracle(pipeline, backups, markers)
    for marker_id in markers:
        assert manifest_json(rebuilt[marker_id])["offsets"] == offsets[marker_id]
    assert "replay done:" in result.stderr
    assert CLEAR_LINE not in result.stderr, "stderr is not a terminal: no live line"
    assert _dead_letters(pipeline.bootstrap, topics.dead_letter) == 2, "nothing re-sent"

    # a second run into the same replica is refused without --force ...
    again = _replay(pipeline, replica, backups)
    assert again.returncode == 2
    assert "--force" in again.stderr and "already holds 4 shards" in again.stderr
    # ... and with it, every backup already present is skipped
    forced = _replay(pipeline, replica, backups, "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["written"] == []
    assert json.loads(forced.stdout)["existing"] == markers
    assert "deleting the 4 replica shards" in forced.stderr

    # --from-marker / --until-marker write exactly the markers between them
    window = pipeline.root / "backups-window"
    bounded = _replay(
        pipeline,
        pipeline.root / "replica-window",
        window,
        "--from-marker",
        str(markers[1]),
        "--until-marker",
        str(markers[3]),
    )
    assert bounded.returncode == 0, bounded.stderr
    assert json.loads(bounded.stdout)["written"] == markers[1:4]
    assert json.loads(bounded.stdout)["before_from_marker"] == markers[:1]
    assert [b.marker_id for b in list_backups(window, pipeline.source)] == markers[1:4]
    _assert_backups_equal_oracle(pipeline, window, markers[1:4])

    # SIGINT stops a replay cleanly with exit 130, even while it waits for the writer lock
    # (held here as a running replicate's snapshotter would)
    blocked = pipeline.root / "backups-blocked"
    lock = WriterLock(source_dir(blocked, pipeline.source))
    lock.acquire(5.0, threading.Event())
    try:
        stopped = pipeline.start(
            "replay-interrupted",
            "replay",
            "--replica",
            str(pipeline.root / "replica-blocked"),
            "--backups",
            str(blocked),
            "--source",
            pipeline.source,
            "--bootstrap-servers",
            pipeline.bootstrap,
        )
        wait_until(lambda: "for the writer lock" in stopped.log.read_text(), 30, "the wait")
        stopped.popen.send_signal(signal.SIGINT)
        assert stopped.popen.wait(30) == 130, stopped.tail()
    finally:
        lock.release()
    assert "replay interrupted" in stopped.log.read_text()
    assert list_backups(blocked, pipeline.source) == []

    assert capture.stop() == 0, capture.tail()
    conn.close()


def test_replay_beside_a_running_replicate_leaves_it_alone(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    capture = pipeline.start_capture(partitions=4)
    replicate = pipeline.start_replicator("replicate")
    topics = Topics(pipeline.source)
    conn = pipeline.connect()
    before = _cut_during_writes(pipeline, conn, 2)
    pipeline.wait_for_backups(before, deadline_s=90)

    # replay into a new replica and backups directory, while writes go on and more markers
    # are cut
    replayed = pipeline.root / "backups-replay"
    replay = pipeline.start(
        "replay",
        "replay",
        "--replica",
        str(pipeline.root / "replica-replay"),
        "--backups",
        str(replayed),
        "--source",
        pipeline.source,
        "--bootstrap-servers",
        pipeline.bootstrap,
        "--json",
    )
    during = _cut_during_writes(pipeline, conn, 3)
    assert replay.popen.wait(60) == 0, replay.tail()
    after = [pipeline.cut(conn).marker_id]
    markers = before + during + after

    # replicate kept publishing, through and after the replay
    published = pipeline.wait_for_backups(markers, deadline_s=90)
    _assert_backups_equal_oracle(pipeline, pipeline.backups, markers)
    log = replay.log.read_text()
    summary = json.loads(next(line for line in log.splitlines() if line.startswith("{")))
    assert summary["failed"] == {}
    written = summary["written"]
    assert written[: len(before)] == before and set(written) <= set(before + during)
    _assert_backups_equal_oracle(pipeline, replayed, written)

    # replicate's group offsets are its own: marker offset + 1 of its last backup
    last = manifest_json(published[after[0]])
    expected = {int(p): o + 1 for p, o in last["offsets"].items()}
    wait_until(
        lambda: (
            committed_offsets(pipeline.bootstrap, topics.replication_group, topics.ops, 4)
            == expected
        ),
        30,
        f"replicate's committed offsets {expected}",
    )
    # replay committed nothing in its own group, and wrote no control event or dead letter
    group = next(w for w in log.split() if w.startswith(f"cutline.{pipeline.source}.replay."))
    assert committed_offsets(pipeline.bootstrap, group.rstrip(")"), topics.ops, 4) == {}
    assert not any(
        m.startswith("replay-") for m in _control_members(pipeline.bootstrap, topics.control)
    )
    assert _dead_letters(pipeline.bootstrap, topics.dead_letter) == 0

    for process in (capture, replicate):
        assert process.stop() == 0, process.tail()
    conn.close()


def test_replay_refuses_a_topic_whose_history_was_truncated(pipeline: Pipeline) -> None:
    """Records deleted from the start of a partition took rows with them: replay must
    refuse before it touches anything, not write backups that miss those rows."""
    topics = Topics(pipeline.source)
    ensure_topics(pipeline.bootstrap, source_topic_specs(topics, 2))
    definition = TableDefinition(
        pipeline.source,
        "accounts",
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER)",
        (Column("id", "INTEGER"), Column("balance", "INTEGER")),
        ("id",),
    )

    def insert(account: int) -> bytes:
        after = {"id": account, "balance": account * 10}
        key = {"id": account}
        return encode(
            Operation(pipeline.source, account, "accounts", OpType.INSERT, key, None, after, 1)
        )

    def marker(marker_id: int, counts: tuple[int, int]) -> bytes:
        t1_us = 1_764_065_700_000_000 + marker_id
        tables = ("accounts",)
        return encode(
            ConsistencyMarker(pipeline.source, marker_id, t1_us, marker_id, 2, counts, tables)
        )

    history = {
        0: [encode(definition), insert(1), marker(1, (1, 0)), encode(definition), insert(2)],
        1: [encode(definition), marker(1, (1, 0)), encode(definition)],
    }
    history[0].append(marker(2, (1, 0)))
    history[1].append(marker(2, (1, 0)))
    producer = make_producer(pipeline.bootstrap)
    for partition, values in history.items():
        for value in values:
            producer.produce(topics.ops, value, b"k", partition)
    assert producer.flush(15) == 0
    # partition 0 loses the definition, account 1's insert and marker 1 (offsets 0-2):
    # marker 2's count still matches, so only the start offset tells the rows are gone
    admin = make_admin(pipeline.bootstrap)  # kept referenced until its futures are done
    deleted = admin.delete_records(
        [TopicPartition(topics.ops, 0, 3)], request_timeout=20, operation_timeout=20
    )
    for future in deleted.values():
        future.result(timeout=30)

    replica, backups = pipeline.root / "replica-truncated", pipeline.root / "backups-truncated"
    shard = shard_path(replica, pipeline.source, 0)
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"")  # an earlier replica: --force must not delete it for nothing
    result = _replay(pipeline, replica, backups, "--force")
    assert result.returncode == 1, result.stderr
    assert "no longer holds its whole history" in result.stderr
    assert "partition 0 starts at offset 3" in result.stderr
    assert "no backup was written" in result.stderr
    assert list_backups(backups, pipeline.source) == []
    assert shard.exists()
