"""Sources own their identity: the start-up decision, per-source snapshots and cursors,
migration of a database captured by the previous version, new incarnations, write locks."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from consumers.replica import Shard
from producers.markers import request_marker
from producers.row_images import image_values
from producers.sources import (
    DatabaseView,
    SourceDropped,
    SourceMismatch,
    SourceRecord,
    Start,
    StartPlan,
    all_sources,
    drop_source,
    install_source,
    plan_start,
    read_source_changes,
    read_view,
    save_cursor,
)
from producers.sqlite_changelog import (
    CHANGES,
    connect,
    create_triggers,
    describe_table,
    read_changes,
)
from producers.write_lock import PrimaryLocked, begin_write, try_begin_write, use_wal
from schemas.codec import decode
from schemas.records import CapturePosition, Column, Operation, OpType, TableDefinition

DB_ID = "db-1"


def position(seq: int, database_id: str = DB_ID, incarnation: int = 0, marker: int = 4):
    return CapturePosition("s", seq, marker, 2, (0, 0), database_id, incarnation)


def registered(cursor: int, baseline: int = 0, incarnation: int = 0) -> SourceRecord:
    return SourceRecord("s", ("t",), baseline, cursor, incarnation, 0)


def view(reg: SourceRecord | None = None, issued: int = 100, **kw) -> DatabaseView:
    return DatabaseView(kw.get("database_id", DB_ID), kw.get("legacy", False), reg, issued)


def plan(pos, v, new_incarnation: bool = False) -> StartPlan:
    return plan_start("s", pos, v, new_incarnation=new_incarnation, db_path="p.db")


# -- the decision table -------------------------------------------------------------------


def test_a_new_source_starts_fresh_and_resumes_on_its_own_database() -> None:
    assert plan(None, view(database_id=None)) == StartPlan(Start.FRESH, 0)
    assert plan(position(50), view(registered(40))) == StartPlan(Start.RESUME, 0, 50)


def test_another_database_is_refused_and_says_what_to_do() -> None:
    others = [view(database_id="db-2"), view(database_id=None)]
    others.append(view(registered(3), database_id="db-2"))
    for other in others:
        with pytest.raises(SourceMismatch, match=r"new --source.*--new-incarnation"):
            plan(position(50), other)
    legacy_position = position(50, database_id="")
    with pytest.raises(SourceMismatch, match="another database"):
        plan(legacy_position, view(database_id=None))  # a fresh database, not the legacy one


def test_a_change_log_that_went_backwards_is_refused() -> None:
    with pytest.raises(SourceMismatch, match=r"went backwards.*--new-incarnation"):
        plan(position(150), view(registered(150), issued=120))


def test_topics_that_lost_records_or_vanished_are_refused() -> None:
    with pytest.raises(SourceMismatch, match="lost records"):
        plan(position(50), view(registered(60)))
    with pytest.raises(SourceMismatch, match="no capture position"):
        plan(None, view(registered(60, baseline=10)))
    assert plan(None, view(registered(10, baseline=10))) == StartPlan(Start.RESUME, 0, 10)


def test_new_incarnation_only_when_there_is_one_to_continue() -> None:
    assert plan(position(50, "db-2", 1), view(), True) == StartPlan(Start.NEW_INCARNATION, 2)
    assert plan(position(150), view(registered(150), 120), True).start is Start.NEW_INCARNATION
    with pytest.raises(SourceMismatch, match="published nothing yet"):
        plan(None, view(), True)
    with pytest.raises(SourceMismatch, match="already is incarnation 0"):
        plan(position(50), view(registered(50)), True)


def test_a_new_incarnation_that_crashed_before_publishing_resumes() -> None:
    pending = registered(70, baseline=70, incarnation=2)
    assert plan(position(500, "db-old", 1), view(pending)) == StartPlan(Start.RESUME, 2, 70)


def test_the_previous_versions_database_and_positions() -> None:
    legacy = DatabaseView(None, True, None, 100)
    assert plan(position(80, database_id=""), legacy) == StartPlan(Start.MIGRATE, 0, 80)
    with pytest.raises(SourceMismatch, match="earlier cutline version"):
        plan(None, legacy)  # another source first would let trimming lose the old one's rows


def test_a_dropped_source_cannot_resume() -> None:
    with pytest.raises(SourceMismatch, match="was dropped"):
        plan(position(50), view(None))


# -- on a real SQLite primary -------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "primary.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, w TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(5)])
    conn.executemany("INSERT INTO u VALUES (?, ?)", [(i, f"w{i}") for i in range(3)])
    conn.commit()
    conn.close()
    return path


def install(conn: sqlite3.Connection, source: str, tables: list[str], p: StartPlan, last=0):
    conn.execute("BEGIN IMMEDIATE")
    record, _ = install_source(conn, source, tables, p, last)
    conn.execute("COMMIT")
    return record


def test_a_second_source_gets_its_own_snapshot_and_trimming_waits_for_both(db: Path) -> None:
    conn = connect(db)
    a = install(conn, "a", ["t"], StartPlan(Start.FRESH, 0))
    conn.execute("INSERT INTO t VALUES (10, 'x')")
    conn.execute("INSERT INTO u VALUES (10, 'y')")
    b = install(conn, "b", ["t", "u"], StartPlan(Start.FRESH, 0))
    a_rows = read_changes(conn, a.cursor_seq, 100, source="a")
    b_rows = read_changes(conn, b.cursor_seq, 100, source="b")
    assert [image_values(r.after) for r in a_rows if r.table == "t"][-1] == [10, "x"]
    assert len([r for r in a_rows if r.table == "t"]) == 6, "a's snapshot and its insert only"
    assert sorted(image_values(r.after) for r in b_rows) == sorted(
        [[i, f"v{i}"] for i in range(5)]
        + [[10, "x"]]
        + [[i, f"w{i}"] for i in range(3)]
        + [[10, "y"]]
    ), "b starts from both tables' whole content, in its own snapshot"
    assert {r.only_source for r in b_rows} == {"b"}

    conn.execute("BEGIN IMMEDIATE")
    save_cursor(conn, "a", a_rows[-1].seq)  # a is done; b published nothing yet
    conn.execute("COMMIT")
    assert read_changes(conn, b.cursor_seq, 100, source="b") == b_rows, "b's rows stay"
    conn.execute("BEGIN IMMEDIATE")
    save_cursor(conn, "b", b_rows[-1].seq)
    conn.execute("COMMIT")
    assert conn.execute(f"SELECT count(*) FROM {CHANGES}").fetchone()[0] == 0


def test_dropping_a_gone_source_releases_the_log(db: Path) -> None:
    conn = connect(db)
    install(conn, "a", ["t"], StartPlan(Start.FRESH, 0))
    install(conn, "b", ["t"], StartPlan(Start.FRESH, 0))
    end = read_changes(conn, 0, 1000)[-1].seq
    conn.execute("BEGIN IMMEDIATE")
    save_cursor(conn, "a", end)
    conn.execute("COMMIT")
    assert read_changes(conn, 0, 1000), "b holds the log back"
    conn.execute("BEGIN IMMEDIATE")
    assert drop_source(conn, "b") and not drop_source(conn, "nobody")
    conn.execute("COMMIT")
    assert read_changes(conn, 0, 1000) == []
    assert [s.source for s in all_sources(conn)] == ["a"]


def test_a_source_dropped_while_it_runs_stops_before_reading_across_a_gap(db: Path) -> None:
    conn = connect(db)
    install(conn, "a", ["t"], StartPlan(Start.FRESH, 0))
    install(conn, "b", ["t"], StartPlan(Start.FRESH, 0))
    assert read_source_changes(conn, "b", 0, 100), "registered: its changes"
    other = connect(db)
    other.execute("BEGIN IMMEDIATE")
    drop_source(other, "b")
    other.execute("COMMIT")
    with pytest.raises(SourceDropped, match="was dropped"):
        read_source_changes(conn, "b", 0, 100)
    assert not conn.in_transaction


def test_a_database_of_the_previous_version_is_migrated(db: Path) -> None:
    conn = connect(db)
    conn.executescript(
        """
        CREATE TABLE _cutline_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
            tbl TEXT, before TEXT, after TEXT, marker_id INTEGER, at_us INTEGER NOT NULL);
        CREATE TABLE _cutline_markers (marker_id INTEGER PRIMARY KEY AUTOINCREMENT,
            t1_us INTEGER NOT NULL, note TEXT);
        CREATE TABLE _cutline_tables (tbl TEXT PRIMARY KEY, columns TEXT NOT NULL,
            key_columns TEXT NOT NULL, installed_at_us INTEGER NOT NULL);
        INSERT INTO _cutline_tables VALUES ('t', 'id,v', 'id', 0);
        INSERT INTO _cutline_changes (kind, tbl, after, at_us) VALUES ('I', 't', '1,''a''', 0);
        INSERT INTO _cutline_changes (kind, tbl, after, at_us) VALUES ('I', 't', '2,''b''', 0);
        """
    )
    # its capture triggers, as that version installed them (else the install re-installs t)
    create_triggers(conn, describe_table(conn, "", "t"))
    v = read_view(conn, "s")
    assert v.legacy and v.issued_seq == 2
    p = plan_start("s", position(1, database_id=""), v, new_incarnation=False, db_path="p")
    record = install(conn, "s", ["t"], p)
    assert (record.cursor_seq, record.tables) == (1, ("t",)), "Kafka's word, the old tables"
    assert [r.seq for r in read_changes(conn, 1, 100, source="s")] == [2], "no new snapshot"
    assert read_view(conn, "s").database_id, "the database got its identity"


def test_a_new_incarnation_never_reuses_marker_ids(tmp_path: Path, db: Path) -> None:
    conn = connect(db)
    record = install(conn, "s", ["t"], StartPlan(Start.NEW_INCARNATION, 3), last=41)
    assert record.incarnation == 3
    assert request_marker(conn).marker_id == 42
    again = install(conn, "s", ["t"], StartPlan(Start.NEW_INCARNATION, 4), last=10)
    assert request_marker(conn).marker_id == 43, "the counter never goes back"
    snapshot = [r for r in read_changes(conn, again.cursor_seq, 100, source="s") if r.table]
    assert len(snapshot) == 5, "one snapshot of the new incarnation, the old one's dropped"


def test_a_shard_replaces_a_table_on_a_higher_incarnation(tmp_path: Path) -> None:
    definition = TableDefinition(
        "s", "t", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        (Column("id", "INTEGER"), Column("v", "TEXT")), ("id",),
    )  # fmt: skip
    shard = Shard(tmp_path / "p.sqlite", 0)

    def apply(*records) -> list[tuple]:
        shard.begin()
        for record in records:
            if isinstance(record, TableDefinition):
                shard.define(record)
            else:
                shard.apply(record)
        shard.commit(0)
        return shard.conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()

    def insert(key: int, v: str) -> Operation:
        return Operation("s", key, "t", OpType.INSERT, {"id": key}, None, {"id": key, "v": v}, 0)

    assert apply(definition, insert(1, "old"), insert(2, "old")) == [(1, "old"), (2, "old")]
    assert apply(definition, insert(3, "same")) == [(1, "old"), (2, "old"), (3, "same")]
    restored = replace(definition, incarnation=1)
    assert apply(restored, insert(1, "new")) == [(1, "new")], "the old incarnation's rows go"
    assert apply(restored, insert(5, "more")) == [(1, "new"), (5, "more")], "once only"


# -- write locks --------------------------------------------------------------------------


def hold_lock(db: Path, seconds: float) -> threading.Thread:
    ready = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        ready.set()
        threading.Event().wait(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert ready.wait(10)
    return thread


def test_a_write_waits_out_another_writer_and_says_so(db: Path) -> None:
    conn = connect(db)
    notes: list[str] = []
    holder = hold_lock(db, 2.5)
    assert not try_begin_write(conn), "held by the other connection"
    begin_write(conn, "testing", lock_timeout_s=30, progress=notes.append)
    conn.execute("COMMIT")
    holder.join()
    assert notes and "waiting for the primary's write lock held by another connection" in notes[0]


def test_switching_to_wal_waits_out_another_writer(db: Path) -> None:
    conn = connect(db)
    notes: list[str] = []
    holder = hold_lock(db, 2.5)  # a rollback-journal database: WAL needs it alone
    use_wal(conn, lock_timeout_s=30, progress=notes.append)
    holder.join()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert notes, "it said it was waiting"


def test_a_write_gives_up_at_its_deadline_with_one_line(db: Path) -> None:
    conn = connect(db)
    install(conn, "s", ["t"], StartPlan(Start.FRESH, 0))
    holder = hold_lock(db, 3.0)
    with pytest.raises(PrimaryLocked, match=r"cutting a marker: .*--lock-timeout") as caught:
        request_marker(conn, lock_timeout_s=0.5)
    assert "\n" not in str(caught.value)
    holder.join()
    assert request_marker(conn).marker_id == 1


def test_capture_publishes_on_while_the_write_lock_is_held_and_trims_after(db: Path) -> None:
    """Capture never dies on an application's long write transaction: the cursor write and
    the trim are put off (and said so), and done once the lock is free."""
    from tests.unit.test_capture_transactions import StandInProducer, make_capture

    producer = StandInProducer()
    capture = make_capture(db, producer)
    notes: list[str] = []
    capture.progress = notes.append
    holder = hold_lock(db, 3.0)
    assert capture.step() == 5, "the snapshot is published while the lock is held"
    assert len(producer.committed) == 1
    assert any("waiting for the primary's write lock" in n for n in notes), notes
    assert len(read_changes(capture._conn, 0, 100)) == 5, "not trimmed yet"
    holder.join()
    assert capture.step() == 0
    assert read_changes(capture._conn, 0, 100) == [], "trimmed once the lock was free"
    (cursor,) = capture._conn.execute("SELECT cursor_seq FROM _cutline_sources").fetchone()
    assert cursor == capture._seq == 5


def test_a_table_added_later_is_published_from_the_sources_own_snapshot(db: Path) -> None:
    """A source that adds a table another source already captures must not publish that
    table's changes logged before its own snapshot of it (the replica has no rows yet)."""
    from tests.unit.test_capture_transactions import StandInProducer, make_capture

    producer = StandInProducer()
    capture = make_capture(db, producer)  # source "s" on table t
    conn = capture._conn
    install(conn, "a", ["t", "u"], StartPlan(Start.FRESH, 0))
    conn.execute("UPDATE u SET w = 'changed' WHERE id = 1")  # logged for a, before s has u
    conn.execute("DELETE FROM u WHERE id = 2")
    record = install(conn, "s", ["t", "u"], StartPlan(Start.RESUME, 0, 0))
    assert dict(record.table_starts) == {"u": record.table_starts[0][1]}
    capture.use_source(record)
    capture.step()
    ops = [
        r
        for batch in producer.committed
        for _, v, _ in batch
        if isinstance(r := decode(v), Operation)
    ]
    on_u = sorted((op.op.value, op.key["id"], op.after["w"]) for op in ops if op.table == "u")
    assert on_u == [("INSERT", 0, "w0"), ("INSERT", 1, "changed")], "its snapshot only"
    assert sorted(op.key["id"] for op in ops if op.table == "t") == list(range(5))
    again = install(conn, "s", ["t", "u"], StartPlan(Start.RESUME, 0, capture._seq))
    assert again.table_starts == (), "forgotten once the cursor passed it"


def test_sources_command_lists_and_drops(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cutline.cli import main

    conn = connect(db)
    install(conn, "a", ["t"], StartPlan(Start.FRESH, 0))
    install(conn, "b", ["u"], StartPlan(Start.FRESH, 0))
    assert main(["sources", "--db", str(db), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["source"] for s in listed["sources"]] == ["a", "b"]
    assert [s["pending_changes"] for s in listed["sources"]] == [5, 3], "own snapshots"
    assert main(["sources", "--db", str(db), "--drop", "b"]) == 0
    assert [s.source for s in all_sources(conn)] == ["a"]


def test_a_sqlite_error_of_a_command_is_one_line(db: Path, capsys) -> None:
    from cutline.cli import main

    conn = connect(db)
    install(conn, "a", ["t"], StartPlan(Start.FRESH, 0))
    conn.execute("DROP TABLE _cutline_markers")  # a damaged install
    assert main(["mark", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such table: _cutline_markers" in err, err
