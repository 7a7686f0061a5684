"""The row digest (producers/digest.py) and the primary's digest at a marker."""

from __future__ import annotations

import sqlite3
import struct
from hashlib import blake2b
from pathlib import Path

import pytest

from cutline.errors import ConfigError
from producers.background_marks import BackgroundMarks
from producers.digest import (
    DigestAccumulator,
    digest_rows,
    digest_table,
    encode_row,
    row_hash,
)
from producers.marker_digest import DigestPayload, MarkerProof, compute_payload
from producers.markers import request_marker, request_marker_in_transaction
from producers.sqlite_changelog import KIND_DIGEST, KIND_MARKER, connect, install, read_changes


def test_the_encoding_is_the_documented_one():
    """Recomputed by hand from the module docstring, byte by byte."""
    row = (None, -2, 1.5, "é", b"\x00\x01")
    expected = (
        b"\x00"
        + b"\x01"
        + struct.pack(">q", -2)
        + b"\x02"
        + struct.pack(">d", 1.5)
        + b"\x03"
        + struct.pack(">I", 2)
        + "é".encode()
        + b"\x04"
        + struct.pack(">I", 2)
        + b"\x00\x01"
    )
    assert encode_row(row) == expected
    by_hand = int.from_bytes(blake2b(expected, digest_size=8).digest(), "little")
    assert row_hash(row) == by_hand
    assert digest_rows("t", [row]).hash == by_hand


def test_order_does_not_matter_and_batches_add_up():
    rows = [(i, f"r{i}", i / 7, bytes([i % 256])) for i in range(500)]
    one = digest_rows("t", rows)
    assert digest_rows("t", list(reversed(rows))) == one
    acc = DigestAccumulator()
    acc.add(rows[300:])
    acc.add(rows[:300])
    assert acc.result("t") == one
    assert one.rows == 500


def test_the_sum_wraps_at_2_64_and_duplicates_do_not_cancel():
    rows = [(i,) for i in range(2000)]
    total = sum(row_hash(r) for r in rows)
    assert total >= 1 << 64, "the test needs a sum that wraps"
    assert digest_rows("t", rows).hash == total % (1 << 64)
    twice = digest_rows("t", [(1,), (1,)])
    assert twice.hash == (2 * row_hash((1,))) % (1 << 64) and twice.hash != 0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, 1.0),  # INTEGER and REAL
        ("a", b"a"),  # TEXT and BLOB
        (0.0, -0.0),  # the sign of zero
        (None, 0),
        (None, ""),
        ("", b""),
        (2**63 - 1, -(2**63)),
    ],
)
def test_storage_class_and_exact_value_are_part_of_the_digest(a, b):
    assert row_hash((a,)) != row_hash((b,))


def test_values_cannot_run_into_each_other():
    assert row_hash(("ab", "c")) != row_hash(("a", "bc"))
    assert row_hash((b"", None)) != row_hash((None, b""))


def test_every_nan_is_one_value():
    other_nan = struct.unpack(">d", bytes.fromhex("7ff8000000000001"))[0]
    assert row_hash((float("nan"),)) == row_hash((other_nan,))
    assert row_hash((float("nan"),)) != row_hash((float("inf"),))


def test_a_value_sqlite_cannot_hold_is_refused():
    with pytest.raises(TypeError, match="not a SQLite value"):
        encode_row((True,))


def test_an_empty_table_is_zero_rows_and_hash_zero():
    empty = digest_rows("t", [])
    assert (empty.rows, empty.hash, empty.hex) == (0, 0, "0" * 16)


def test_text_that_is_not_utf8_is_hashed_as_the_blob_capture_carries(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / "p.db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO t VALUES (1, CAST(x'ff00fe' AS TEXT)), (2, 'ok'), (3, x'ff')")
    assert conn.execute("SELECT typeof(v) FROM t WHERE id = 1").fetchone() == ("text",)
    found = digest_table(conn, "t")
    assert found == digest_rows("t", [(1, b"\xff\x00\xfe"), (2, "ok"), (3, b"\xff")])
    assert conn.execute("SELECT v FROM t WHERE id = 2").fetchone() == ("ok",)  # factory restored


@pytest.fixture
def primary(tmp_path: Path) -> sqlite3.Connection:
    path = tmp_path / "primary.db"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, v)")
    setup.execute("CREATE TABLE b (k TEXT PRIMARY KEY, n REAL) WITHOUT ROWID")
    setup.executemany("INSERT INTO a VALUES (?, ?)", [(1, "x"), (2, 2.5), (3, b"\x01")])
    setup.execute("INSERT INTO b VALUES ('k', 1.0)")
    setup.commit()
    setup.close()
    conn = connect(path)
    install(conn, "s", ["a", "b"])
    yield conn
    conn.close()


