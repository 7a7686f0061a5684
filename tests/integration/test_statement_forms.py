"""Statement forms beyond plain INSERT/UPDATE/DELETE, end to end on a real broker.

One pipeline for the module: the application runs REPLACE in its forms (on the key,
through UNIQUE columns into another partition, two rows at once, UPDATE OR REPLACE, ON
CONFLICT REPLACE in the DDL), upserts, INSERT OR IGNORE, key changes onto taken keys,
foreign-key cascades, generated columns, savepoints rolled back, and a DELETE without
WHERE, with ``recursive_triggers`` off on one connection and on in another. A marker is
cut after each step, and every backup is compared with the primary recorded at that cut:
its DuckDB tables, its Avro files and a ``cutline restore`` (generated columns included).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator

import pytest

from producers.markers import MarkerTicket, request_marker_in_transaction
from producers.operations import message_key, partition_for
from producers.sqlite_changelog import quote_identifier
from schemas.records import Operation, OpType
from tests.faults.checker import ops_records
from tests.integration.pipeline import Pipeline, Rows, avro_rows, backup_rows, table_rows

PARTITIONS = 4
SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT UNIQUE, handle TEXT,
                    team INT, seat INT, UNIQUE (team, seat));
CREATE UNIQUE INDEX users_handle ON users(handle COLLATE NOCASE);
CREATE TABLE codes (code TEXT PRIMARY KEY COLLATE NOCASE, label TEXT UNIQUE ON CONFLICT REPLACE,
                    n INT) WITHOUT ROWID;
CREATE TABLE colrep (id INTEGER PRIMARY KEY ON CONFLICT REPLACE, u TEXT UNIQUE ON CONFLICT REPLACE,
                     v INT);
CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT UNIQUE);
CREATE TABLE child (id INTEGER PRIMARY KEY,
                    parent_id INT REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
                    v TEXT);
CREATE TABLE gen (id INTEGER PRIMARY KEY, a INT, twice INT GENERATED ALWAYS AS (a * 2) VIRTUAL,
                  label TEXT GENERATED ALWAYS AS ('n' || a) STORED);
CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);
CREATE TRIGGER codes_audit AFTER UPDATE ON codes BEGIN
    INSERT INTO audit(what) VALUES ('code ' || NEW.code);
END;
INSERT INTO codes VALUES ('ab', 'first', 1), ('cd', 'second', 2);
INSERT INTO colrep VALUES (1, 'p', 1), (2, 'q', 2), (3, 'r', 3);
INSERT INTO parent VALUES (1, 'one'), (2, 'two'), (3, 'three');
INSERT INTO child VALUES (10, 1, 'a'), (11, 1, 'b'), (12, 2, 'c'), (13, 3, 'd');
INSERT INTO gen(id, a) VALUES (1, 1), (2, 2);
"""
TABLES = ["users", "codes", "colrep", "parent", "child", "gen", "audit"]


def columns(conn: sqlite3.Connection, table: str, *, generated: bool) -> list[str]:
    """The table's columns; with ``generated``, its generated columns too."""
    pragma = "table_xinfo" if generated else "table_info"
    info = conn.execute(f"PRAGMA {pragma}({quote_identifier(table)})").fetchall()
    return [r[1] for r in info if r[6] != 1] if generated else [r[1] for r in info]


class StatementPipeline(Pipeline):
    """The harness's pipeline on this module's tables; the oracle keeps generated columns."""

    full: dict[int, Rows]

    def state(self, conn: sqlite3.Connection) -> Rows:
        return {t: table_rows(conn, t, columns(conn, t, generated=False)) for t in TABLES}

    def cut(self, conn: sqlite3.Connection) -> MarkerTicket:
        conn.execute("BEGIN IMMEDIATE")
        try:
            state = self.state(conn)
            full = {t: table_rows(conn, t, columns(conn, t, generated=True)) for t in TABLES}
            ticket = request_marker_in_transaction(conn, note="statement forms")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.oracle[ticket.marker_id] = state
        self.full[ticket.marker_id] = full
        self.tickets[ticket.marker_id] = ticket
        return ticket

    def _start_capture(self, partitions: int, *extra: str):
        return self.start(
            "capture", "capture", "--db", str(self.db), "--tables", ",".join(TABLES),
            "--partitions", str(partitions), "--source", self.source,
            "--bootstrap-servers", self.bootstrap, *extra,
        )  # fmt: skip


