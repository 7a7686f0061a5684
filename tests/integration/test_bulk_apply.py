"""Bulk shard writes keep cuts exact: long runs of one table and kind, and a run that holds
operations matching no row (dead letters), checked in DuckDB, Avro and a restore."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from consumers.dead_letter import REASON
from cutline.kafka_clients import make_producer
from cutline.settings import Topics
from producers.operations import message_key, partition_for
from schemas.codec import encode
from schemas.records import Operation, OpType
from tests.integration.pipeline import TABLES, Pipeline, avro_rows, backup_rows, wait_until
from tests.integration.test_backups_in_use import restore, restored_rows
from tests.integration.test_bad_input import _read_all

PARTITIONS = 2
MISSING = range(90_000, 90_006)  # account ids that never exist: UPDATE/DELETE match 0 rows


def _drained(pipeline: Pipeline) -> bool:
    """Capture published every change committed so far (it forgets them once in Kafka)."""
    pipeline.check_alive()
    with sqlite3.connect(pipeline.db) as conn:
        return conn.execute("SELECT count(*) FROM _cutline_changes").fetchone()[0] == 0


def _strays(pipeline: Pipeline) -> list[tuple[int, bytes, bytes]]:
    """UPDATEs and DELETEs of accounts that do not exist, placed as capture would place them."""
    out = []
    for n, account in enumerate(MISSING):
        kind = OpType.UPDATE if n % 3 else OpType.DELETE
        key = {"id": account}
        image = {"id": account, "owner": "ghost", "balance": 0, "rate": None, "avatar": None}
        after = image if kind is OpType.UPDATE else None
        op = Operation(pipeline.source, 10**9 + n, "accounts", kind, key, image, after, 0)
        kafka_key = message_key("accounts", [str(account)])
        out.append((partition_for(kafka_key, PARTITIONS), kafka_key, encode(op)))
    return out


def test_runs_applied_in_bulk_and_stray_operations_leave_the_cut_exact(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.create_primary(accounts=400)
    capture = pipeline.start_capture(partitions=PARTITIONS)
    replicator = pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    pipeline.wait_for_backups([first.marker_id])
    assert replicator.stop() == 0, replicator.tail()

    # while replication is stopped: a run of updates, stray operations in the middle of
    # it, then more runs (inserts, updates, deletes), so a restarted replicator meets
    # them in long batches
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "UPDATE accounts SET balance = balance + ? WHERE id = ?", [(i, i) for i in range(0, 400)]
    )
    conn.execute("COMMIT")
    wait_until(lambda: _drained(pipeline), 60, "capture to publish the first updates")
    producer = make_producer(pipeline.bootstrap)
    strays = _strays(pipeline)
    for partition, key, value in strays:
        producer.produce(Topics(pipeline.source).ops, value, key, partition)
    assert producer.flush(15) == 0
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "UPDATE accounts SET rate = ?, owner = owner || '·' WHERE id = ?",
        [(i / 7, i) for i in range(0, 400, 2)],
    )
    conn.executemany(
        "INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
        [(i, f"new-{i} ✓", i, None, b"\x00" * (i % 5)) for i in range(1000, 1600)],
    )
    conn.executemany("INSERT INTO tags VALUES (?, ?)", [(i, f"t{i % 9}") for i in range(500)])
    conn.execute("DELETE FROM accounts WHERE id % 5 = 0")
    conn.execute("COMMIT")
    second = pipeline.cut(conn)

    pipeline.start_replicator("replicate-again")
    published = pipeline.wait_for_backups([second.marker_id])
    backup = published[second.marker_id]
    expected = pipeline.oracle[second.marker_id]
    in_duckdb = backup_rows(backup)
    for table in TABLES:
        assert in_duckdb[table] == expected[table], f"table {table} differs at the cut"
    in_avro, _ = avro_rows(backup)
    assert in_avro == in_duckdb, "Avro files and DuckDB disagree"
    restored, _ = restored_rows(_restored(pipeline, second.marker_id, tmp_path))
    for table in TABLES:
        assert restored[table] == expected[table], f"restored {table} differs at the cut"

    letters = _read_all(pipeline.bootstrap, Topics(pipeline.source).dead_letter, len(strays))
    assert len(letters) == len(strays), pipeline.logs()
    reasons = sorted(dict(m.headers())[REASON].decode() for m in letters)
    assert all("matched 0 rows" in r for r in reasons), reasons
    assert capture.stop() == 0, capture.tail()
    conn.close()


def _restored(pipeline: Pipeline, marker_id: int, tmp_path: Path) -> Path:
    target = tmp_path / "restored.sqlite"
    restore(pipeline, marker_id, target)
    return target
