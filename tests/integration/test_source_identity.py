"""Issue 7 cases 2 and 5 on a real broker: sources own their identity; locks are waited out.

Each case is reproduced as a user would meet it and is now either refused with one line
that says what to do, or exact: every backup is compared with the primary recorded at its
cut, in DuckDB, in Avro and through `cutline restore`.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path

from tests.faults.checker import check_backup_files
from tests.integration.pipeline import (
    TABLES,
    Pipeline,
    Rows,
    avro_rows,
    backup_rows,
    wait_until,
)
from tests.integration.test_backups_in_use import restore, restored_rows, typed
from tests.integration.workload import transfer


def assert_exact(pipeline: Pipeline, marker_ids: list[int], tables: list[str] = TABLES) -> None:
    """Backups of ``marker_ids`` equal the primary at their cuts: DuckDB, Avro, restore."""
    published = pipeline.wait_for_backups(marker_ids, deadline_s=120)
    for marker_id in marker_ids:
        backup = published[marker_id]
        expected: Rows = {t: pipeline.oracle[marker_id][t] for t in tables}
        in_duckdb = backup_rows(backup)
        assert in_duckdb == expected, f"backup {marker_id} (DuckDB) differs from the primary"
        assert avro_rows(backup)[0] == expected, f"backup {marker_id} (Avro) differs"
        target = pipeline.root / f"restore-{marker_id}.sqlite"
        target.unlink(missing_ok=True)
        restore(pipeline, marker_id, target)
        rows, _ = restored_rows(target)
        assert {t: typed(rows[t]) for t in tables} == {t: typed(expected[t]) for t in tables}
        assert sorted(rows) == sorted(tables), f"backup {marker_id} holds other tables"
        assert check_backup_files(backup) == []


def capture_cli(pipeline: Pipeline, *extra: str, timeout_s: float = 60.0):
    """Run `cutline capture` expecting it to stop on its own (a refusal)."""
    return pipeline.cli(
        "capture", "--db", str(pipeline.db), "--tables", ",".join(TABLES),
        "--source", pipeline.source, "--bootstrap-servers", pipeline.bootstrap, *extra,
        timeout_s=timeout_s,
    )  # fmt: skip


def assert_one_line_refusal(result, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def app_writes(pipeline: Pipeline, stop: threading.Event, seed: int) -> None:
    """Transfers, new and deleted accounts and events until ``stop``; may run many times on
    one primary (keys come from the data, not from a counter)."""
    rng = random.Random(seed)
    conn = pipeline.connect()
    try:
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in conn.execute("SELECT id FROM accounts")]
            roll = rng.random()
            if roll < 0.6 and len(ids) > 2:
                transfer(conn, rng, ids)
            elif roll < 0.8:
                new = max(ids, default=0) + 1
                conn.execute(
                    "INSERT INTO accounts VALUES (?, 'n', 0, ?, NULL)", (new, rng.random())
                )
                conn.execute("INSERT INTO tags VALUES (?, ?)", (new, f"t{seed}"))
            elif roll < 0.9 and len(ids) > 2:
                gone = rng.choice(ids)
                conn.execute("DELETE FROM tags WHERE account = ?", (gone,))
                conn.execute("DELETE FROM accounts WHERE id = ?", (gone,))
            else:
                conn.execute(
                    "INSERT INTO events (kind, payload) VALUES ('e', ?)", (rng.randbytes(3),)
                )
            conn.execute("COMMIT")
            time.sleep(rng.random() * 0.004)
    finally:
        conn.close()


def cut_with_writes(pipeline: Pipeline, cuts: int, seed: int) -> list[int]:
    """Cut ``cuts`` markers while a writer commits, then one after it stopped."""
    stop = threading.Event()
    writer = threading.Thread(target=lambda: app_writes(pipeline, stop, seed=seed))
    conn = pipeline.connect()
    ids = []
    try:
        writer.start()
        for _ in range(cuts):
            time.sleep(0.4)
            ids.append(pipeline.cut(conn).marker_id)
    finally:
        stop.set()
        writer.join(30)
    ids.append(pipeline.cut(conn).marker_id)
    conn.close()
    return ids


def change_log_size(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM _cutline_changes").fetchone()[0]


def test_two_sources_on_one_database_are_each_exact_while_the_app_writes(
    kafka: str, source: str, tmp_path: Path
) -> None:
    """A second source added to a captured database gets its own initial snapshot; neither
    deletes the other's changes; each publishes only its own tables (and a table it adds
    later from its own snapshot); the log is trimmed past what both published, and
    `cutline sources --drop` lets a gone source go."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a_pipeline = Pipeline(kafka, source, tmp_path / "a")
    with a_pipeline as a, Pipeline(kafka, f"{source}-b", tmp_path / "b") as b:
        b.db = a.db
        a.create_primary(accounts=60)
        a.start_capture(partitions=4)
        a.start_replicator("replicate")
        cut_with_writes(a, 2, seed=3)  # the database is captured and written to
        b_tables = ["accounts", "events"]
        stop = threading.Event()
        writer = threading.Thread(target=lambda: app_writes(a, stop, seed=5))
        writer.start()
        try:
            b.start(
                "capture", "capture", "--db", str(b.db), "--tables", ",".join(b_tables),
                "--partitions", "3", "--source", b.source, "--bootstrap-servers", kafka,
            )  # fmt: skip
            b.start_replicator("replicate")

            def b_installed() -> bool:
                b.check_alive()
                with sqlite3.connect(a.db) as conn:
                    return bool(
                        conn.execute(
                            "SELECT 1 FROM _cutline_sources WHERE source = ?", (b.source,)
                        ).fetchone()
                    )

            wait_until(b_installed, 60, "source b to install on the captured database")
        finally:
            stop.set()
            writer.join(30)
        both = cut_with_writes(a, 3, seed=9)
        b.oracle = {m: a.oracle[m] for m in both}
        b.tickets = {m: a.tickets[m] for m in both}
        assert_exact(a, sorted(a.oracle))
        assert_exact(b, both, tables=b_tables)

        # b adds a table a already captures while the app writes: the log holds changes of
        # it after b's cursor, which b must not publish before its own snapshot of it
        assert b.processes[0].stop() == 0, b.processes[0].tail()
        stop = threading.Event()
        writer = threading.Thread(target=lambda: app_writes(a, stop, seed=11))
        writer.start()
        try:
            b.start(
                "capture-2", "capture", "--db", str(b.db), "--tables", "transfers",
                "--source", b.source, "--bootstrap-servers", kafka,
            )  # fmt: skip

            def b_has_transfers() -> bool:
                b.check_alive()
                with sqlite3.connect(a.db) as conn:
                    (tables,) = conn.execute(
                        "SELECT tables FROM _cutline_sources WHERE source = ?", (b.source,)
                    ).fetchone()
                return "transfers" in tables

            wait_until(b_has_transfers, 60, "source b to add table transfers")
        finally:
            stop.set()
            writer.join(30)
        more = cut_with_writes(a, 2, seed=13)
        b.oracle.update({m: a.oracle[m] for m in more})
        b.tickets.update({m: a.tickets[m] for m in more})
        assert_exact(b, more, tables=[*b_tables, "transfers"])

        wait_until(lambda: change_log_size(a.db) == 0, 30, "the log trimmed past both sources")
        for process in b.processes:
            assert process.stop() == 0, process.tail()
        conn = a.connect()
        conn.execute("UPDATE accounts SET balance = balance + 1")
        conn.close()
        a_only = cut_with_writes(a, 0, seed=1)
        assert_exact(a, a_only)
        assert change_log_size(a.db) > 0, "b, stopped, holds the log back"
        listed = a.cli("sources", "--db", str(a.db))
        assert listed.returncode == 0 and b.source in listed.stdout, listed.stderr
        dropped = a.cli("sources", "--db", str(a.db), "--drop", b.source)
        assert dropped.returncode == 0, dropped.stderr
        wait_until(lambda: change_log_size(a.db) == 0, 30, "the log trimmed once b was dropped")
        unknown = a.cli("sources", "--db", str(a.db), "--drop", "nobody")
        assert unknown.returncode == 2 and "nobody" in unknown.stderr, unknown.stderr
        for process in a.processes:
            assert process.stop() == 0, process.tail()


