"""A source's initial snapshot of a big table, in chunks, while the application writes.

Why: copying a whole table into the change log inside the install's write transaction
held the primary's write lock for as long as the copy took, doubled the table in the
log, and sent every row through capture's text-image parse. Here install only records
that a snapshot is under way (``_cutline_snapshots``: source, table, id) and capture reads
the table itself, ``CHUNK_ROWS`` rows at a time in key order, with native values.

The watermark argument (as in DBLog / Debezium's incremental snapshots, made simpler by
SQLite's single writer). Let F be the key of the last row published by a chunk (none at
first). Capture publishes a change to table T only if its key is <= F; a change to a key
beyond F is dropped. A chunk is read only when the change batch read in the *same* read
transaction reaches the end of the change log: that transaction is one WAL snapshot, at
change S, so every change <= S is in the batch (published, or dropped, with the old F)
and the chunk holds the rows (F, F'] exactly as of S. The batch, then the chunk (plain
INSERTs), then the new F' go out in one Kafka transaction together with the position.

* A key k <= F: the replica got its row as of the chunk that covered it, then every later
  change of k, in order (each change after that chunk is published, as k <= F then).
* A key k > F: no operation on it was ever published (every change was dropped), so the
  replica has no row k, and the chunk that covers k inserts it as of its own S; changes
  dropped before are in that image, changes after it are published. A row deleted before
  its chunk is simply never sent. An UPDATE that moves a row across F becomes DELETE old +
  INSERT new (``operations.py``), and each half is kept or dropped on its own key.

So once the last chunk is out, the replica equals the primary at every later change, with
strict INSERT/UPDATE/DELETE semantics unchanged on the replica. "<= F" must be SQLite's own
order of the key: :class:`KeyOrder` reads the key's collations from the primary-key index
and compares keys as SQLite does (storage class NULL < numbers < TEXT < BLOB; numbers by
value; TEXT by its bytes under BINARY, NOCASE (ASCII folding) or RTRIM; BLOB by bytes). A
table whose key order cannot be reproduced that way (another collation), one with a row
whose key holds a NULL (a rowid table allows it; chunks never read such rows, and changes
of such rows are always published), or one that fits in one chunk, keeps the old copy
inside the install's transaction (a re-install after a schema change too:
``schema_changes.copy_rows``).

F lives in the capture position (``CapturePosition.snapshots``), written in the same Kafka
transaction as the chunk, so a crash anywhere resumes exactly after the last chunk Kafka
committed: nothing is re-sent and nothing skipped. On the primary, capture forgets a
finished snapshot (deletes its ``_cutline_snapshots`` row) only after Kafka holds its last
chunk; the position keeps listing it as done until then, so a restart in between does not
start it again.

Markers: a marker must not cut a table whose snapshot is under way (the replica holds only
part of it). ``markers.request_marker`` waits for every snapshot on the database to finish
(bounded by its lock timeout), and a marker written inside a caller's own transaction
(``request_marker_in_transaction``) is refused with one line while one is under way. Capture
itself stops loudly if it ever meets a marker row that would cut such a table.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from cutline.errors import CutlineError
from producers.key_order import KeyOrder, SortKey, frontier_literal
from producers.operations import TableLayout, image_key_literals, message_key
from producers.sqlite_changelog import (
    CHANGES,
    ChangeRow,
    describe_table,
    quote_identifier,
    snapshot_table,
    value_sql,
)
from schemas.records import SnapshotProgress, TableDefinition

log = logging.getLogger("cutline.capture")

SNAPSHOTS = "_cutline_snapshots"
CHUNK_ROWS = 20_000
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {SNAPSHOTS} (source TEXT NOT NULL, tbl TEXT NOT NULL, "
    "id TEXT NOT NULL, started_seq INTEGER NOT NULL, rows INTEGER NOT NULL DEFAULT 0, "
    "PRIMARY KEY (source, tbl))"
)


class SnapshotInProgress(CutlineError):
    """A marker was asked for while an initial snapshot is under way on the database (not
    a configuration error: the same command succeeds once the snapshot is done)."""


class SnapshotCut(CutlineError):
    """Capture met a marker that would cut a table whose snapshot is under way."""


# -- install: record a snapshot instead of copying ------------------------------------------


def ensure_snapshot_table(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA)


def start_snapshot(
    conn: sqlite3.Connection,
    source: str,
    definition: TableDefinition,
    started_seq: int,
    chunk_rows: int = CHUNK_ROWS,
) -> bool:
    """In the install's write transaction: record a chunked snapshot of the table for
    ``source``; or, for a table that fits in one chunk or whose key order cannot be
    reproduced, copy it into the change log as before. True if chunked."""
    ensure_snapshot_table(conn)
    table = quote_identifier(definition.table)
    big = conn.execute(f"SELECT 1 FROM {table} LIMIT 1 OFFSET ?", (chunk_rows,)).fetchone()
    order = KeyOrder.of(conn, definition) if big else None
    if order is not None and order.nullable:
        null_key = conn.execute(f"SELECT 1 FROM {table} WHERE {order.null_key_sql()} LIMIT 1")
        if null_key.fetchone():
            order = None  # rows no chunk would read: copied whole instead
    if order is None:
        snapshot_table(conn, definition, source)
        return False
    conn.execute(
        f"INSERT OR REPLACE INTO {SNAPSHOTS}(source, tbl, id, started_seq, rows) "
        "VALUES (?, ?, ?, ?, 0)",
        (source, definition.table, uuid.uuid4().hex, started_seq),
    )
    return True


def forget_snapshots(conn: sqlite3.Connection, source: str) -> None:
    """A source started over or dropped: its snapshots under way go with it."""
    ensure_snapshot_table(conn)
    conn.execute(f"DELETE FROM {SNAPSHOTS} WHERE source = ?", (source,))


def snapshots_under_way(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(source, table, rows published so far) of every snapshot under way on the database."""
    try:
        return [
            (r[0], r[1], int(r[2]))
            for r in conn.execute(f"SELECT source, tbl, rows FROM {SNAPSHOTS} ORDER BY source, tbl")
        ]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def refuse_marker_while_snapshotting(conn: sqlite3.Connection) -> None:
    """Inside a marker's write transaction: one clear line if a snapshot is under way."""
    pending = snapshots_under_way(conn)
    if pending:
        raise SnapshotInProgress(_under_way(pending))


