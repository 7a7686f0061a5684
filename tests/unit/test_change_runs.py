"""Runs of change rows encoded a column at a time give exactly the per-row builder's records.

The change rows are logged by cutline's own triggers on a real SQLite primary, from random
statements over hostile values, so the images are the ones capture reads.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from test_row_images import HOSTILE

from producers.change_runs import RunEncoder
from producers.chunk_records import varints
from producers.operations import RecordBuilder, TableLayout
from producers.sqlite_changelog import ChangeRow, connect, install, read_changes
from schemas.codec import OPERATION_HEADER
from schemas.operation_codec import varint

TABLES = {
    "composite": "CREATE TABLE composite(id INTEGER, k, a, b REAL, c TEXT, PRIMARY KEY (id, k))",
    "alias": "CREATE TABLE alias(id INTEGER PRIMARY KEY, owner TEXT, balance REAL, blob BLOB)",
    "words": "CREATE TABLE words(w TEXT PRIMARY KEY, n INTEGER, x) WITHOUT ROWID",
}


class CountingBuilder(RecordBuilder):
    """The per-row builder, counting the rows handed to it."""

    calls = 0

    def records(self, change):
        CountingBuilder.calls += 1
        return super().records(change)


def _value(rng: random.Random) -> object:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.choice(HOSTILE)
    if kind == 1:
        return rng.randint(-(2**63), 2**63 - 1)
    if kind == 2:
        return rng.randint(-100, 100)
    if kind == 3:
        return rng.uniform(-1, 1) * 10 ** rng.randint(-300, 300)
    if kind == 4:
        return "".join(rng.choice("ab,'\"[]{}\\\x00\n é0.eE-") for _ in range(rng.randrange(70)))
    if kind == 5:
        return rng.randbytes(rng.randrange(6))
    return None


def _statements(app: sqlite3.Connection, table: str, rng: random.Random, count: int) -> None:
    columns = [r[1] for r in app.execute(f"PRAGMA table_info({table})")]
    keys = [r[1] for r in app.execute(f"PRAGMA table_info({table})") if r[5]]
    for _ in range(count):
        action = rng.randrange(10)
        row = [_value(rng) for _ in columns]
        if table == "alias":
            row[0] = rng.randint(1, 60)
        if table == "words":
            row[0] = rng.choice(["a", "b", "c", "é", "d'e", "[1]", "x" * 70])
        try:
            if action < 4:
                marks = ", ".join("?" * len(columns))
                app.execute(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", row)
            elif action < 8:
                column = rng.choice([c for c in columns if c not in keys])
                app.execute(
                    f"UPDATE {table} SET {column} = ? WHERE rowid IN "
                    f"(SELECT rowid FROM {table} ORDER BY random() LIMIT 3)"
                    if table != "words"
                    else f"UPDATE {table} SET {column} = ? WHERE w = ?",
                    [row[columns.index(column)]] + ([] if table != "words" else [row[0]]),
                )
            elif action < 9:  # a key change: a DELETE and an INSERT
                key = keys[0]
                app.execute(
                    f"UPDATE OR IGNORE {table} SET {key} = ? WHERE {key} = "
                    f"(SELECT {key} FROM {table} ORDER BY random() LIMIT 1)",
                    [row[columns.index(key)]],
                )
            else:
                app.execute(
                    f"DELETE FROM {table} WHERE rowid IN "
                    f"(SELECT rowid FROM {table} ORDER BY random() LIMIT 2)"
                    if table != "words"
                    else f"DELETE FROM {table} WHERE w = ?",
                    [] if table != "words" else [row[0]],
                )
        except sqlite3.IntegrityError:
            pass  # a NULL in a NOT NULL key, say: the statement changed nothing


@pytest.fixture
def primary(tmp_path: Path):
    path = tmp_path / "primary.sqlite"
    app = sqlite3.connect(path, isolation_level=None)
    for ddl in TABLES.values():
        app.execute(ddl)
    conn = connect(path)
    yield conn, app
    conn.close()
    app.close()


def _layouts(conn) -> dict[str, TableLayout]:
    return {d.table: TableLayout.of(d) for d in install(conn, "src", list(TABLES))}


def _assert_same_records(layout: TableLayout, rows: list[ChangeRow]) -> int:
    """The run's records equal the per-row builder's; how many rows went row by row."""
    reference = [RecordBuilder(layout, "src", OPERATION_HEADER).records(r) for r in rows]
    CountingBuilder.calls = 0
    encoder = RunEncoder(CountingBuilder(layout, "src", OPERATION_HEADER), "src", OPERATION_HEADER)
    assert list(encoder.records(rows)) == reference
    return CountingBuilder.calls


@pytest.mark.parametrize("seed", range(6))
def test_random_statements_encode_as_the_per_row_builder_does(primary, seed):
    conn, app = primary
    layouts = _layouts(conn)
    rng = random.Random(seed)
    for table in TABLES:
        _statements(app, table, rng, 300)
    rows = [r for r in read_changes(conn, 0, 1_000_000) if r.table in TABLES]
    by_row = 0
    for table, layout in layouts.items():
        mine = [r for r in rows if r.table == table]
        assert len(mine) > 100
        by_row += _assert_same_records(layout, mine)
    assert by_row < len(rows) / 4  # most rows took the column path (key changes do not)


def test_rows_the_column_path_does_not_take_go_row_by_row_in_place(primary):
    """Literal images, TEXT that is not UTF-8, an image with a value too many: each row is
    the builder's, in its place between rows the column path encodes."""
    conn, app = primary
    layout = _layouts(conn)["alias"]
    app.execute("INSERT INTO alias VALUES (1, 'a', 1.5, x'00')")
    app.execute("INSERT INTO alias VALUES (2, CAST(x'ff' AS TEXT), 2.5, NULL)")  # not UTF-8
    app.execute("UPDATE alias SET balance = 3.25 WHERE id = 1")
    app.execute("DELETE FROM alias WHERE id = 1")
    logged = read_changes(conn, 0, 1000)
    literal = ChangeRow(
        logged[-1].seq + 1, "I", "alias", None, "7,'seven',7.5,X'07'", None, 9
    )  # the earlier literal format
    rows = [*logged, literal]
    assert any(r.raw_text for r in rows)
    assert _assert_same_records(layout, rows) == 2  # the raw TEXT row and the literal one


