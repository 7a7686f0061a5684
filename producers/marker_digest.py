"""The primary's proof at a marker: each captured table's digest as of the marker's commit.

How the digest sees exactly the marker's cut without blocking writers: the marker's
writer A holds the write lock (``BEGIN IMMEDIATE``); while it does, a second connection
B begins a read transaction and reads once, which pins B's WAL snapshot to every commit
before A's (no other writer can commit while A holds the lock). A then writes the
marker and commits; B's snapshot is the captured tables at T1. B computes the digests
while writers go on (WAL readers block nobody), and the result is written to the change
log in a short write transaction as a row of kind ``G``, so capture carries it after the
marker, in order, to the control topic (``MarkerDigest``).

Several sources may capture one database (``producers/sources.py``) and a marker cuts
them all: the ``G`` row (for every source) holds the digest of every captured table and,
per source, the tables that source captured at T1; each source's capture publishes the
digests of its own tables only (:meth:`DigestPayload.for_source`).

A marker whose digest is not wanted (``--digest-every N``) still gets a ``G`` row saying
"skipped", so the snapshotter never waits for one. A database not in WAL mode cannot
have a reader beside a writer: there the digest is computed inside A's transaction (writers
wait for it).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from producers.digest import TableDigest, digest_tables
from producers.sqlite_changelog import CHANGES, KIND_DIGEST, connect, installed_tables, now_us
from producers.write_lock import DEFAULT_LOCK_TIMEOUT_S, begin_write

SourceTables = dict[str, tuple[str, ...]]  # source -> the tables it captured at T1


@dataclass(frozen=True)
class DigestPayload:
    """What a ``G`` row holds: the marker's table digests, or why there are none."""

    marker_id: int
    skipped: bool
    tables: tuple[TableDigest, ...] = ()
    note: str | None = None
    sources: SourceTables | None = None  # None: written before sources had table sets

    def to_json(self) -> str:
        data: dict[str, object] = {
            "skipped": self.skipped,
            "note": self.note,
            "tables": [{"table": t.table, "rows": t.rows, "hash": t.hex} for t in self.tables],
        }
        if self.sources is not None:
            data["sources"] = {s: list(tables) for s, tables in self.sources.items()}
        return json.dumps(data, sort_keys=True)

    def for_source(self, source: str) -> DigestPayload:
        """The digests of the tables ``source`` captured at T1 (its cut compares those).

        A source the marker did not cut (registered after it) gets a skipped payload.
        """
        if self.sources is None or self.skipped:
            return self
        if source not in self.sources:
            return DigestPayload(
                self.marker_id, True, note=f"source {source!r} was not capturing at this marker"
            )
        own = set(self.sources[source])
        return DigestPayload(
            self.marker_id, False, tuple(t for t in self.tables if t.table in own), self.note
        )

    @classmethod
    def from_json(cls, marker_id: int, text: str) -> DigestPayload:
        data = json.loads(text)
        tables = tuple(
            TableDigest(t["table"], int(t["rows"]), int(t["hash"], 16)) for t in data["tables"]
        )
        sources = data.get("sources")
        if sources is not None:
            sources = {s: tuple(tables) for s, tables in sources.items()}
        return cls(marker_id, bool(data["skipped"]), tables, data.get("note"), sources)


def wants_digest(marker_id: int, digest_every: int) -> bool:
    """Digest every N-th marker id (N = 1: all); the rest are marked skipped."""
    return digest_every <= 1 or marker_id % digest_every == 0


def compute_payload(
    conn: sqlite3.Connection,
    marker_id: int,
    tables: Sequence[str] | None = None,
    sources: SourceTables | None = None,
) -> DigestPayload:
    """Digests of ``tables`` (default: every captured table) as ``conn``'s open
    transaction sees them, each in its layout there."""
    chosen = installed_tables(conn) if tables is None else tables
    return DigestPayload(marker_id, False, tuple(digest_tables(conn, chosen)), sources=sources)


def source_tables(conn: sqlite3.Connection) -> SourceTables | None:
    """Each registered source's captured tables, as the caller's transaction sees them.

    A table let go by ``cutline migrate`` may stay in a source's record until that source
    has published its drop: only tables still captured count. None on a database whose
    sources have no records yet (a single source, which captures every table).
    """
    from producers.sources import all_sources  # it builds on sqlite_changelog, like us

    records = all_sources(conn)
    if not records:
        return None
    captured = set(installed_tables(conn))
    return {r.source: tuple(t for t in r.tables if t in captured) for r in records}


def skipped_payload(marker_id: int, note: str) -> DigestPayload:
    return DigestPayload(marker_id, True, note=note)


def every_note(digest_every: int) -> str:
    return f"--digest-every {digest_every}: this marker has no digest"


