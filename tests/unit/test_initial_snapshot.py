"""Chunked initial snapshots without a broker: SQLite's key order reproduced in Python,
chunks that page through a table exactly, chunk records byte-identical to the change path,
and the marker refusal while a snapshot is under way."""

from __future__ import annotations

import io
import random
import sqlite3
import subprocess
import sys

import fastavro
import pytest

from producers.chunk_records import chunk_records
from producers.initial_snapshot import (
    CHUNK_ROWS,
    InitialSnapshots,
    SnapshotInProgress,
    snapshots_under_way,
    start_snapshot,
)
from producers.key_order import KeyOrder, frontier_literal, frontier_value
from producers.markers import request_marker, request_marker_in_transaction
from producers.operations import TableLayout, to_operations
from producers.sources import Start, StartPlan, install_source
from producers.sqlite_changelog import ChangeRow, describe_table, read_changes
from schemas.codec import MAGIC, OPERATION_HEADER, decode, encode, load_schema, schema_fingerprint
from schemas.operation_codec import encode_operation
from schemas.records import CapturePosition, Operation, OpType, SnapshotProgress


def _connect(tmp_path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "p.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")  # test data only: no fsync per statement
    return conn


def _random_value(rng: random.Random):
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randint(-5, 5) * rng.choice([1, 10**12])
    if kind == 1:
        return rng.choice([0.5, -1.25, 3.0, 1e300, -0.0, float("inf")]) * rng.randint(1, 3)
    if kind == 2:
        return "".join(rng.choice("aAbB zé\u2603'") for _ in range(rng.randint(0, 4)))
    if kind == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 3)))
    return rng.randint(-3, 3)


@pytest.mark.parametrize("collation", ["BINARY", "NOCASE", "RTRIM"])
def test_python_key_order_is_sqlite_order(tmp_path, collation: str) -> None:
    """Keys of every storage class, sorted by SQLite (ORDER BY under the key's collation)
    and by the Python sort keys of their quote() literals, come out in the same order."""
    conn = _connect(tmp_path)
    conn.execute(
        f"CREATE TABLE t (a NOT NULL, b NOT NULL, v, PRIMARY KEY (a COLLATE {collation}, b)) "
        "WITHOUT ROWID"
    )
    rng = random.Random(collation)
    for _ in range(400):
        conn.execute(
            "INSERT OR IGNORE INTO t VALUES (?, ?, 0)", (_random_value(rng), _random_value(rng))
        )
    order = KeyOrder.of(conn, describe_table(conn, "s", "t"))
    assert order is not None and order.collations == (collation, "BINARY")
    by_sqlite = conn.execute(
        f"SELECT quote(a), quote(b) FROM t ORDER BY a COLLATE {collation}, b"
    ).fetchall()
    literal_of = {}
    for a, b in by_sqlite:  # quote() of REALs keeps 15 digits: use capture's own literals
        literal_of[(a, b)] = conn.execute(
            "SELECT CASE WHEN typeof(a) = 'real' THEN printf('%!.20g', a) ELSE quote(a) END, "
            "CASE WHEN typeof(b) = 'real' THEN printf('%!.20g', b) ELSE quote(b) END "
            "FROM t WHERE quote(a) = ? AND quote(b) = ?",
            (a, b),
        ).fetchone()
    in_python = sorted(by_sqlite, key=lambda k: order.sort_key_of_literals(literal_of[k]))
    assert [order.sort_key_of_literals(literal_of[k]) for k in in_python] == [
        order.sort_key_of_literals(literal_of[k]) for k in by_sqlite
    ]
    # native values (as a chunk reads them) rank as their literals do
    natives = conn.execute(f"SELECT a, b FROM t ORDER BY a COLLATE {collation}, b").fetchall()
    for (a, b), literals in zip(natives, by_sqlite, strict=True):
        frontier = (frontier_literal(a), frontier_literal(b))
        assert (frontier_value(frontier[0]), frontier_value(frontier[1])) == (a, b)
        assert order.sort_key_of_frontier(frontier) == order.sort_key_of_literals(
            literal_of[literals]
        )


