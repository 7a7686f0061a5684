"""Every statement form SQLite can change a captured row with, captured exactly.

Each test runs statements on a real SQLite primary (as the application would, with
``recursive_triggers`` off and on), replays the change log into partitioned replica shards
(the real ``Shard``, keyed and partitioned as capture does) and compares the union of the
shards with the primary, every column including generated ones, storage class included.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consumers.replica import Shard
from cutline.errors import ConfigError
from producers.operations import TableLayout, partition_for, to_operations
from producers.schema_changes import reinstalled_definition
from producers.sqlite_changelog import (
    KIND_DIGEST,
    KIND_MARKER,
    KIND_SCHEMA,
    connect,
    forget_changes,
    install,
    quote_identifier,
    read_changes,
)
from producers.triggers import triggers_ahead_of_capture
from schemas.records import TableDefinition

PARTITIONS = 4

SCHEMA = """
CREATE TABLE kv (id INTEGER PRIMARY KEY, v);
CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT UNIQUE, handle TEXT,
                    team INT, seat INT, UNIQUE (team, seat));
CREATE UNIQUE INDEX users_handle ON users(handle COLLATE NOCASE);
CREATE TABLE codes (code TEXT PRIMARY KEY COLLATE NOCASE, label TEXT UNIQUE ON CONFLICT REPLACE,
                    n INT) WITHOUT ROWID;
CREATE TABLE slots (a INT, b TEXT, v, PRIMARY KEY (a, b));
CREATE TABLE colrep (id INTEGER PRIMARY KEY ON CONFLICT REPLACE, u TEXT UNIQUE ON CONFLICT REPLACE,
                     v);
CREATE TABLE tblrep (id INT, u TEXT, v, PRIMARY KEY (id) ON CONFLICT REPLACE,
                     UNIQUE (u) ON CONFLICT REPLACE);
CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT UNIQUE);
CREATE TABLE child (id INTEGER PRIMARY KEY,
                    parent_id INT REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE, v);
CREATE TABLE orphan (id INTEGER PRIMARY KEY, parent_id INT REFERENCES parent(id)
                     ON DELETE SET NULL ON UPDATE SET NULL, v);
CREATE TABLE gen (id INTEGER PRIMARY KEY, a INT, twice INT GENERATED ALWAYS AS (a * 2) VIRTUAL,
                  label TEXT GENERATED ALWAYS AS ('n' || a) STORED);
CREATE TABLE strict_t (id INTEGER PRIMARY KEY, n INT, t TEXT UNIQUE, x ANY) STRICT;
CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);
CREATE TABLE uncaptured (id INTEGER PRIMARY KEY, v);
CREATE TABLE desc_key (id INTEGER PRIMARY KEY DESC, v TEXT UNIQUE, d TEXT DEFAULT 'dflt');
CREATE TABLE defaulted (id INTEGER PRIMARY KEY,
                        parent_id INT DEFAULT 3 REFERENCES parent(id) ON DELETE SET DEFAULT
                        ON UPDATE CASCADE,
                        at TEXT DEFAULT 'now', n INT DEFAULT (1 + 1));
CREATE TABLE checked (id INTEGER PRIMARY KEY, n INT CHECK (n >= 0), u TEXT UNIQUE);
CREATE VIEW kv_view AS SELECT id, v FROM kv;
CREATE TRIGGER kv_view_insert INSTEAD OF INSERT ON kv_view BEGIN
    INSERT OR REPLACE INTO kv VALUES (NEW.id, NEW.v);
END;
CREATE TRIGGER kv_audit AFTER UPDATE ON kv BEGIN
    INSERT INTO audit(what) VALUES ('kv ' || NEW.id || ' = ' || quote(NEW.v));
END;
INSERT INTO kv VALUES (-1, 'minus one'), (1, 'one'), (2, 'two'), (3, 'three');
INSERT INTO users(email, handle, team, seat) VALUES
    ('a@x', 'Ann', 1, 1), ('b@x', 'Bob', 1, 2), ('c@x', 'Cy', 2, 1), ('d@x', NULL, NULL, 1);
