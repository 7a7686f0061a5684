"""Initial snapshots in chunks on a real broker: a big table snapshotted while the
application inserts, updates, deletes and moves keys across chunk boundaries gives a first
backup equal to the primary at its cut, row by row (DuckDB, Avro, restore); a capture
killed mid-snapshot resumes exactly; markers wait for the snapshot, or are refused inside
a transaction while it is under way."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time

import pytest

from producers.initial_snapshot import SnapshotInProgress, snapshots_under_way
from producers.markers import request_marker, request_marker_in_transaction
from producers.sqlite_changelog import connect
from tests.integration.pipeline import (
    TABLES,
    Pipeline,
    avro_rows,
    backup_rows,
    table_rows,
    wait_until,
)

ACCOUNTS = 12_000
TAGS = 3_000
CHUNK = "1500"  # accounts: 8 chunks, tags: 2


def _big_primary(pipeline: Pipeline) -> None:
    pipeline.create_primary(accounts=40)
    conn = sqlite3.connect(pipeline.db)
    conn.executemany(
        "INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
        [(i, f"o-{i}", i % 977, i / 7, bytes([i % 256])) for i in range(100, 100 + ACCOUNTS)],
    )
    conn.executemany(
        "INSERT INTO tags VALUES (?, ?)", [(i % 500, f"tag-{i:05d}") for i in range(TAGS)]
    )
    conn.commit()
    conn.close()


def _writes(pipeline: Pipeline, stop: threading.Event, seed: int) -> int:
    """Inserts, updates, deletes and key moves over the whole key range (so across chunk
    boundaries, both ways: to keys far below and far above every chunk) until ``stop``."""
    rng = random.Random(seed)
    conn = pipeline.connect()
    done, low, high = 0, -1, 10**6
    try:
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            for _ in range(rng.randint(1, 4)):
                pick = rng.randint(0, 100 + ACCOUNTS)
                roll = rng.random()
                if roll < 0.4:
                    conn.execute(
                        "UPDATE accounts SET balance = balance + 1, rate = ? WHERE id = ?",
                        (rng.random(), pick),
                    )
                elif roll < 0.55:
                    conn.execute("DELETE FROM accounts WHERE id = ?", (pick,))
                elif roll < 0.65:
                    conn.execute(
                        "INSERT OR IGNORE INTO accounts VALUES (?, 'new', 1, 0.25, x'00')", (pick,)
                    )
                elif roll < 0.75:
                    high += 1
                    conn.execute("UPDATE OR IGNORE accounts SET id = ? WHERE id = ?", (high, pick))
                elif roll < 0.85:
                    low -= 1
                    conn.execute("UPDATE OR IGNORE accounts SET id = ? WHERE id = ?", (low, pick))
                elif roll < 0.93:
                    conn.execute(
                        "UPDATE OR IGNORE tags SET tag = ? WHERE account = ? AND tag = "
                        "(SELECT min(tag) FROM tags WHERE account = ?)",
                        (f"moved-{rng.randint(0, 10**6)}", pick % 500, pick % 500),
                    )
                else:
                    conn.execute(
                        "INSERT OR REPLACE INTO tags VALUES (?, ?)", (pick % 500, f"t{pick}")
                    )
            conn.execute("COMMIT")
            done += 1
            time.sleep(0.003)
    finally:
        conn.close()
    return done


def _under_way(pipeline: Pipeline) -> list:
    with sqlite3.connect(pipeline.db) as conn:
        return snapshots_under_way(conn)


def _assert_backup_is_the_cut(pipeline: Pipeline, marker_id: int) -> None:
    backup = pipeline.wait_for_backups([marker_id], deadline_s=240)[marker_id]
    expected = pipeline.oracle[marker_id]
    in_duckdb = backup_rows(backup)
    assert set(in_duckdb) == set(TABLES)
    for table in TABLES:
        assert in_duckdb[table] == expected[table], f"backup {marker_id}: {table} differs"
    in_avro, _ = avro_rows(backup)
    assert in_avro == in_duckdb, "the Avro files and DuckDB disagree"
    target = pipeline.root / f"restored-{marker_id}.sqlite"
    result = pipeline.cli(
        "restore", "--backups", str(pipeline.backups), "--source", pipeline.source,
        "--marker", str(marker_id), "--to", str(target),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["marker_id"] == marker_id
    restored = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        for table in TABLES:
            columns = [c["name"] for c in backup.tables[table]["columns"]]
            assert table_rows(restored, table, columns) == expected[table], table
    finally:
        restored.close()


def test_snapshot_under_writes_gives_an_exact_first_backup(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    _big_primary(pipeline)
    monkeypatch.setenv("CUTLINE_FAILPOINTS", "capture.batch_produced=sleep:0.25")  # a slow
    # snapshot (about 3 s) leaves time to write, and to ask for markers, while it runs
    pipeline.start_capture(3, "--snapshot-chunk-rows", CHUNK)
    monkeypatch.delenv("CUTLINE_FAILPOINTS")
    pipeline.start_replicator("replicate")
    assert [t for _, t, _ in _under_way(pipeline)] == ["accounts", "tags"]
    with sqlite3.connect(pipeline.db) as installed:
        logged = installed.execute(
            "SELECT count(*) FROM _cutline_changes WHERE tbl = 'accounts'"
        ).fetchone()[0]
    assert logged < 100, "the install copied the big table into the change log"

    stop = threading.Event()
    counts: list[int] = []
    writer = threading.Thread(target=lambda: counts.append(_writes(pipeline, stop, seed=3)))
    waited: list[object] = []
    conn = pipeline.connect()
    try:
        writer.start()
        # inside a transaction, a marker is refused while the snapshot is under way: the
        # transaction holds the write lock, so capture cannot finish it meanwhile
        conn.execute("BEGIN IMMEDIATE")
        try:
            assert snapshots_under_way(conn), "the snapshot finished before the test looked"
            with pytest.raises(SnapshotInProgress, match="initial snapshot is under way"):
                request_marker_in_transaction(conn, note="during the snapshot")
        finally:
            conn.execute("ROLLBACK")

        # request_marker waits for it, then cuts
        def mark() -> None:
            mark_conn = connect(pipeline.db)
            try:
                waited.append(request_marker(mark_conn, lock_timeout_s=120))
            finally:
                mark_conn.close()

        marker = threading.Thread(target=mark)
        marker.start()
        wait_until(lambda: not _under_way(pipeline), 120, "the initial snapshot to finish")
        marker.join(60)
        assert waited, "request_marker did not return once the snapshot finished"
        time.sleep(0.5)  # the writer goes on after the snapshot too
    finally:
        stop.set()
        writer.join(30)
    assert counts and counts[0] > 20, "the application should have written meanwhile"
    final = pipeline.cut(conn)
    conn.close()
    _assert_backup_is_the_cut(pipeline, final.marker_id)
    first = waited[0].marker_id  # type: ignore[attr-defined]
    assert first < final.marker_id
    assert first in pipeline.wait_for_backups([first]), "the waiting marker's cut published"
    _assert_no_dead_letters(pipeline)


@pytest.mark.parametrize("point", ["capture.after_commit=kill@4", "capture.before_commit=kill@4"])
def test_capture_killed_mid_snapshot_resumes_exactly(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """Killed after Kafka committed a chunk (the primary has not recorded it) or before the
    commit: the restarted capture goes on from Kafka's position, nothing sent twice or lost."""
    _big_primary(pipeline)
    monkeypatch.setenv("CUTLINE_FAILPOINTS", point)
    first = pipeline._start_capture(3, "--snapshot-chunk-rows", CHUNK)  # dies: no wait
    monkeypatch.delenv("CUTLINE_FAILPOINTS")
    stop = threading.Event()
    writer = threading.Thread(target=_writes, args=(pipeline, stop, 5))
    writer.start()
    try:
        wait_until(lambda: first.popen.poll() is not None, 60, "the failpoint to kill capture")
        assert first.popen.returncode == -9, first.tail()
        assert _under_way(pipeline), "killed mid-snapshot"
        pipeline.processes.remove(first)
        pipeline.start_capture(3, "--snapshot-chunk-rows", CHUNK)
        pipeline.start_replicator("replicate")
        wait_until(lambda: not _under_way(pipeline), 120, "the snapshot to finish after restart")
    finally:
        stop.set()
        writer.join(30)
    conn = pipeline.connect()
    final = pipeline.cut(conn)
    conn.close()
    _assert_backup_is_the_cut(pipeline, final.marker_id)
    _assert_no_dead_letters(pipeline)