def test_chunks_page_through_a_table_exactly(tmp_path) -> None:
    """Chunks read after each other's last key cover every row once, in key order, for a
    composite TEXT key with NOCASE and for an INTEGER PRIMARY KEY."""
    conn = _connect(tmp_path)
    conn.execute(
        "CREATE TABLE c (name TEXT NOT NULL, n INTEGER NOT NULL, v, "
        "PRIMARY KEY (name COLLATE NOCASE, n))"
    )
    conn.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, v)")
    conn.execute("CREATE TABLE n (name TEXT PRIMARY KEY, v)")  # its key may hold NULL
    conn.executemany("INSERT INTO n VALUES (?, ?)", [(f"k{i}", i) for i in range(200)])
    rows = [(f"{'aB'[i % 2]}{i % 7}", i, i) for i in range(300)]
    conn.executemany("INSERT INTO c VALUES (?, ?, ?)", rows)
    conn.executemany("INSERT INTO r VALUES (?, ?)", [(i * 3, i) for i in range(300)])
    snapshots = InitialSnapshots("s")
    for table, total in (("c", 300), ("r", 300), ("n", 200)):
        definition = describe_table(conn, "s", table)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _cutline_snapshots (source TEXT NOT NULL, tbl TEXT "
            "NOT NULL, id TEXT NOT NULL, started_seq INTEGER NOT NULL, rows INTEGER NOT NULL "
            "DEFAULT 0, PRIMARY KEY (source, tbl))"
        )
        conn.execute("INSERT INTO _cutline_snapshots VALUES ('s', ?, ?, 0, 0)", (table, table))
        snapshots.load(conn, [])
        seen = []
        while snapshots.under_way(table):
            chunk = snapshots.read_chunk(conn, {table: definition}, 0, set(), limit=64)
            assert chunk is not None
            seen += [r[: len(definition.columns)] for r in chunk.rows]
            snapshots.chunk_published(chunk)
        assert len(seen) == total == len(set(seen))
        expected = conn.execute(
            f"SELECT * FROM {table} ORDER BY "
            + {"c": "name COLLATE NOCASE, n", "r": "id", "n": "name"}[table]
        ).fetchall()
        assert seen == expected
        conn.execute("DELETE FROM _cutline_snapshots")


def test_chunk_records_are_what_the_change_path_sends(tmp_path) -> None:
    """A chunk row's value is encode_operation's bytes for the same INSERT, and its Kafka
    key is the change path's key for the same row (so later changes share a partition)."""
    conn = _connect(tmp_path)
    conn.execute("CREATE TABLE k (a TEXT NOT NULL, b REAL NOT NULL, x BLOB, y, PRIMARY KEY (a, b))")
    conn.execute("CREATE TABLE i (id INTEGER PRIMARY KEY, t TEXT, r REAL, z BLOB)")
    values = [
        ("o'ne\x00", 591027.4716637121, b"\x00\xff", None),
        ("\u2603" * 40, -1.5, None, 2**62),
        ("b", 3.0, b"", "x" * 70),
    ]
    conn.executemany("INSERT INTO k VALUES (?, ?, ?, ?)", values)
    conn.executemany(
        "INSERT INTO i VALUES (?, ?, ?, ?)",
        [(-7, "t", 0.1, b"z"), (2**40, None, None, None)],
    )
    for table in ("k", "i"):
        definition = describe_table(conn, "src", table)
        layout = TableLayout.of(definition)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _cutline_snapshots (source TEXT NOT NULL, tbl TEXT "
            "NOT NULL, id TEXT NOT NULL, started_seq INTEGER NOT NULL, rows INTEGER NOT NULL "
            "DEFAULT 0, PRIMARY KEY (source, tbl))"
        )
        conn.execute("INSERT INTO _cutline_snapshots VALUES ('src', ?, ?, 0, 0)", (table, table))
        snapshots = InitialSnapshots("src")
        snapshots.load(conn, [])
        chunk = snapshots.read_chunk(conn, {table: definition}, 42, set())
        assert chunk is not None and chunk.last
        keys, values = chunk_records(chunk, "src", OPERATION_HEADER, 1234)
        records = list(zip(keys, values, strict=True))
        # the change path: the same rows through the change log's text images
        from producers.sqlite_changelog import image_sql

        images = conn.execute(
            f"SELECT {image_sql(definition, 't')} FROM {table} AS t ORDER BY rowid"
        ).fetchall()
        by_key = dict(records)
        assert len(by_key) == len(images)
        for (image,) in images:
            row = ChangeRow(42, "I", table, None, image, None, 1234)
            ((key, op),) = to_operations(row, layout, "src")
            assert by_key[key] == encode_operation(op, OPERATION_HEADER)
            assert decode(by_key[key]) == op
        conn.execute("DELETE FROM _cutline_snapshots")


def test_position_carries_snapshot_progress_and_old_positions_still_decode() -> None:
    position = CapturePosition(
        "s", 9, 2, 4, (1, 2, 3, 4), "db", 1, (SnapshotProgress("t", "x", ("i:5", "t:61"), 7),)
    )
    assert decode(encode(position)) == position
    old = load_schema("capture_position.v2.avsc")
    out = io.BytesIO()
    datum = {"source": "s", "seq": 9, "marker_id": 2, "partitions": 1, "counts": [0]}
    fastavro.schemaless_writer(
        out, fastavro.parse_schema(old), {**datum, "database_id": "d", "incarnation": 3}
    )
    decoded = decode(MAGIC + schema_fingerprint(old) + out.getvalue())
    assert isinstance(decoded, CapturePosition) and decoded.snapshots == ()
    assert decoded.incarnation == 3