INSERT INTO codes VALUES ('ab', 'first', 1), ('cd', 'second', 2);
INSERT INTO slots VALUES (1, 'x', 10), (1, 'y', 11), (2, 'x', 20);
INSERT INTO colrep VALUES (1, 'p', 1), (2, 'q', 2), (3, 'r', 3);
INSERT INTO tblrep VALUES (1, 'p', 1), (2, 'q', 2), (3, 'r', 3);
INSERT INTO parent VALUES (1, 'one'), (2, 'two'), (3, 'three');
INSERT INTO child VALUES (10, 1, 'a'), (11, 1, 'b'), (12, 2, 'c'), (13, 3, 'd');
INSERT INTO orphan VALUES (20, 1, 'x'), (21, 2, 'y');
INSERT INTO gen(id, a) VALUES (1, 1), (2, 2);
INSERT INTO strict_t VALUES (1, 1, 'one', 1.5), (2, 2, 'two', x'00');
INSERT INTO desc_key VALUES (1, 'a', 'x'), (2, 'b', 'y');
INSERT INTO checked VALUES (1, 1, 'a'), (2, 2, 'b');
INSERT INTO defaulted(id, parent_id) VALUES (1, 1), (2, 2);
"""
CAPTURED = [
    "kv", "users", "codes", "slots", "colrep", "tblrep", "parent", "child", "orphan", "gen",
    "strict_t", "audit", "desc_key", "defaulted", "checked",
]  # fmt: skip


def same(a: object, b: object) -> bool:
    """Equal value *and* storage class."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def all_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """Every column, generated ones included (table_xinfo hidden 0, 2 or 3)."""
    return [
        r[1] for r in conn.execute(f"PRAGMA table_xinfo({quote_identifier(table)})") if r[6] != 1
    ]


def rows(conn: sqlite3.Connection, table: str, columns: list[str]) -> list[tuple]:
    cols = ",".join(quote_identifier(c) for c in columns)
    return sorted(conn.execute(f"SELECT {cols} FROM {quote_identifier(table)}"), key=repr)


@dataclass
class Replay:
    """The change log applied to partitioned shards, as replication would, incrementally."""

    capture: sqlite3.Connection
    definitions: list[TableDefinition]
    root: Path
    seq: int = 0
    shards: list[Shard] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    partitions_used: dict[str, set[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layouts = {d.table: TableLayout.of(d) for d in self.definitions}
        for p in range(PARTITIONS):
            shard = Shard(self.root / f"p{p}.sqlite", p)
            for d in self.definitions:
                shard.define(d)
            self.shards.append(shard)
            self.offsets.append(0)

    def catch_up(self) -> None:
        """Apply every new change; an operation the replica refuses fails the test."""
        for change in read_changes(self.capture, self.seq, 1_000_000):
            self.seq = change.seq
            if change.kind in (KIND_MARKER, KIND_DIGEST):  # a marker and its digest
                continue
            if change.kind == KIND_SCHEMA:  # a re-installed table: every shard rebuilds it
                definition = reinstalled_definition(change.table or "", change.after, "src")
                for shard in self.shards:
                    shard.begin()
                    shard.define(definition)
                    shard.commit(self.offsets[shard.partition])
                self.layouts[definition.table] = TableLayout.of(definition)
                continue
            for key, op in to_operations(change, self.layouts[change.table], "src"):
                p = partition_for(key, PARTITIONS)
                self.partitions_used.setdefault(change.table, set()).add(p)
                shard = self.shards[p]
                shard.begin()
                try:
                    shard.apply(op)
                except BaseException:
                    shard.rollback()
                    raise
                self.offsets[p] += 1
                shard.commit(self.offsets[p])

    def assert_matches(self, app: sqlite3.Connection) -> None:
        self.catch_up()
        for d in self.definitions:
            columns = all_columns(app, d.table)
            expected = rows(app, d.table, columns)
            got = sorted((r for s in self.shards for r in rows(s.conn, d.table, columns)), key=repr)
            assert len(got) == len(expected), f"{d.table}: {got} != {expected}"
            for g, e in zip(got, expected, strict=True):
                assert all(same(x, y) for x, y in zip(g, e, strict=True)), (
                    f"{d.table}: replica {got} != primary {expected}"
                )

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


@pytest.fixture(params=[False, True], ids=["recursive_triggers_off", "recursive_triggers_on"])
def recursive(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def app(tmp_path: Path, recursive: bool) -> Iterator[sqlite3.Connection]:
    """The application's connection (foreign keys on), after capture was installed."""
    db = tmp_path / "primary.sqlite"
    setup = sqlite3.connect(db, isolation_level=None)
    setup.executescript(SCHEMA)
    setup.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA recursive_triggers = {'ON' if recursive else 'OFF'}")
    yield conn
    conn.close()