def _digest_rows_after(conn: sqlite3.Connection, marker_id: int) -> list:
    return [
        c
        for c in read_changes(conn, 0, 10_000)
        if c.kind == KIND_DIGEST and c.marker_id == marker_id
    ]


def test_the_digest_follows_its_marker_in_the_change_log(primary):
    expected = compute_payload_now(primary)
    ticket = request_marker(primary)
    changes = read_changes(primary, 0, 10_000)
    kinds = [(c.kind, c.marker_id) for c in changes if c.kind in (KIND_MARKER, KIND_DIGEST)]
    assert kinds == [(KIND_MARKER, ticket.marker_id), (KIND_DIGEST, ticket.marker_id)]
    (row,) = _digest_rows_after(primary, ticket.marker_id)
    payload = DigestPayload.from_json(ticket.marker_id, row.after)
    assert not payload.skipped
    assert payload.tables == expected


def compute_payload_now(conn: sqlite3.Connection):
    conn.execute("BEGIN")
    try:
        return compute_payload(conn, 0).tables
    finally:
        conn.execute("ROLLBACK")


def test_the_pinned_snapshot_is_the_marker_cut_while_writers_go_on(primary):
    """A commit right after the marker is not in its digest, and was never blocked."""
    at_marker = compute_payload_now(primary)
    proof = MarkerProof(primary)
    primary.execute("BEGIN IMMEDIATE")
    proof.pin()
    ticket = request_marker_in_transaction(primary, proof=proof)
    primary.execute("COMMIT")
    assert _digest_rows_after(primary, ticket.marker_id) == [], "not computed yet"
    writer = sqlite3.connect(primary.execute("PRAGMA database_list").fetchone()[2], timeout=0)
    writer.execute("INSERT INTO a VALUES (4, 'after the marker')")  # no busy wait allowed
    writer.commit()
    writer.close()
    proof.finish()
    (row,) = _digest_rows_after(primary, ticket.marker_id)
    assert DigestPayload.from_json(ticket.marker_id, row.after).tables == at_marker
    assert compute_payload_now(primary) != at_marker, "the later commit is in the database"


def test_digest_every_two_skips_odd_markers(primary):
    ids = [request_marker(primary, digest_every=2).marker_id for _ in range(3)]
    skipped = {
        i: DigestPayload.from_json(i, _digest_rows_after(primary, i)[0].after).skipped for i in ids
    }
    assert skipped == {1: True, 2: False, 3: True}
    note = DigestPayload.from_json(1, _digest_rows_after(primary, 1)[0].after).note
    assert "--digest-every 2" in note


def test_a_database_not_in_wal_mode_gets_the_digest_inside_the_marker_transaction(primary):
    primary.execute("PRAGMA journal_mode = DELETE")
    expected = compute_payload_now(primary)
    ticket = request_marker(primary)
    (row,) = _digest_rows_after(primary, ticket.marker_id)
    assert DigestPayload.from_json(ticket.marker_id, row.after).tables == expected


def test_a_marker_in_the_callers_transaction_carries_the_digest_of_that_transaction(primary):
    primary.execute("BEGIN IMMEDIATE")
    primary.execute("INSERT INTO a VALUES (9, 'same transaction')")
    expected = compute_payload(primary, 0).tables
    ticket = request_marker_in_transaction(primary)
    primary.execute("COMMIT")
    (row,) = _digest_rows_after(primary, ticket.marker_id)
    assert DigestPayload.from_json(ticket.marker_id, row.after).tables == expected
    assert any(t.rows == 4 for t in expected if t.table == "a")


def test_digest_table_reads_every_column_in_table_order(primary):
    primary.execute("BEGIN")
    found = digest_table(primary, "a")
    primary.execute("ROLLBACK")
    assert found == digest_rows("a", [(1, "x"), (2, 2.5), (3, b"\x01")])


def test_background_marks_cut_one_marker_at_a_time_with_its_digest(primary):
    path = primary.execute("PRAGMA database_list").fetchone()[2]
    marks = BackgroundMarks(path, digest_every=1)
    assert marks.start("bg")
    marks.join(30)
    marks.raise_failure()
    assert marks.idle()
    (marker,) = [c for c in read_changes(primary, 0, 10_000) if c.kind == KIND_MARKER]
    (row,) = _digest_rows_after(primary, marker.marker_id)
    assert not DigestPayload.from_json(marker.marker_id, row.after).skipped


def test_a_background_mark_that_fails_is_raised_on_the_callers_thread(tmp_path):
    empty = tmp_path / "no-capture.db"
    sqlite3.connect(empty).close()
    marks = BackgroundMarks(empty)
    marks.start("bg")
    marks.join(30)
    with pytest.raises(ConfigError, match="capture is not installed"):
        marks.raise_failure()
    marks.raise_failure()  # reported once