def test_an_image_the_builder_refuses_is_refused_the_same_way(primary):
    conn, app = primary
    layout = _layouts(conn)["alias"]
    app.execute("INSERT INTO alias VALUES (1, 'a', 1.5, NULL)")
    (row,) = read_changes(conn, 0, 1000)
    assert row.after is not None
    bad = ChangeRow(row.seq, row.kind, row.table, None, row.after[:-1] + ",5]", None, 1)
    encoder = RunEncoder(RecordBuilder(layout, "src", OPERATION_HEADER), "src", OPERATION_HEADER)
    with pytest.raises(ValueError, match="has 5 values for 4 columns"):
        list(encoder.records([row, bad]))


def test_column_varints_are_avro_longs():
    rng = random.Random(3)
    values = [0, 1, -1, 63, 64, -65, 2**63 - 1, -(2**63)]
    values += [rng.randint(-(2**63), 2**63 - 1) >> rng.randrange(64) for _ in range(2000)]
    assert varints(values) == [varint(v) for v in values]


def test_a_ledger_workload_takes_every_column_path(primary):
    """One storage class per column (the common case): integers, texts and reals are each
    encoded for the whole column at once, long texts and big integers included."""
    conn, app = primary
    layout = _layouts(conn)["alias"]
    rng = random.Random(9)
    app.executemany(
        "INSERT INTO alias VALUES (?, ?, ?, ?)",
        [
            (i, "owner-" + "x" * rng.randrange(100), rng.uniform(-1e6, 1e6), b"b")
            for i in range(200)
        ],
    )
    for _ in range(400):
        app.execute(
            "UPDATE alias SET balance = balance + ? WHERE id = ?",
            (rng.uniform(-50, 50), rng.randrange(200)),
        )
    app.execute("DELETE FROM alias WHERE id < 20")
    rows = read_changes(conn, 0, 10_000)
    assert {r.kind for r in rows} == {"I", "U", "D"}
    assert _assert_same_records(layout, rows) == 0


def _outcome(produce):
    try:
        return "ok", produce()
    except Exception as exc:  # the outcome compared: records, or the error itself
        return type(exc).__name__, str(exc)


MALFORMED = {  # hand-written change rows no trigger writes: the builder's errors must stay
    "a REAL tag around an integer key": [("I", None, '[[1],[5],"a",null,null]')],
    "a REAL tag around NULL": [("I", None, '[[1],1,"a",[null],null]')],
    "an empty tag": [("I", None, '[[1],1,"a",[],null]')],
    "a BLOB tag that is not hex": [("I", None, '[[1],1,"a",1.5,{"x":"zz"}]')],
    "an integer beyond 64 bits, then a row a value short": [
        ("I", None, '[[1],2,"a",18446744073709551616,null]'),
        ("I", None, '[[1],3,"a",null]'),
    ],
    "a bad UPDATE before a bad INSERT": [
        ("U", '[[1],1,"a",1.5,null]', '[[1],1,"a",[],null]'),
        ("I", None, '[[1],true,"a",1.5,null]'),
    ],
    "a commit time that is not an integer": [("I", None, '[[1],1,"a",1.5,null]', 7.9)],
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_run_fails_as_the_per_row_builder_does(primary, case):
    """Same error type and message, from the same row, whatever the run's other rows."""
    conn, _ = primary
    layout = _layouts(conn)["alias"]
    rows = [
        ChangeRow(10 + i, kind, "alias", before, after, None, at[0] if at else 7)
        for i, (kind, before, after, *at) in enumerate(MALFORMED[case])
    ]
    builder = RecordBuilder(layout, "src", OPERATION_HEADER)
    per_row = _outcome(lambda: [builder.records(r) for r in rows])
    encoder = RunEncoder(builder, "src", OPERATION_HEADER)
    assert per_row[0] != "ok"
    assert _outcome(lambda: list(encoder.records(rows))) == per_row


def test_records_come_row_by_row_so_a_check_between_rows_still_comes_first(primary):
    """Capture checks each row's records (size against the topic's limit) before the next
    row is encoded: a later row's error must not surface before an earlier row's check."""
    conn, app = primary
    layout = _layouts(conn)["alias"]
    app.execute("INSERT INTO alias VALUES (1, 'a', 1.5, NULL)")
    (good,) = read_changes(conn, 0, 1000)
    bad = ChangeRow(good.seq + 1, "I", "alias", None, "[[1],2,3]", None, 7)  # too few values
    encoder = RunEncoder(RecordBuilder(layout, "src", OPERATION_HEADER), "src", OPERATION_HEADER)
    given = encoder.records([good, bad])
    assert next(given) == RecordBuilder(layout, "src", OPERATION_HEADER).records(good)
    with pytest.raises(ValueError, match="has 2 values for 4 columns"):
        next(given)