def wait_for_snapshots(
    conn: sqlite3.Connection, deadline_s: float, progress: Callable[[str], None] | None = None
) -> None:
    """Before a marker takes the write lock: wait until no snapshot is under way, or raise."""
    end = time.monotonic() + deadline_s
    noted = 0.0
    while pending := snapshots_under_way(conn):
        now = time.monotonic()
        if now >= end:
            raise SnapshotInProgress(f"{_under_way(pending)} (waited {deadline_s:.0f} s)")
        if now - noted >= 5.0:
            noted = now
            (progress or log.info)(f"marker waits: {_under_way(pending)}")
        time.sleep(min(0.1, max(0.0, end - now)))


def _under_way(pending: list[tuple[str, str, int]]) -> str:
    names = ", ".join(f"{t} for source {s!r} ({n:,} rows so far)" for s, t, n in pending)
    return (
        f"an initial snapshot is under way ({names}): a marker now would cut a table that is "
        "only partly replicated; cut it once capture has finished it"
    )


# -- capture's side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Rows (F, F'] of one table as of change ``seq``, read natively."""

    table: str
    seq: int
    columns: tuple[str, ...]
    rows: list[tuple]  # column values, then the key's quote() literals (partition keys)
    key_count: int
    after_key: tuple[str, ...]  # F' (frontier literals); () if the table had no more rows
    last: bool  # fewer rows than asked for: the table has no row after F' (as of ``seq``)
    key_positions: tuple[int, ...]  # where the key columns are in ``columns``
    rowid_alias: bool  # the key is one INTEGER PRIMARY KEY: its literal is the int's digits
    raw_text: bool = False  # read byte for byte: TEXT that is not UTF-8 is in it


@dataclass
class _Table:
    progress: SnapshotProgress
    started_seq: int
    order: KeyOrder | None = None
    frontier: SortKey | None = None  # F as a sort key; None: no row published yet


