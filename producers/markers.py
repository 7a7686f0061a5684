"""Marker requests: a consistency point is a row committed on the primary.

Because the request is written to the same change log as the data, in its own write
transaction, every change committed before it precedes it in the log and every change
committed after it follows it: the cut sits exactly at a commit boundary (the DBLog /
Debezium signal-table idea). Capture turns the row into a marker on every partition.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from cutline.errors import ConfigError
from producers.initial_snapshot import refuse_marker_while_snapshotting, wait_for_snapshots
from producers.marker_digest import MarkerProof
from producers.schema_changes import ensure_schema
from producers.sqlite_changelog import CHANGES, KIND_MARKER, MARKERS, installed_tables, now_us
from producers.write_lock import DEFAULT_LOCK_TIMEOUT_S, begin_write


@dataclass(frozen=True)
class MarkerTicket:
    marker_id: int
    t1_us: int

    @property
    def t1(self) -> str:
        return format_time(self.t1_us)

    def as_json(self) -> dict[str, object]:
        return {"marker_id": self.marker_id, "t1": self.t1}


def format_time(t_us: int) -> str:
    """ISO-8601 UTC with microseconds, the one time format users see."""
    return datetime.fromtimestamp(t_us / 1_000_000, tz=UTC).isoformat(timespec="microseconds")


def request_marker_in_transaction(
    conn: sqlite3.Connection,
    note: str | None = None,
    *,
    digest: bool = True,
    proof: MarkerProof | None = None,
) -> MarkerTicket:
    """Write a marker request inside the caller's open write transaction.

    T1 is read after the write lock is held, so every transaction that committed before
    this one has a commit time at or before T1. Schema changes are followed first, in
    the same transaction (``schema_changes.py``). The caller commits. Unless ``proof``
    (from ``request_marker``) pinned a snapshot, the primary's digest (``marker_digest``)
    is computed here, inside that transaction (writers wait for it), so the caller must
    write nothing after the marker in it.
    """
    ensure_schema(conn)  # a marker never falls between a DDL and its fix-up
    refuse_marker_while_snapshotting(conn)  # it would cut a partly replicated table
    t1 = now_us()
    cursor = conn.execute(f"INSERT INTO {MARKERS}(t1_us, note) VALUES (?, ?)", (t1, note))
    marker_id = int(cursor.lastrowid or 0)
    conn.execute(
        f"INSERT INTO {CHANGES}(kind, marker_id, at_us) VALUES (?, ?, ?)",
        (KIND_MARKER, marker_id, t1),
    )
    (proof or MarkerProof(conn, digest=digest)).stage(marker_id)
    return MarkerTicket(marker_id=marker_id, t1_us=t1)


def request_marker(
    conn: sqlite3.Connection,
    note: str | None = None,
    *,
    digest_every: int = 1,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> MarkerTicket:
    """Commit one marker request on the primary and return its id and T1.

    Waits up to ``lock_timeout_s`` for an application's write transaction to end (a
    marker must sit at a commit boundary, so it needs the write lock), logging meanwhile,
    and, before that, as long again for any initial snapshot under way to finish
    (``initial_snapshot.py``: a marker must not cut a partly replicated table).
    The primary's table digests at the marker follow it in a second short transaction,
    read from a snapshot pinned under the marker's write lock (see ``marker_digest``).
    """
    if not installed_tables(conn):
        raise ConfigError(
            "capture is not installed on this database: run `cutline capture --db PATH "
            "--tables ...` first, then cut markers"
        )
    wait_for_snapshots(conn, lock_timeout_s)  # an initial snapshot under way finishes first
    proof = MarkerProof(conn, digest_every, lock_timeout_s=lock_timeout_s)
    begin_write(conn, "cutting a marker", lock_timeout_s)  # then pin, ensure_schema, marker
    try:
        proof.pin()
        ticket = request_marker_in_transaction(conn, note, proof=proof)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        proof.abandon()
        raise
    proof.finish()
    return ticket