@pytest.fixture
def replay(app: sqlite3.Connection, tmp_path: Path) -> Iterator[Replay]:
    db = Path(app.execute("PRAGMA database_list").fetchone()[2])
    capture = connect(db)
    definitions = install(capture, "src", CAPTURED)
    r = Replay(capture, definitions, tmp_path / "shards")
    r.assert_matches(app)  # the initial snapshot
    yield r
    r.close()
    capture.close()


def run(app: sqlite3.Connection, replay: Replay, *statements: str) -> None:
    """Run each statement and check the replica against the primary after each one."""
    for statement in statements:
        app.execute(statement)
        replay.assert_matches(app)


def test_plain_insert_update_delete(app, replay):
    run(
        app,
        replay,
        "INSERT INTO kv VALUES (4, 'four')",
        "INSERT INTO kv(v) VALUES ('auto')",
        "UPDATE kv SET v = 'TWO' WHERE id = 2",
        "DELETE FROM kv WHERE id = 3",
        "INSERT INTO users(email, handle, team, seat) VALUES ('e@x', 'Eve', 3, 1)",
    )


def test_insert_or_replace_and_replace_into_on_the_primary_key(app, replay):
    run(
        app,
        replay,
        "INSERT OR REPLACE INTO kv VALUES (1, 'one again')",
        "REPLACE INTO kv VALUES (2, x'0102')",
        "REPLACE INTO kv VALUES (40, 'new')",
        "REPLACE INTO slots VALUES (1, 'y', 99)",
        "REPLACE INTO codes VALUES ('AB', 'upper', 3)",  # NOCASE key: replaces 'ab'
    )


def test_replace_removes_another_row_through_a_unique_column_in_another_partition(app, replay):
    run(
        app,
        replay,
        "REPLACE INTO users(id, email, handle, team, seat) VALUES (50, 'a@x', 'New', 9, 9)",
        "REPLACE INTO users(email, handle, team, seat) VALUES ('z@x', 'bob', 8, 8)",  # NOCASE
        "REPLACE INTO users(email, handle, team, seat) VALUES ('y@x', 'Yan', 2, 1)",  # (team,seat)
        "REPLACE INTO codes VALUES ('zz', 'second', 9)",
    )
    assert len(replay.partitions_used["users"]) > 1, "the rows should span partitions"


def test_one_replace_removes_two_rows_at_once(app, replay):
    run(
        app,
        replay,
        # conflicts with Ann on email and with Bob on (team, seat) and with row 3 on the key
        "REPLACE INTO users(id, email, handle, team, seat) VALUES (3, 'a@x', 'Max', 1, 2)",
    )
    assert app.execute("SELECT count(*) FROM users").fetchone()[0] == 2


def test_nulls_never_collide_in_unique_constraints(app, replay):
    run(
        app,
        replay,
        "REPLACE INTO users(email, handle, team, seat) VALUES (NULL, NULL, NULL, 1)",
        "REPLACE INTO users(email, handle, team, seat) VALUES (NULL, NULL, NULL, 1)",
    )
    assert app.execute("SELECT count(*) FROM users WHERE handle IS NULL").fetchone()[0] == 3


def test_an_automatic_rowid_never_replaces_the_row_minus_one(app, replay):
    """A BEFORE INSERT trigger reads an automatic rowid as -1: row -1 must stay."""
    run(
        app,
        replay,
        "INSERT OR REPLACE INTO kv(v) VALUES ('auto')",
        "INSERT OR REPLACE INTO kv(id, v) VALUES (NULL, 'auto 2')",
        "INSERT OR REPLACE INTO kv(id, v) VALUES (-1, 'minus one replaced')",
    )
    assert app.execute("SELECT v FROM kv WHERE id = -1").fetchone()[0] == "minus one replaced"


