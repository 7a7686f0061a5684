"""The primary's digest when several sources capture one database (producers/sources.py).

A marker is one row of the shared change log and cuts every source at the same commit;
its 'G' row (read by every source) holds each captured table's digest and, per source,
the tables that source captured at T1. Each source's capture publishes only its own.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_capture_transactions import StandInProducer, make_capture, published

from producers.digest import digest_table
from producers.marker_digest import DigestPayload, MarkerProof
from producers.markers import request_marker, request_marker_in_transaction
from producers.schema_changes import migrate
from producers.sources import Start, StartPlan, install_source
from producers.sqlite_changelog import CHANGES, KIND_DIGEST, connect
from producers.write_lock import begin_write
from schemas.records import ConsistencyMarker, MarkerDigest


@pytest.fixture(params=[True, False], ids=["pinned-snapshot", "in-transaction"])
def db(request, tmp_path: Path) -> Path:
    path = tmp_path / "primary.sqlite"
    conn = sqlite3.connect(path)
    if request.param:  # WAL: the digest is read from a snapshot pinned under the lock
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, w REAL)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(5)])
    conn.executemany("INSERT INTO u VALUES (?, ?)", [(i, i / 3) for i in range(3)])
    conn.commit()
    conn.close()
    return path


def add_source(conn: sqlite3.Connection, source: str, tables: list[str]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    install_source(conn, source, tables, StartPlan(Start.FRESH, 0), last_marker=0)
    conn.execute("COMMIT")


def digest_row(conn: sqlite3.Connection, marker_id: int) -> DigestPayload:
    (after,) = conn.execute(
        f"SELECT after FROM {CHANGES} WHERE kind = ? AND marker_id = ?", (KIND_DIGEST, marker_id)
    ).fetchone()
    return DigestPayload.from_json(marker_id, after)


def test_each_source_publishes_the_digest_of_its_own_tables(db: Path) -> None:
    producer = StandInProducer()
    capture = make_capture(db, producer)  # source "s" captures t
    conn = capture._conn
    add_source(conn, "a", ["t", "u"])
    marker_id = request_marker(conn).marker_id
    row = digest_row(conn, marker_id)
    assert row.sources == {"a": ("t", "u"), "s": ("t",)}
    check = connect(db)
    expected = {name: digest_table(check, name) for name in ("t", "u")}
    check.close()
    assert {d.table: d for d in row.tables} == expected, "every captured table, once"
    assert [d.table for d in row.for_source("a").tables] == ["t", "u"]

    capture.step()
    records = published(producer)
    (marker,) = {r.marker_id: r for r in records if isinstance(r, ConsistencyMarker)}.values()
    (digest,) = [r for r in records if isinstance(r, MarkerDigest)]
    assert marker.tables == ("t",) and digest.marker_id == marker.marker_id == marker_id
    assert [(e.table, e.rows, e.hash) for e in digest.tables] == [("t", 5, expected["t"].hex)], (
        "source s publishes t's digest only, the table set its marker lists"
    )


def test_a_table_let_go_after_the_marker_is_digested_as_it_was_at_t1(db: Path) -> None:
    conn = connect(db)
    add_source(conn, "a", ["t", "u"])
    before = digest_table(conn, "u")
    proof = MarkerProof(conn)
    begin_write(conn, "test marker")
    proof.pin()
    marker_id = request_marker_in_transaction(conn, proof=proof).marker_id
    conn.execute("COMMIT")
    other = connect(db)
    assert migrate(other, "DROP TABLE u")["no_longer_captured"] == ["u"]  # before the digest
    other.close()
    proof.finish()
    row = digest_row(conn, marker_id)
    assert row.sources == {"a": ("t", "u")}, "a captured u at T1"
    assert [(d.table, d.rows, d.hash) for d in row.for_source("a").tables if d.table == "u"] == [
        ("u", 3, before.hash)
    ]
    assert request_marker(conn).marker_id > marker_id
    later = digest_row(conn, marker_id + 1)
    assert later.sources == {"a": ("t",)} and [d.table for d in later.tables] == ["t"]
    conn.close()


def test_a_source_registered_after_the_marker_gets_no_digest_of_it(db: Path) -> None:
    conn = connect(db)
    add_source(conn, "a", ["t"])
    marker_id = request_marker(conn).marker_id
    row = digest_row(conn, marker_id)
    late = row.for_source("late")
    assert late.skipped and "not capturing" in (late.note or "")
    assert not row.for_source("a").skipped
    conn.close()