def test_a_source_refuses_other_databases_and_moves_to_a_restored_primary(
    pipeline: Pipeline,
) -> None:
    """The same --source on a second database, or on a file copy of an older state, is
    refused; the primary restored from a backup is captured as a new incarnation whose
    content replaces the replica's, with marker ids that never name an old backup."""
    pipeline.create_primary(accounts=30)
    capture = pipeline.start_capture(partitions=4)
    pipeline.start_replicator("replicate")
    first = cut_with_writes(pipeline, 1, seed=21)
    assert_exact(pipeline, first)
    older_copy = pipeline.root / "older-copy.sqlite"
    with pipeline.connect() as conn, sqlite3.connect(older_copy) as copy:
        conn.backup(copy)  # a file copy of the primary as it is now
    later = cut_with_writes(pipeline, 2, seed=22)
    assert_exact(pipeline, later)
    assert capture.stop() == 0, capture.tail()
    original = pipeline.db

    other = pipeline.root / "other.sqlite"  # the same --source on an unrelated database
    pipeline.db = other
    pipeline.create_primary(accounts=5)
    assert_one_line_refusal(capture_cli(pipeline), "another database", "--new-incarnation")

    pipeline.db = older_copy  # the primary's file copy from before `later`
    assert_one_line_refusal(capture_cli(pipeline), "went backwards", "--new-incarnation")

    restored = pipeline.root / "restored.sqlite"  # the primary restored from backup first[0]
    restore(pipeline, first[0], restored)
    pipeline.db = restored
    mark = pipeline.cli("mark", "--db", str(restored))
    assert mark.returncode == 2 and "capture is not installed" in mark.stderr, mark.stderr
    assert_one_line_refusal(capture_cli(pipeline), "another database", "--new-incarnation")
    assert_one_line_refusal(
        capture_cli(pipeline, "--new-incarnation", "--source", f"{pipeline.source}-new"),
        "published nothing yet",
    )

    incarnation = pipeline.start_capture(4, "--new-incarnation")
    conn = pipeline.connect()
    assert pipeline.state(conn) == pipeline.oracle[first[0]], "restored as backup first[0]"
    conn.close()
    after = cut_with_writes(pipeline, 1, seed=23)
    assert min(after) > max(later), f"marker ids {after} reuse ids of old backups {later}"
    assert_exact(pipeline, after)
    assert_exact(pipeline, first + later)  # old backups untouched

    assert incarnation.stop() == 0, incarnation.tail()
    again = capture_cli(pipeline, "--new-incarnation")
    assert_one_line_refusal(again, "already is incarnation 1")
    pipeline.start_capture(4)  # and it resumes as the source's database from now on
    resumed = cut_with_writes(pipeline, 1, seed=24)
    assert_exact(pipeline, resumed)
    assert original.exists()
    for process in pipeline.processes:
        assert process.stop() == 0, process.tail()


