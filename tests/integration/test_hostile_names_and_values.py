"""Names that try to escape quoting, and TEXT that SQLite's quote() or UTF-8 cannot carry,
captured end to end: replica, DuckDB backup, Avro files and `cutline query`."""

from __future__ import annotations

import json
import sqlite3

import duckdb
import fastavro

from producers.markers import request_marker_in_transaction
from producers.sqlite_changelog import quote_identifier
from tests.integration.ops_log import replica_rows
from tests.integration.pipeline import Pipeline, avro_rows, backup_rows, wait_until

HOSTILE_TABLE = 'x"; DROP TABLE y; --'
HOSTILE_COLUMN = "c\"; DROP TABLE y; --'"
PARTITIONS = 2


def _primary(pipeline: Pipeline) -> None:
    t, c = quote_identifier(HOSTILE_TABLE), quote_identifier(HOSTILE_COLUMN)
    conn = sqlite3.connect(pipeline.db)
    conn.executescript(
        f"""
        CREATE TABLE {t} (id INTEGER PRIMARY KEY, {c} TEXT);
        CREATE TABLE y (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE odd (k TEXT PRIMARY KEY, v);
        INSERT INTO y VALUES (1, 'still here');
        """
    )
    conn.execute(f"INSERT INTO {t} VALUES (1, ?)", ("'); DROP TABLE y; --",))
    # existing rows, captured by the install: NUL inside keys and values, invalid UTF-8
    conn.executemany("INSERT INTO odd VALUES (?, ?)", [("a\x00b", "x\x00y"), ("a\x00c", "c")])
    conn.execute("INSERT INTO odd VALUES (CAST(x'ff61' AS TEXT), CAST(x'c328' AS TEXT))")
    conn.commit()
    conn.close()


def _changes(conn: sqlite3.Connection) -> None:
    """Changes after the install, through the triggers."""
    t, c = quote_identifier(HOSTILE_TABLE), quote_identifier(HOSTILE_COLUMN)
    conn.execute(f"INSERT INTO {t} VALUES (2, 'two')")
    conn.execute(f"UPDATE {t} SET {c} = ? WHERE id = 1", ('"; DROP TABLE y; --',))
    conn.execute("INSERT INTO odd VALUES (?, ?)", ("nul\x00key", "\x00"))
    conn.execute("UPDATE odd SET v = ? WHERE k = ?", ("z\x00z", "a\x00b"))
    conn.execute("DELETE FROM odd WHERE k = ?", ("a\x00c",))
    conn.execute("INSERT INTO odd VALUES ('plain', CAST(x'80' AS TEXT))")
    conn.execute("UPDATE odd SET v = 'fixed' WHERE k = CAST(x'ff61' AS TEXT)")
    conn.execute("INSERT INTO y VALUES (2, 'also here')")


def test_hostile_names_and_awkward_text_survive_end_to_end(pipeline: Pipeline) -> None:
    _primary(pipeline)
    tables = [HOSTILE_TABLE, "y", "odd"]
    capture = pipeline.start(
        "capture", "capture", "--db", str(pipeline.db), "--tables", ",".join(tables),
        "--partitions", str(PARTITIONS), "--source", pipeline.source,
        "--bootstrap-servers", pipeline.bootstrap,
    )  # fmt: skip
    pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    wait_until(
        lambda: (
            pipeline.check_alive()
            or conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = '_cutline_markers'"
            ).fetchone()
        ),
        60,
        "capture to install",
    )
    _changes(conn)
    conn.execute("BEGIN IMMEDIATE")
    ticket = request_marker_in_transaction(conn)
    conn.execute("COMMIT")
    backup = pipeline.wait_for_backups([ticket.marker_id])[ticket.marker_id]

    hostile_rows = [(1, '"; DROP TABLE y; --'), (2, "two")]
    y_rows = [(1, "still here"), (2, "also here")]
    # NUL survives exactly; TEXT that is not UTF-8 is kept byte for byte (as a BLOB)
    odd_exact = sorted(
        [("a\x00b", "z\x00z"), ("nul\x00key", "\x00"), ("plain", b"\x80"), (b"\xffa", "fixed")],
        key=repr,
    )
    names = {HOSTILE_TABLE: ["id", HOSTILE_COLUMN], "y": ["id", "v"], "odd": ["k", "v"]}
    replica = replica_rows(pipeline.replica, pipeline.source, PARTITIONS, names)
    assert replica == {HOSTILE_TABLE: hostile_rows, "y": y_rows, "odd": odd_exact}

    in_duckdb = backup_rows(backup)
    assert in_duckdb[HOSTILE_TABLE] == hostile_rows
    assert in_duckdb["y"] == y_rows
    # a column mixing TEXT and bytes is kept as text in the backup, bytes written as hex
    assert in_duckdb["odd"] == sorted(
        [("a\x00b", "z\x00z"), ("nul\x00key", "\x00"), ("plain", "80"), ("ff61", "fixed")],
        key=repr,
    )
    in_avro, headers = avro_rows(backup)
    assert in_avro == in_duckdb
    assert json.loads(headers[HOSTILE_TABLE]["cutline.columns"]) == ["id", HOSTILE_COLUMN]
    with open(backup.avro_path(HOSTILE_TABLE), "rb") as f:
        fields = fastavro.reader(f).writer_schema["fields"]
    assert [f["cutline.column"] for f in fields] == ["id", HOSTILE_COLUMN]
    assert backup.avro_path(HOSTILE_TABLE).parent == backup.path / "avro"
    with duckdb.connect(str(backup.duckdb_path), read_only=True) as db:
        stored = {r[0] for r in db.execute("SELECT table_name FROM _cutline_tables").fetchall()}
    assert stored == set(tables)

    query = f"SELECT {quote_identifier(HOSTILE_COLUMN)} AS v FROM {quote_identifier(HOSTILE_TABLE)}"
    result = pipeline.cli(
        "query", "--backups", str(pipeline.backups), "--source", pipeline.source, "--json", query
    )
    assert result.returncode == 0, result.stderr
    assert sorted(r["v"] for r in json.loads(result.stdout)) == ['"; DROP TABLE y; --', "two"]

    # nothing was dropped anywhere, and the odd text was reported, not hidden
    assert conn.execute("SELECT count(*) FROM y").fetchone()[0] == 2
    assert "not valid UTF-8" in capture.log.read_text()
    pipeline.check_alive()
    conn.close()