def insert_digest_row(conn: sqlite3.Connection, payload: DigestPayload) -> None:
    """Append the ``G`` row inside the caller's write transaction."""
    conn.execute(
        f"INSERT INTO {CHANGES}(kind, marker_id, after, at_us) VALUES (?, ?, ?, ?)",
        (KIND_DIGEST, payload.marker_id, payload.to_json(), now_us()),
    )


def write_digest_row(
    conn: sqlite3.Connection, payload: DigestPayload, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> None:
    """Append the ``G`` row in its own short write transaction (waiting out a long one)."""
    begin_write(conn, f"writing the digest of marker {payload.marker_id}", lock_timeout_s)
    try:
        insert_digest_row(conn, payload)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _database_file(conn: sqlite3.Connection) -> str | None:
    for _seq, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return file or None
    return None


class PinnedSnapshot:
    """Connection B: a read transaction pinned while the marker's writer holds the lock."""

    def __init__(self, reader: sqlite3.Connection):
        self.reader = reader

    @classmethod
    def open(cls, writer: sqlite3.Connection) -> PinnedSnapshot | None:
        """Pin a snapshot beside ``writer``, which must hold the write lock already.

        None when the database cannot have a reader beside a writer (not in WAL mode, or
        not a file); the caller then computes the digest inside its own transaction.
        """
        path = _database_file(writer)
        if path is None:
            return None
        reader = connect(path)
        try:
            if str(reader.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                reader.close()
                return None
            reader.execute("BEGIN")
            reader.execute(f"SELECT count(*) FROM {CHANGES}").fetchone()  # pins the snapshot
        except BaseException:
            reader.close()
            raise
        return cls(reader)

    def payload(
        self, marker_id: int, tables: Sequence[str], sources: SourceTables | None
    ) -> DigestPayload:
        """The digests of ``tables`` as of the pinned snapshot; ends the read transaction."""
        try:
            return compute_payload(self.reader, marker_id, tables, sources)
        finally:
            self.close()

    def close(self) -> None:
        try:
            if self.reader.in_transaction:
                self.reader.execute("ROLLBACK")
        finally:
            self.reader.close()


class MarkerProof:
    """The primary's digest of one marker, taken around the marker's write transaction.

    Who calls what: ``request_marker`` calls :meth:`pin` right after ``BEGIN IMMEDIATE``,
    ``request_marker_in_transaction`` calls :meth:`stage` right after the marker row, and
    ``request_marker`` calls :meth:`finish` after ``COMMIT`` (:meth:`abandon` after a
    rollback). Not pinned (a caller's own transaction, or a database not in WAL mode),
    :meth:`stage` computes the digest inside the transaction; a marker whose digest is not
    wanted gets its "skipped" row there too. Only a pinned, wanted digest is computed after
    the commit, while writers go on.

    The tables digested are the captured tables as the marker's own transaction sees them
    after ``ensure_schema`` (the ones capture lists in the marker); each is read in its
    layout in the pinned snapshot, which is the layout at T1: no DDL can commit while the
    marker's writer holds the lock, and ``ensure_schema`` changes no captured row.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        digest_every: int = 1,
        *,
        digest: bool = True,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ):
        self.conn = conn
        self.digest_every = digest_every
        self.digest = digest
        self.lock_timeout_s = lock_timeout_s  # the G row's wait for the write lock
        self._pinned: PinnedSnapshot | None = None
        self._marker_id: int | None = None
        self._tables: list[str] = []
        self._sources: SourceTables | None = None

    def pin(self) -> None:
        self._pinned = PinnedSnapshot.open(self.conn)

    def stage(self, marker_id: int) -> None:
        if not self.digest:
            self.abandon()
            insert_digest_row(self.conn, skipped_payload(marker_id, "requested without a digest"))
        elif not wants_digest(marker_id, self.digest_every):
            self.abandon()
            insert_digest_row(self.conn, skipped_payload(marker_id, every_note(self.digest_every)))
        elif self._pinned is None:
            sources = source_tables(self.conn)
            insert_digest_row(self.conn, compute_payload(self.conn, marker_id, None, sources))
        else:  # computed from the pinned snapshot after the commit
            self._marker_id = marker_id
            self._tables = installed_tables(self.conn)  # as of the marker's transaction
            self._sources = source_tables(self.conn)

    def finish(self) -> None:
        if self._pinned is not None and self._marker_id is not None:
            pinned, self._pinned = self._pinned, None
            payload = pinned.payload(self._marker_id, self._tables, self._sources)
            write_digest_row(self.conn, payload, self.lock_timeout_s)
        self.abandon()

    def abandon(self) -> None:
        if self._pinned is not None:
            pinned, self._pinned = self._pinned, None
            pinned.close()