def test_install_records_big_tables_and_copies_small_ones(tmp_path) -> None:
    """A fresh source's install writes no row of a big table to the change log (capture
    snapshots it in chunks) and copies a small one as before; markers wait, then refuse."""
    conn = _connect(tmp_path)
    conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE small (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO big VALUES (?, ?)", [(i, "v") for i in range(CHUNK_ROWS + 1)])
    conn.executemany("INSERT INTO small VALUES (?, ?)", [(i, "v") for i in range(10)])
    conn.execute("BEGIN IMMEDIATE")
    install_source(conn, "s", ["big", "small"], StartPlan(Start.FRESH, 0), 0)
    conn.execute("COMMIT")
    logged = read_changes(conn, 0, 100_000, source="s")
    assert {r.table for r in logged} == {"small"} and len(logged) == 10
    assert snapshots_under_way(conn) == [("s", "big", 0)]
    with pytest.raises(SnapshotInProgress, match="big for source 's'"):
        request_marker(conn, lock_timeout_s=0.3)
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(SnapshotInProgress, match="under way"):
        request_marker_in_transaction(conn)
    conn.execute("ROLLBACK")
    # the same table, too small for chunks, is not recorded at all
    assert not start_snapshot(conn, "t", describe_table(conn, "t", "small"), 0)
    # a key that may hold NULL: chunked unless a row holds one (no chunk would read it)
    conn.execute("CREATE TABLE named (name TEXT PRIMARY KEY, v)")
    conn.executemany("INSERT INTO named VALUES (?, 1)", [(f"k{i}",) for i in range(20)])
    named = describe_table(conn, "t", "named")
    assert start_snapshot(conn, "t", named, 0, chunk_rows=10)
    conn.execute("INSERT INTO named VALUES (NULL, 1)")
    assert not start_snapshot(conn, "u", named, 0, chunk_rows=10)
    snapshots = InitialSnapshots("t")
    snapshots.load(conn, [])
    assert snapshots.publishes(conn, "named", ["NULL"])  # such a row reaches it as changes
    assert not snapshots.publishes(conn, "named", ["'k1'"])


def test_a_moved_key_is_judged_half_by_half(tmp_path) -> None:
    """An UPDATE moving a row from a covered key to one beyond F keeps only its DELETE."""
    conn = _connect(tmp_path)
    conn.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, v)")
    conn.executemany("INSERT INTO r VALUES (?, ?)", [(i, i) for i in range(10)])
    conn.execute(
        "CREATE TABLE _cutline_snapshots (source TEXT NOT NULL, tbl TEXT NOT NULL, id TEXT "
        "NOT NULL, started_seq INTEGER NOT NULL, rows INTEGER NOT NULL DEFAULT 0, "
        "PRIMARY KEY (source, tbl))"
    )
    conn.execute("INSERT INTO _cutline_snapshots VALUES ('s', 'r', 'x', 0, 0)")
    definition = describe_table(conn, "s", "r")
    snapshots = InitialSnapshots("s")
    snapshots.load(conn, [SnapshotProgress("r", "x", (frontier_literal(4),), 5)])
    layout = TableLayout.of(definition)
    row = ChangeRow(7, "U", "r", "2,2", "8,2", None, 1)
    kept = snapshots.keep(conn, row, layout, to_operations(row, layout, "s"))
    assert [op.op for _, op in kept] == [OpType.DELETE]
    back = ChangeRow(8, "U", "r", "8,2", "3,2", None, 1)
    kept = snapshots.keep(conn, back, layout, to_operations(back, layout, "s"))
    assert [(op.op, op.key) for _, op in kept] == [(OpType.INSERT, {"id": 3})]
    assert isinstance(kept[0][1], Operation)


def test_whole_column_encodings_equal_the_per_value_one() -> None:
    from producers.chunk_records import _value, column_bytes

    rng = random.Random(4)
    edges = [0, -1, 63, 64, -65, 8191, -8193, 2**63 - 1, -(2**63)]
    ints = (*edges, *(rng.randint(-(2**62), 2**62) for _ in range(500)))
    floats = (*(rng.uniform(-1e9, 1e9) for _ in range(200)), float("inf"), -0.0)
    strings = (*("é" * rng.randint(0, 3000) for _ in range(40)), "")
    for column in (ints, floats, strings, (1, None, "x", b"\x00", 2.5)):
        assert column_bytes(column) == [_value(v) for v in column]
    with pytest.raises(ValueError, match="does not fit an Avro long"):
        column_bytes((1, 2**64))


def test_mark_during_a_snapshot_waits_then_says_why_in_one_line(tmp_path) -> None:
    conn = _connect(tmp_path)
    conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO big VALUES (?, ?)", [(i, "v") for i in range(11)])
    conn.execute("BEGIN IMMEDIATE")
    install_source(conn, "s", ["big"], StartPlan(Start.FRESH, 0), 0, chunk_rows=10)
    conn.execute("COMMIT")
    conn.close()
    result = subprocess.run(
        [sys.executable, "-m", "cutline.cli", "mark", "--db", str(tmp_path / "p.sqlite"),
         "--lock-timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "initial snapshot is under way (big for source 's'" in lines[0]