class InitialSnapshots:
    """The chunked snapshots of one capture: which changes to publish, and the next chunk.

    Owned by capture's thread. ``save()``/``restore()`` bracket a Kafka transaction.
    """

    def __init__(self, source: str, chunk_rows: int = CHUNK_ROWS):
        self.source = source
        self.chunk_rows = chunk_rows
        self._tables: dict[str, _Table] = {}

    # state ------------------------------------------------------------------------------

    def load(self, conn: sqlite3.Connection, known: Iterable[SnapshotProgress]) -> None:
        """The source's snapshots under way, on the primary, with Kafka's word on progress
        (``known``: from the last committed position, if it is this incarnation's)."""
        by_id = {p.id: p for p in known}
        self._tables = {}
        for table, snapshot_id, started, _rows in snapshots_of(conn, self.source):
            progress = by_id.get(snapshot_id) or SnapshotProgress(table, snapshot_id)
            self._tables[table] = _Table(progress, started)

    def active(self) -> bool:
        return bool(self._tables)

    def progress(self) -> tuple[SnapshotProgress, ...]:
        return tuple(t.progress for t in self._tables.values())

    def save(self) -> dict[str, _Table]:
        return {k: replace(v) for k, v in self._tables.items()}

    def restore(self, saved: dict[str, _Table]) -> None:
        self._tables = saved

    def under_way(self, table: str) -> bool:
        t = self._tables.get(table)
        return t is not None and not t.progress.done

    # filtering changes ------------------------------------------------------------------

    def publishes(self, conn: sqlite3.Connection, table: str, key_literals: list[str]) -> bool:
        """True if a change of this key is published (its row was covered by a chunk)."""
        t = self._tables.get(table)
        if t is None or t.progress.done or "NULL" in key_literals:
            return True  # (a NULL in the key: no chunk reads the row, see KeyOrder.nullable)
        if not t.progress.after_key:
            return False
        order = self._order(conn, t, table)
        if t.frontier is None:
            t.frontier = order.sort_key_of_frontier(t.progress.after_key)
        return order.sort_key_of_literals(key_literals) <= t.frontier

    def keep(
        self,
        conn: sqlite3.Connection,
        row: ChangeRow,
        layout: TableLayout,
        records: list[tuple[bytes, bytes]],
    ) -> list[tuple[bytes, bytes]]:
        """The (key, value) records of one change row that are published: those whose key
        a chunk already covered (an UPDATE that moves the key is judged half by half: its
        DELETE carries the before-image's key, its INSERT the after-image's)."""
        table = layout.definition.table
        keys = {}
        for image in (row.before, row.after):
            if image is not None:
                literals = image_key_literals(image, layout, row)
                keys[message_key(table, literals)] = literals
        return [r for r in records if self.publishes(conn, table, keys[r[0]])]

    def check_marker(self, row: ChangeRow) -> None:
        """A marker must not cut a table whose snapshot is under way (markers refuse to)."""
        for table, t in self._tables.items():
            if not t.progress.done and row.seq > t.started_seq:
                raise SnapshotCut(
                    f"marker {row.marker_id} (change {row.seq}) was requested while the initial "
                    f"snapshot of table {table!r} for source {self.source!r} is under way: it "
                    "would cut a partly replicated table, so capture stopped; markers must be "
                    "requested with `cutline mark` (it waits for the snapshot)"
                )

    def schema_changed(self, row: ChangeRow) -> None:
        """A re-install ('S' row) after the snapshot began copies the table whole right
        after it (for every source), and one with no new layout lets the table go: either
        way the chunks are done."""
        t = self._tables.get(row.table or "")
        if t is not None and row.seq > t.started_seq:
            t.progress = replace(t.progress, done=True)

    # chunks -----------------------------------------------------------------------------

    def read_chunk(
        self,
        conn: sqlite3.Connection,
        definitions: dict[str, TableDefinition],
        seq: int,
        skip: set[str],
        limit: int | None = None,
    ) -> Chunk | None:
        """The next chunk of the first table under way, inside the caller's read transaction
        (the one that read the change batch, which reached the end of the log at ``seq``)."""
        for table, t in self._tables.items():
            if t.progress.done or table in skip or table not in definitions:
                continue
            return self._read(conn, definitions[table], t, seq, limit or self.chunk_rows)
        return None

    def _order(self, conn: sqlite3.Connection, t: _Table, table: str) -> KeyOrder:
        if t.order is None:
            order = KeyOrder.of(conn, describe_table(conn, self.source, table))
            if order is None:
                raise CutlineError(
                    f"table {table!r}: its key order can no longer be followed for its "
                    "initial snapshot (a key collation or NULL-able key column changed)"
                )
            t.order = order
        return t.order

    def _read(
        self, conn: sqlite3.Connection, definition: TableDefinition, t: _Table, seq: int, limit: int
    ) -> Chunk:
        order = self._order(conn, t, definition.table)
        columns = definition.column_names
        names = [quote_identifier(c) for c in columns]
        literals = [value_sql(quote_identifier(k)) for k in order.columns]
        if order.rowid_alias:
            literals = []  # an int's literal is its digits: written in Python
        sql, params = order.chunk_sql(", ".join(names + literals), t.progress.after_key, limit)
        raw = False
        try:
            rows = conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc):
                raise
            previous = conn.text_factory
            conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
            try:
                rows = conn.execute(sql, params).fetchall()
            finally:
                conn.text_factory = previous
            raw = True
        positions = tuple(columns.index(k) for k in order.columns)
        after: tuple[str, ...] = ()
        if rows:
            last = rows[-1]
            after = tuple(frontier_literal(last[i]) for i in positions)
        return Chunk(
            table=definition.table,
            seq=seq,
            columns=columns,
            rows=rows,
            key_count=len(literals),
            after_key=after,
            last=len(rows) < limit,
            key_positions=positions,
            rowid_alias=order.rowid_alias,
            raw_text=raw,
        )

    def chunk_published(self, chunk: Chunk) -> None:
        """Inside the Kafka transaction, after the chunk's records: F moves to F'."""
        t = self._tables[chunk.table]
        if not chunk.rows:
            t.progress = replace(t.progress, done=True)
            return
        t.progress = replace(
            t.progress, after_key=chunk.after_key, rows=t.progress.rows + len(chunk.rows)
        )
        t.frontier = None  # recomputed from after_key when next needed
        if chunk.last:
            t.progress = replace(t.progress, done=True)

    # the primary's record ----------------------------------------------------------------

    def record(self, conn: sqlite3.Connection) -> list[str]:
        """In capture's write transaction after a Kafka commit: progress on the primary,
        finished snapshots forgotten; return the tables finished. (Their entries leave the
        position only after this commits: call :meth:`recorded`.)"""
        finished = []
        for table, t in self._tables.items():
            if t.progress.done:
                conn.execute(
                    f"DELETE FROM {SNAPSHOTS} WHERE source = ? AND tbl = ? AND id = ?",
                    (self.source, table, t.progress.id),
                )
                finished.append(table)
            else:
                conn.execute(
                    f"UPDATE {SNAPSHOTS} SET rows = ? WHERE source = ? AND tbl = ? AND id = ?",
                    (t.progress.rows, self.source, table, t.progress.id),
                )
        return finished

    def recorded(self, finished: list[str]) -> None:
        for table in finished:
            t = self._tables.pop(table, None)
            if t is not None:
                log.info(
                    "initial snapshot of table %r for source %r finished: %s rows",
                    table,
                    self.source,
                    f"{t.progress.rows:,}",
                )


def snapshots_of(conn: sqlite3.Connection, source: str) -> list[tuple[str, str, int, int]]:
    """(table, id, started_seq, rows) of the source's snapshots under way, by start."""
    try:
        return [
            (r[0], r[1], int(r[2]), int(r[3]))
            for r in conn.execute(
                f"SELECT tbl, id, started_seq, rows FROM {SNAPSHOTS} WHERE source = ? "
                "ORDER BY started_seq, tbl",
                (source,),
            )
        ]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def changes_after(conn: sqlite3.Connection, seq: int, source: str) -> bool:
    """True if the source has a change after ``seq`` (the batch did not reach the end)."""
    row = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM {CHANGES} WHERE seq > ? "
        "AND (only_source IS NULL OR only_source = ?))",
        (seq, source),
    ).fetchone()
    return bool(row[0])


def issued_seq(conn: sqlite3.Connection) -> int:
    """The change log's last seq ever handed out (0 before the first)."""
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (CHANGES,)).fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row else 0