def app_connection(pipeline: Pipeline, *, recursive: bool) -> sqlite3.Connection:
    conn = pipeline.connect()
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA recursive_triggers = {'ON' if recursive else 'OFF'}")
    return conn


def partition_of(table: str, key: int) -> int:
    return partition_for(message_key(table, [str(key)]), PARTITIONS)


def ids_in_two_partitions() -> tuple[int, int]:
    """A victim id and a newcomer id whose users rows live in different partitions."""
    victim = 101
    newcomer = next(
        i for i in range(200, 300) if partition_of("users", i) != partition_of("users", victim)
    )
    return victim, newcomer


def steps(pipeline: StatementPipeline) -> list[str]:
    """Run every step on the primary, each followed by a marker; return what each did."""
    off = app_connection(pipeline, recursive=False)
    on = app_connection(pipeline, recursive=True)
    victim, newcomer = ids_in_two_partitions()
    done = []
    try:
        for app, label in ((off, "off"), (on, "on")):
            base = 0 if app is off else 1000
            app.executescript(
                f"""
                INSERT INTO users VALUES ({victim + base}, 'v{base}@x', 'vic{base}', {base}, 1);
                INSERT INTO users VALUES ({victim + base + 1}, 'w{base}@x', 'wil{base}', {base}, 2);
                INSERT INTO users VALUES ({victim + base + 2}, 'x{base}@x', 'xan{base}', {base}, 3);
                """
            )
            # REPLACE through a UNIQUE column, the victim in another partition than the row
            app.execute(
                "REPLACE INTO users VALUES (?, ?, 'new', ?, 9)",
                (newcomer + base, f"v{base}@x", base + 500),
            )
            # one REPLACE removes two rows: by handle (NOCASE) and by (team, seat)
            app.execute(
                "REPLACE INTO users(email, handle, team, seat) VALUES ('two@' || ?, ?, ?, 3)",
                (base, f"WIL{base}", base),
            )
            app.execute("INSERT OR REPLACE INTO users VALUES (?, 'k@' || ?, 'k', NULL, NULL)",
                        (newcomer + base, base))  # fmt: skip
            pipeline.cut(off)
            done.append(f"REPLACE forms, recursive_triggers {label}")

        on.execute("UPDATE OR REPLACE codes SET code = 'CD' WHERE code = 'ab'")
        off.execute("INSERT INTO codes VALUES ('ef', 'first', 5)")  # UNIQUE ON CONFLICT REPLACE
        off.execute("UPDATE OR REPLACE colrep SET id = 2 WHERE id = 1")
        off.execute("INSERT INTO colrep VALUES (3, 'p', 30)")  # removes two rows
        off.execute("INSERT OR IGNORE INTO colrep VALUES (NULL, 'p', 1)")  # ignored
        with pytest.raises(sqlite3.IntegrityError):
            off.execute("UPDATE parent SET name = 'two' WHERE id = 1")
        pipeline.cut(off)
        done.append("UPDATE OR REPLACE, ON CONFLICT REPLACE in the DDL, IGNORE")

        off.execute("INSERT INTO codes VALUES ('gh', 'third', 3) ON CONFLICT DO NOTHING")
        off.execute("INSERT INTO codes VALUES ('GH', 'x', 0) ON CONFLICT DO UPDATE SET n = n + 1")
        off.execute(
            "INSERT INTO gen(id, a) VALUES (1, 5), (3, 3) ON CONFLICT(id) DO UPDATE SET a = 50"
        )
        off.execute("REPLACE INTO gen(id, a) VALUES (2, 7)")
        pipeline.cut(off)
        done.append("upserts, generated columns")

        off.execute("DELETE FROM parent WHERE id = 1")  # cascades to child
        off.execute("UPDATE parent SET id = 20 WHERE id = 2")  # ON UPDATE CASCADE
        off.execute("REPLACE INTO parent VALUES (30, 'three')")  # replaces 3: cascades
        on.execute("REPLACE INTO parent VALUES (20, 'twenty')")
        pipeline.cut(off)
        done.append("foreign-key cascades through REPLACE")

        off.execute("BEGIN")
        off.execute("INSERT INTO users(email) SELECT 'bulk' || id || '@x' FROM users")
        off.execute("SAVEPOINT s")
        off.execute("REPLACE INTO codes VALUES ('zz', 'first', 0)")
        off.execute("DELETE FROM child")
        off.execute("ROLLBACK TO s")
        off.execute("RELEASE s")
        off.execute("COMMIT")
        off.execute("DELETE FROM colrep")
        pipeline.cut(off)
        done.append("INSERT ... SELECT, savepoint rolled back, DELETE without WHERE")
    finally:
        off.close()
        on.close()
    return done