def test_update_or_replace_including_a_key_change_onto_another_row(app, replay):
    run(
        app,
        replay,
        "UPDATE OR REPLACE users SET email = 'b@x' WHERE id = 1",
        "UPDATE OR REPLACE kv SET id = 2 WHERE id = 1",
        "UPDATE OR REPLACE slots SET b = 'y' WHERE a = 1 AND b = 'x'",
        "UPDATE OR REPLACE codes SET code = 'CD' WHERE code = 'ab'",
        "UPDATE OR REPLACE users SET team = 2, seat = 1",  # every row onto one (team, seat)
    )


def test_on_conflict_replace_in_the_table_definition(app, replay):
    run(
        app,
        replay,
        "INSERT INTO colrep VALUES (1, 'new', 10)",  # column PK constraint
        "INSERT INTO colrep VALUES (9, 'q', 90)",  # column UNIQUE constraint
        "INSERT INTO colrep VALUES (3, 'new', 30)",  # both, two rows at once
        "INSERT INTO tblrep VALUES (1, 'q', 10)",  # table constraints: removes 1 and 2
        "UPDATE tblrep SET u = 'r' WHERE id = 1",
        "INSERT INTO codes VALUES ('ef', 'first', 5)",  # UNIQUE ON CONFLICT REPLACE label
    )