def _assert_no_dead_letters(pipeline: Pipeline) -> None:
    """A chunk sent twice would be an INSERT of a key the replica holds: a dead letter."""
    listed = pipeline.cli(
        "dlq", "--source", pipeline.source, "--bootstrap-servers", pipeline.bootstrap, "--json"
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["count"] == 0, listed.stdout


def test_a_schema_change_mid_snapshot_ends_it_with_the_reinstall_copy(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADD COLUMN while accounts is half snapshotted: capture re-installs the table (its
    whole content copied after the 'S' row, for every source), which finishes the chunks;
    the next backup is the primary at its cut, in the new layout."""
    _big_primary(pipeline)
    monkeypatch.setenv("CUTLINE_FAILPOINTS", "capture.batch_produced=sleep:0.25")
    pipeline.start_capture(3, "--snapshot-chunk-rows", CHUNK)
    monkeypatch.delenv("CUTLINE_FAILPOINTS")
    pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    conn.execute("BEGIN IMMEDIATE")  # while the chunks are under way (see the first test)
    assert "accounts" in [t for _, t, _ in snapshots_under_way(conn)]
    conn.execute("ALTER TABLE accounts ADD COLUMN extra TEXT DEFAULT 'x'")
    conn.execute("UPDATE accounts SET extra = 'changed' WHERE id % 1000 = 7")
    conn.execute("COMMIT")
    wait_until(lambda: not _under_way(pipeline), 120, "the snapshots to finish")
    final = pipeline.cut(conn)
    conn.close()
    _assert_backup_is_the_cut(pipeline, final.marker_id)
    backup = pipeline.published()[final.marker_id]
    assert [c["name"] for c in backup.tables["accounts"]["columns"]][-1] == "extra"
    _assert_no_dead_letters(pipeline)