def hold_write_lock(db: Path, release: threading.Event, at_most_s: float) -> threading.Thread:
    """Another connection takes the primary's write lock (with writes in its transaction)
    and holds it until ``release`` is set, or for ``at_most_s``, then commits."""
    started = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE accounts SET balance = balance + 7 WHERE id % 3 = 0")
        conn.execute("INSERT INTO events (kind, payload) VALUES ('long', x'01')")
        started.set()
        release.wait(at_most_s)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert started.wait(30), "the long write transaction did not start"
    return thread


def test_a_long_write_transaction_is_waited_out_by_capture_and_mark(pipeline: Pipeline) -> None:
    """An application holding the write lock for 12 s (past SQLite's 10 s busy wait)
    neither kills capture nor `mark`: they wait and say so; a short --lock-timeout gives
    one clear line; the marker cut after the lock is exact."""
    pipeline.create_primary(accounts=30)
    with sqlite3.connect(pipeline.db) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    capture = pipeline.start_capture(partitions=3)
    pipeline.start_replicator("replicate")
    before = cut_with_writes(pipeline, 1, seed=31)

    holder = hold_write_lock(pipeline.db, threading.Event(), at_most_s=12.0)
    mark = pipeline.start("mark", "mark", "--db", str(pipeline.db))
    quick = pipeline.cli("mark", "--db", str(pipeline.db), "--lock-timeout", "1")
    assert quick.returncode == 1, quick.stderr
    assert quick.stderr.count("\n") == 1 and "--lock-timeout" in quick.stderr, quick.stderr
    holder.join(30)
    assert mark.popen.wait(60) == 0, mark.tail()
    conn = pipeline.connect()
    state = pipeline.state(conn)  # no one else writes: the primary at that marker
    conn.close()
    assert "waiting for the primary's write lock" in mark.log.read_text(), mark.tail()
    (line,) = [x for x in mark.log.read_text().splitlines() if x.startswith("{")]
    marker_id = json.loads(line)["marker_id"]
    pipeline.oracle[marker_id] = state
    pipeline.check_alive()
    assert capture.popen.poll() is None, "capture outlived the 12 s write transaction"
    after = cut_with_writes(pipeline, 1, seed=32)
    assert_exact(pipeline, [*before, marker_id, *after])

    assert capture.stop() == 0, capture.tail()  # start-up under a held lock waits too
    release = threading.Event()
    holder = hold_write_lock(pipeline.db, release, at_most_s=90.0)
    try:
        restarted = pipeline._start_capture(3)
        wait_until(
            lambda: "waiting for the primary's write lock" in restarted.log.read_text(),
            60,
            "capture to say it waits for the write lock",
        )
        assert restarted.popen.poll() is None, restarted.tail()
    finally:
        release.set()
        holder.join(30)
    final = cut_with_writes(pipeline, 1, seed=33)
    assert_exact(pipeline, final)
    for process in pipeline.processes:
        if process.popen.poll() is None:
            assert process.stop() == 0, process.tail()