def test_insert_or_ignore_and_fail_leave_no_false_deletes(app, replay):
    run(
        app,
        replay,
        "INSERT OR IGNORE INTO kv VALUES (1, 'ignored')",
        "UPDATE kv SET v = 'after ignore' WHERE id = 1",
        "INSERT OR IGNORE INTO users(email) VALUES ('c@x')",
        "INSERT INTO kv VALUES (60, 'sixty')",
    )
    with pytest.raises(sqlite3.IntegrityError):
        app.execute("INSERT OR FAIL INTO kv VALUES (70, 'kept'), (1, 'fails')")
    replay.assert_matches(app)  # row 70 stays: FAIL keeps the statement's earlier rows
    run(app, replay, "UPDATE kv SET v = 'then' WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError):
        app.execute("INSERT INTO users(id, email) VALUES (99, 'a@x')")
    run(app, replay, "UPDATE users SET handle = 'ann' WHERE id = 1")


def test_upserts_do_update_and_do_nothing(app, replay):
    run(
        app,
        replay,
        "INSERT INTO kv VALUES (1, 'x') ON CONFLICT(id) DO UPDATE SET v = excluded.v || '!'",
        "INSERT INTO kv VALUES (1, 'y') ON CONFLICT DO NOTHING",
        "INSERT INTO users(email, handle) VALUES ('a@x', 'Zed') "
        "ON CONFLICT(email) DO UPDATE SET handle = excluded.handle",
        "INSERT INTO kv VALUES (2, 'z'), (77, 'new') ON CONFLICT(id) DO UPDATE SET id = 200",
        "INSERT INTO kv SELECT id, 'all' FROM kv WHERE true ON CONFLICT DO UPDATE SET v = 'up'",
    )


def test_multi_row_insert_select_and_update_from(app, replay):
    run(
        app,
        replay,
        "INSERT INTO kv SELECT id + 100, v FROM kv",
        "INSERT OR REPLACE INTO kv SELECT id, 'bulk ' || id FROM kv WHERE id > 100",
        "UPDATE kv SET v = p.name FROM parent AS p WHERE kv.id = p.id",
        "REPLACE INTO users(email, handle, team, seat) "
        "SELECT email, handle || '2', team + 10, seat FROM users",
    )


def test_primary_key_changes_including_onto_a_taken_key(app, replay):
    run(app, replay, "UPDATE kv SET id = 30 WHERE id = 3", "UPDATE slots SET a = 5 WHERE a = 1")
    with pytest.raises(sqlite3.IntegrityError):
        app.execute("UPDATE kv SET id = 2 WHERE id = 1")
    run(app, replay, "UPDATE OR REPLACE kv SET id = 2 WHERE id = 1")


def test_update_and_delete_with_limit_when_the_library_has_them(app, replay):
    options = {r[0] for r in app.execute("PRAGMA compile_options")}
    statements = (
        "DELETE FROM kv WHERE id > 0 ORDER BY id LIMIT 1",
        "UPDATE kv SET v = 'limited' WHERE id > 0 ORDER BY id DESC LIMIT 1",
    )
    if "ENABLE_UPDATE_DELETE_LIMIT" in options:
        run(app, replay, *statements)
    else:
        for statement in statements:
            with pytest.raises(sqlite3.OperationalError):
                app.execute(statement)


def test_foreign_key_actions_into_captured_children(app, replay):
    run(
        app,
        replay,
        "DELETE FROM parent WHERE id = 1",  # ON DELETE CASCADE child, SET NULL orphan
        "UPDATE parent SET id = 20 WHERE id = 2",  # ON UPDATE CASCADE
        "REPLACE INTO parent VALUES (3, 'three again')",  # a REPLACE delete: cascades too
        "REPLACE INTO parent VALUES (30, 'two')",  # replaces parent 20 through UNIQUE name
    )


def test_without_rowid_composite_keys_autoincrement_and_strict_tables(app, replay):
    run(
        app,
        replay,
        "INSERT INTO codes VALUES ('gh', 'third', 3)",
        "UPDATE codes SET n = n + 1",
        "DELETE FROM codes WHERE code = 'CD'",
        "INSERT INTO slots VALUES (3, 'z', NULL)",
        "DELETE FROM users WHERE id = (SELECT max(id) FROM users)",
        "INSERT INTO users(email) VALUES ('after delete@x')",  # AUTOINCREMENT: a new id
        "INSERT INTO strict_t VALUES (3, 3, 'three', 'text'), (4, 4, 'four', NULL)",
        "REPLACE INTO strict_t VALUES (5, 5, 'one', 2.25)",
    )


def test_generated_columns_are_computed_by_the_replica(app, replay):
    run(
        app,
        replay,
        "INSERT INTO gen(id, a) VALUES (3, 3)",
        "UPDATE gen SET a = 10 WHERE id = 1",
        "REPLACE INTO gen(id, a) VALUES (2, 7)",
        "DELETE FROM gen WHERE id = 3",
    )


def test_an_application_trigger_writing_another_captured_table(app, replay):
    run(app, replay, "UPDATE kv SET v = 'audited' WHERE id = 1", "UPDATE kv SET v = v || '!'")
    assert app.execute("SELECT count(*) FROM audit").fetchone()[0] == 5


def test_rolled_back_savepoints_and_transactions_leave_nothing(app, replay):
    app.execute("BEGIN")
    app.execute("INSERT INTO kv VALUES (80, 'kept')")
    app.execute("SAVEPOINT s")
    app.execute("REPLACE INTO kv VALUES (1, 'undone')")
    app.execute("REPLACE INTO users(email) VALUES ('a@x')")
    app.execute("ROLLBACK TO s")
    app.execute("RELEASE s")
    app.execute("COMMIT")
    replay.assert_matches(app)
    app.execute("BEGIN")
    app.execute("REPLACE INTO kv VALUES (2, 'undone')")
    app.execute("DELETE FROM users")
    app.execute("ROLLBACK")
    replay.assert_matches(app)


def test_delete_without_where_fires_row_triggers(app, replay):
    """No truncate optimisation once triggers exist: every row's DELETE is logged."""
    before = replay.seq
    run(app, replay, "DELETE FROM kv", "DELETE FROM slots")
    deletes = replay.capture.execute(
        "SELECT count(*) FROM _cutline_changes WHERE seq > ? AND kind = 'D'", (before,)
    ).fetchone()[0]
    assert deletes == 4 + 3


def test_uncaptured_tables_and_installs_are_left_alone(app, replay):
    run(
        app,
        replay,
        "INSERT INTO uncaptured VALUES (1, 'x')",
        "REPLACE INTO uncaptured VALUES (1, 'y')",
    )
    install(replay.capture, "src", CAPTURED)  # a capture restart re-creates the triggers
    run(app, replay, "REPLACE INTO kv VALUES (1, 'after reinstall')")


def test_returning_ctes_row_values_default_values_and_views(app, replay):
    run(
        app,
        replay,
        "INSERT INTO kv VALUES (5, 'five') RETURNING id, v",
        "REPLACE INTO kv VALUES (5, 'five again') RETURNING *",
        "WITH n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) "
        "INSERT OR REPLACE INTO kv SELECT x, 'cte ' || x FROM n",
        "UPDATE users SET (team, seat) = (SELECT 7, 7) WHERE id = 1",
        "UPDATE OR REPLACE users SET (team, seat) = (1, 2) WHERE id = 3",
        "INSERT INTO defaulted DEFAULT VALUES",
        "INSERT INTO kv_view VALUES (1, 'through a view')",  # INSTEAD OF trigger
        "DELETE FROM kv WHERE id = 2 RETURNING id",
    )


def test_check_constraints_under_every_conflict_resolution(app, replay):
    """REPLACE acts as ABORT for CHECK; IGNORE skips the row, after the BEFORE trigger ran."""
    run(app, replay, "INSERT OR IGNORE INTO checked VALUES (1, -1, 'b')")
    for statement in (
        "INSERT OR REPLACE INTO checked VALUES (1, -1, 'b')",
        "UPDATE OR REPLACE checked SET n = -5, u = 'a' WHERE id = 2",
        "INSERT OR FAIL INTO checked VALUES (3, 3, 'c'), (1, -1, 'b')",
    ):
        with pytest.raises(sqlite3.IntegrityError):
            app.execute(statement)
        replay.assert_matches(app)
    run(app, replay, "REPLACE INTO checked VALUES (4, 4, 'b')", "UPDATE checked SET n = n + 1")


def test_upsert_with_several_conflict_targets(app, replay):
    run(
        app,
        replay,
        "INSERT INTO users(id, email, handle) VALUES (1, 'b@x', 'q') "
        "ON CONFLICT(id) DO UPDATE SET handle = 'by id' ON CONFLICT(email) DO NOTHING",
        "INSERT INTO users(id, email, handle) VALUES (90, 'c@x', 'q') "
        "ON CONFLICT(id) DO NOTHING ON CONFLICT(email) DO UPDATE SET handle = 'by email'",
    )


def test_or_rollback_and_or_abort_undo_what_they_must(app, replay):
    app.execute("BEGIN")
    app.execute("INSERT INTO kv VALUES (90, 'rolled back with the transaction')")
    with pytest.raises(sqlite3.IntegrityError):
        app.execute("INSERT OR ROLLBACK INTO kv VALUES (1, 'conflict')")
    assert not app.in_transaction
    replay.assert_matches(app)
    with pytest.raises(sqlite3.IntegrityError):
        app.execute("INSERT OR ABORT INTO kv VALUES (91, 'undone'), (1, 'conflict')")
    replay.assert_matches(app)


def test_a_descending_integer_key_and_set_default_actions(app, replay):
    """INTEGER PRIMARY KEY DESC is not a rowid alias; ON DELETE SET DEFAULT rewrites children."""
    run(
        app,
        replay,
        "REPLACE INTO desc_key(id, v) VALUES (3, 'a')",
        "REPLACE INTO desc_key VALUES (2, 'c', 'z')",
        "UPDATE OR REPLACE desc_key SET id = 2 WHERE id = 3",
        "DELETE FROM parent WHERE id = 1",  # defaulted row 1 -> parent_id 3
    )


def test_writes_through_an_attached_schema(app, replay, tmp_path):
    other = sqlite3.connect(tmp_path / "other.sqlite", isolation_level=None)
    try:
        db = app.execute("PRAGMA database_list").fetchone()[2]
        other.execute("ATTACH DATABASE ? AS p", (db,))
        other.execute("REPLACE INTO p.kv VALUES (1, 'from an attached schema')")
        other.execute("UPDATE OR REPLACE p.users SET email = 'a@x' WHERE id = 2")
        replay.assert_matches(app)
    finally:
        other.close()


# -- refused at install -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ddl", "says"),
    [
        (
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a INT); "
            "CREATE UNIQUE INDEX t_pos ON t(a) WHERE a > 0",
            "partial unique index 't_pos'",
        ),
        (
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT); "
            "CREATE UNIQUE INDEX t_low ON t(lower(a))",
            "unique index 't_low' on an expression",
        ),
        (
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a INT, g INT AS (a + id) UNIQUE)",
            "on the generated column 'g'",
        ),
        (
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL ON CONFLICT REPLACE "
            "DEFAULT 'x' UNIQUE)",
            "NOT NULL ON CONFLICT REPLACE",
        ),
        ("CREATE VIRTUAL TABLE t USING fts5(body)", "has no PRIMARY KEY"),
    ],
)
def test_unique_indexes_that_cannot_be_staged_are_refused(tmp_path, ddl, says):
    db = tmp_path / "p.sqlite"
    setup = sqlite3.connect(db)
    setup.executescript(ddl)
    setup.close()
    conn = connect(db)
    try:
        with pytest.raises(ConfigError, match=says):
            install(conn, "src", ["t"])
        # nothing was installed: the whole install is one transaction
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert not {n for n in names if n.startswith("_cutline_")}
    finally:
        conn.close()


