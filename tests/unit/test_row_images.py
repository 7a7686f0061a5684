"""JSON row images: exact for every SQLite value, and the same operations and Kafka keys as
the literal images an older cutline wrote (both may sit in one change log)."""

from __future__ import annotations

import math
import random
import sqlite3
from pathlib import Path

import pytest

from producers.operations import TableLayout, to_operations
from producers.row_images import ImageFormatError, image_values, is_json_image
from producers.sqlite_changelog import (
    CHANGES,
    connect,
    image_sql,
    install,
    literal_image_sql,
    read_changes,
)

HOSTILE = [
    None,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    8191,
    8192,
    0.0,
    -0.5,
    1.5,
    591027.4716637121,
    5e-324,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    1e22,
    "",
    "plain",
    'it\'s, "quoted" [1] {x}',
    "a\x00b",
    "\x00",
    "tab\tnew\nline\x01\x1f",
    "Zoë 漢字 🎉 \u2028",
    "NULL",
    "X'00'",
    "[[1]]",
    b"",
    b"\x00\xff",
    b"[1]",
]


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


@pytest.fixture
def primary(tmp_path: Path):
    path = tmp_path / "primary.sqlite"
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("CREATE TABLE t(id INTEGER, k, a, b REAL, c TEXT, d INTEGER, PRIMARY KEY (id, k))")
    app.execute("CREATE TABLE r(k PRIMARY KEY, a, b)")
    conn = connect(path)
    yield conn, app
    conn.close()
    app.close()


def _both_formats(conn, table: str) -> tuple[list, list]:
    """The table's rows as logged by the triggers (JSON) and as literal images."""
    (definition,) = install(conn, "src", [table])
    start = read_changes(conn, 0, 100_000)
    start_seq = start[-1].seq if start else 0
    conn.execute(
        f"INSERT INTO {CHANGES}(kind, tbl, before, after, at_us) "
        f"SELECT 'U', ?, {literal_image_sql(definition, 't')}, "
        f"{literal_image_sql(definition, 't')}, 7 FROM {table} AS t ORDER BY rowid",
        (table,),
    )
    conn.execute(
        f"INSERT INTO {CHANGES}(kind, tbl, before, after, at_us) "
        f"SELECT 'U', ?, {image_sql(definition, 't')}, "
        f"{image_sql(definition, 't')}, 7 FROM {table} AS t ORDER BY rowid",
        (table,),
    )
    rows = read_changes(conn, start_seq, 100_000)
    half = len(rows) // 2
    layout = TableLayout.of(definition)
    literal = [to_operations(r, layout, "src") for r in rows[:half]]
    json_ = [to_operations(r, layout, "src") for r in rows[half:]]
    assert all(not is_json_image(r.after) for r in rows[:half])
    assert all(is_json_image(r.after) for r in rows[half:])
    return literal, json_


def _assert_same_operations(literal: list, json_: list) -> None:
    assert len(literal) == len(json_)
    for old_pairs, new_pairs in zip(literal, json_, strict=True):
        assert [k for k, _ in old_pairs] == [k for k, _ in new_pairs]
        for (_, old), (_, new) in zip(old_pairs, new_pairs, strict=True):
            assert old.op == new.op
            for image in ("key", "before", "after"):
                a, b = getattr(old, image), getattr(new, image)
                assert (a is None) == (b is None)
                if a is not None:
                    assert list(a) == list(b)
                    assert all(_same(a[c], b[c]) for c in a), (a, b)


def test_hostile_values_decode_exactly_and_match_literal_images(primary):
    conn, app = primary
    rows = [(i, v, v, v, v, v) for i, v in enumerate(HOSTILE)]  # a NULL in the PK too
    app.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", rows)
    stored = app.execute("SELECT id, k, a, b, c, d FROM t ORDER BY rowid").fetchall()
    literal, json_ = _both_formats(conn, "t")
    assert len(json_) == len(stored)
    for pairs, row in zip(json_, stored, strict=True):
        ((_, op),) = pairs
        assert all(_same(op.after[c], v) for c, v in zip(("id", *"kabcd"), row, strict=True)), row
    _assert_same_operations(literal, json_)


def test_invalid_utf8_text_becomes_the_same_bytes_in_both_formats(primary):
    conn, app = primary
    app.execute(
        "INSERT INTO t(id, k, a) VALUES (1, CAST(x'41ff42' AS TEXT), CAST(x'00c3' AS TEXT))"
    )
    literal, json_ = _both_formats(conn, "t")
    ((_, op),) = json_[0]
    assert op.key == {"id": 1, "k": b"A\xffB"} and op.after["a"] == b"\x00\xc3"
    _assert_same_operations(literal, json_)


def test_random_values_and_keys_match_literal_images(primary):
    conn, app = primary
    rng = random.Random(5)
    alphabet = "ab,'\"[]{}\\\x00\n é0.eE-"

    def value():
        kind = rng.randrange(5)
        if kind == 0:
            return rng.randint(-(2**63), 2**63 - 1)
        if kind == 1:
            return rng.uniform(-1, 1) * 10 ** rng.randint(-300, 300)
        if kind == 2:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
        if kind == 3:
            return rng.randbytes(rng.randrange(6))
        return None

    rows = [(value(), value(), value()) for _ in range(500)]
    app.executemany("INSERT OR IGNORE INTO r VALUES (?, ?, ?)", rows)
    literal, json_ = _both_formats(conn, "r")
    assert len(json_) == app.execute("SELECT count(*) FROM r").fetchone()[0] > 400
    _assert_same_operations(literal, json_)


def test_a_table_too_wide_for_json_array_keeps_literal_images(tmp_path: Path):
    path = tmp_path / "wide.sqlite"
    app = sqlite3.connect(path, isolation_level=None)
    columns = ", ".join(f"c{i}" for i in range(150))
    app.execute(f"CREATE TABLE w(id INTEGER PRIMARY KEY, {columns})")
    conn = connect(path)
    install(conn, "src", ["w"])
    app.execute("INSERT INTO w(id, c0, c149) VALUES (1, 2.5, x'01')")
    (change,) = read_changes(conn, 0, 10)
    assert not is_json_image(change.after)
    assert image_values(change.after)[:2] == [1, 2.5] and image_values(change.after)[-1] == b"\x01"
    conn.close()
    app.close()


@pytest.mark.parametrize("image", ['["1.5"]', "[[2],1]", '[{"x":"00"}]', "[[1"])
def test_an_image_without_the_format_tag_is_refused(image):
    with pytest.raises(ImageFormatError):
        image_values(image)