@pytest.fixture(scope="module")
def forms(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StatementPipeline]:
    root = tmp_path_factory.mktemp("statement-forms")
    with StatementPipeline(kafka, f"it-forms-{uuid.uuid4().hex[:8]}", root) as pipeline:
        pipeline.full = {}
        conn = sqlite3.connect(pipeline.db)
        conn.executescript(SCHEMA)
        conn.close()
        capture = pipeline.start_capture(partitions=PARTITIONS)
        replicator = pipeline.start_replicator("replicate")
        assert len(steps(pipeline)) == 6
        pipeline.wait_for_backups(sorted(pipeline.oracle), deadline_s=120)
        for process in (capture, replicator):
            assert process.stop() == 0, process.tail()
        yield pipeline


def test_a_row_replaced_through_a_unique_column_is_deleted_in_its_own_partition(
    forms: StatementPipeline,
) -> None:
    """The REPLACE's DELETE of the victim travels in the victim's partition, before the
    newcomer's INSERT (in another partition) in commit order."""
    victim, newcomer = ids_in_two_partitions()
    ops = [
        (p, r) for p, _, r in ops_records(forms.bootstrap, forms.source, PARTITIONS)
        if isinstance(r, Operation) and r.table == "users"
    ]  # fmt: skip
    deletes = [(p, r.seq) for p, r in ops if r.op is OpType.DELETE and r.key == {"id": victim}]
    inserts = [(p, r.seq) for p, r in ops if r.op is OpType.INSERT and r.key == {"id": newcomer}]
    assert len(deletes) == 1, f"the victim's DELETE should be published once: {deletes}"
    assert inserts, "the newcomer's INSERT should be published"
    (victim_partition, delete_seq), (newcomer_partition, insert_seq) = deletes[0], inserts[0]
    assert victim_partition == partition_of("users", victim)
    assert newcomer_partition == partition_of("users", newcomer) != victim_partition
    assert delete_seq < insert_seq


def test_every_backup_equals_the_primary_at_its_cut(forms: StatementPipeline) -> None:
    published = forms.published()
    assert sorted(published) == sorted(forms.oracle)
    for marker_id, expected in sorted(forms.oracle.items()):
        in_duckdb = backup_rows(published[marker_id])
        for table in TABLES:
            assert in_duckdb[table] == expected[table], (
                f"backup {marker_id} table {table} differs from the primary at its cut"
            )
        in_avro, _ = avro_rows(published[marker_id])
        assert in_avro == in_duckdb, f"backup {marker_id}: Avro files and DuckDB disagree"


def test_every_restore_equals_the_primary_at_its_cut(forms: StatementPipeline) -> None:
    for marker_id, expected in sorted(forms.full.items()):
        target = forms.root / f"restore-{marker_id}.sqlite"
        result = forms.cli(
            "restore", "--backups", str(forms.backups), "--source", forms.source,
            "--marker", str(marker_id), "--to", str(target),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["marker_id"] == marker_id
        restored = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
        try:
            for table in TABLES:
                got = table_rows(restored, table, columns(restored, table, generated=True))
                assert got == expected[table], (
                    f"restore of marker {marker_id}: table {table} (generated columns "
                    "included) differs from the primary at its cut"
                )
        finally:
            restored.close()


def test_the_replaced_rows_are_gone_from_the_backups(forms: StatementPipeline) -> None:
    """Not only equal to the oracle: the oracle itself shows the REPLACE deletions."""
    first = forms.published()[min(forms.oracle)]
    users = backup_rows(first)["users"]
    emails = [row[1] for row in users]
    assert "v0@x" not in emails and "w0@x" not in emails and "x0@x" not in emails
    assert len(emails) == len(set(emails))