def test_an_application_trigger_writing_its_own_table_keeps_the_outer_replace(app, replay):
    """A trigger created after capture's fires first: its nested INSERT into the same table
    must not discard the rows the outer REPLACE staged."""
    app.execute(
        "CREATE TRIGGER kv_history AFTER INSERT ON kv WHEN NEW.v NOT LIKE 'history%' BEGIN "
        "INSERT INTO kv(v) VALUES ('history of ' || NEW.id); "
        "UPDATE OR REPLACE kv SET id = -NEW.id WHERE id = NEW.id + 1; END"
    )
    run(
        app,
        replay,
        "REPLACE INTO kv VALUES (1, 'replaced; row 2 moves onto -1')",
        "INSERT INTO kv VALUES (10, 'ten'), (20, 'twenty')",
        "REPLACE INTO kv VALUES (9, 'row 10 moves to -9')",
        "REPLACE INTO kv VALUES (-9, 'replaced by hand')",
    )
    assert app.execute("SELECT count(*) FROM kv WHERE v LIKE 'history%'").fetchone()[0] == 5


def test_staged_rows_left_by_ignore_are_forgotten_by_capture(app, replay):
    run(app, replay, "INSERT OR IGNORE INTO kv VALUES (1, 'ignored')")
    assert app.execute("SELECT count(*) FROM _cutline_pending").fetchone()[0] == 1
    forget_changes(replay.capture, replay.seq)
    assert app.execute("SELECT count(*) FROM _cutline_pending").fetchone()[0] == 0
    run(app, replay, "REPLACE INTO kv VALUES (1, 'after forgetting')")


def test_an_application_trigger_updating_the_row_an_update_or_replace_moved(app, replay):
    """A "normalise on update" trigger writing its own table, with cutline's triggers
    re-made after it (as every capture start does), so that they fire first."""
    app.execute(
        "CREATE TRIGGER users_normalise AFTER UPDATE ON users WHEN NEW.email GLOB '*@X' BEGIN "
        "UPDATE OR REPLACE users SET email = lower(NEW.email) WHERE id = NEW.id; END"
    )
    assert triggers_ahead_of_capture(replay.capture, "users") == ["users_normalise"]
    install(replay.capture, "src", CAPTURED)  # a capture start
    assert triggers_ahead_of_capture(replay.capture, "users") == []
    run(
        app,
        replay,
        "UPDATE OR REPLACE users SET handle = 'bob', email = 'Q@X' WHERE id = 1",
        "UPDATE OR REPLACE users SET email = 'C@X' WHERE id = 4",  # nested one replaces c@x
    )
    assert app.execute("SELECT id, email FROM users ORDER BY id").fetchall() == [
        (1, "q@x"),
        (4, "c@x"),
    ]


def test_only_triggers_that_name_their_table_and_fire_first_are_reported(app, replay):
    app.execute(
        "CREATE TRIGGER kv_elsewhere AFTER UPDATE ON kv BEGIN "
        "INSERT INTO uncaptured(v) VALUES (NEW.v); END"
    )
    app.execute(
        'CREATE TRIGGER kv_touch AFTER INSERT ON kv BEGIN UPDATE "KV" SET v = upper(v) '
        "WHERE id = NEW.id; END"
    )
    # kv_audit (from the schema) was created before capture's triggers: it fires after them
    assert triggers_ahead_of_capture(replay.capture, "kv") == ["kv_touch"]
    assert triggers_ahead_of_capture(replay.capture, "uncaptured") == []
