"""The replica, in the primary's own format: one SQLite database per partition.

Why one file per partition: all changes of a row travel in one partition, so the shards
hold disjoint rows and their union is the replicated table. Each replication thread then
writes its own file with no lock contention, and records the offset it applied *in the
same transaction* as the change (invariant 3): after any crash the shard says exactly
where to resume, and a redelivered record is recognised by its offset and skipped.

The shard also remembers the marker it is held at, so a partition handed to another
process during a rebalance stays paused at that marker until the cut is resolved.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from consumers import changed_keys
from consumers.bulk_apply import BulkApplier
from consumers.incarnations import enter_incarnation
from cutline.errors import CutlineError
from cutline.stopping import interruptible
from producers.sqlite_changelog import ROWID, quote_identifier
from schemas.operation_runs import Run, RunLayout
from schemas.records import Column, ConsistencyMarker, Operation, OpType, TableDefinition

log = logging.getLogger("cutline.replica")

STATE = "_cutline_state"
TABLES = "_cutline_tables"
BUSY_TIMEOUT_MS = 10_000  # one wait for SQLite's write lock; claim() retries past it


class ApplyError(Exception):
    """An operation that cannot be applied to the replica; it goes to the dead letters."""


class ShardLocked(CutlineError):
    """The shard's previous writer kept its write lock past the claim deadline."""


class ShardFenced(Exception):
    """A newer owner claimed this shard: this writer is stale and must not write again.

    Raised inside the write transaction, so the stale writer's batch is rolled back.
    """


def shard_path(replica_dir: Path, source: str, partition: int) -> Path:
    return Path(replica_dir) / source / f"partition-{partition:04d}.sqlite"


@dataclass(frozen=True)
class ShardState:
    offset: int  # last offset applied or skipped; -1 before the first record
    since_marker: int  # operations applied since the last marker
    marker_id: int  # last marker reached (0: none)
    marker_offset: int  # its offset (-1: none)
    held: bool  # paused at that marker, cut not resolved yet
    marker_t1_us: int = 0
    marker_partitions: int = 0
    marker_tables: tuple[str, ...] = ()


class Shard:
    """One partition's replica. Owned by one replication thread at a time."""

    def __init__(self, path: Path, partition: int):
        self.path = Path(path)
        self.partition = partition
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {STATE} (partition INTEGER PRIMARY KEY, "
            "offset INTEGER NOT NULL, since_marker INTEGER NOT NULL, marker_id INTEGER NOT NULL, "
            "marker_offset INTEGER NOT NULL, held INTEGER NOT NULL, marker_t1_us INTEGER NOT NULL, "
            "marker_partitions INTEGER NOT NULL, marker_tables TEXT NOT NULL)"
        )
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLES} (tbl TEXT PRIMARY KEY, ddl TEXT NOT NULL, "
            "columns TEXT NOT NULL, key_columns TEXT NOT NULL)"
        )
        self._add_owner_columns()
        # only a new shard is written here: an existing one may be write-locked by a
        # frozen previous owner, which claim() waits for, bounded
        if read_state(self.conn, partition) is None:
            self.conn.execute(
                f"INSERT OR IGNORE INTO {STATE} (partition, offset, since_marker, marker_id, "
                "marker_offset, held, marker_t1_us, marker_partitions, marker_tables) "
                "VALUES (?, -1, 0, 0, -1, 0, 0, 0, '')",
                (partition,),
            )
        self.epoch: int | None = None  # None: not claimed, writes are not fenced
        self._statements: dict[tuple[str, OpType], tuple[str, tuple[str, ...]]] = {}
        self._definitions = {d.table: d for d in self.definitions()}
        self._in_batch = False
        self._batch_applied = 0
        self._bulk = BulkApplier(self)

    def _add_owner_columns(self) -> None:
        """Shards written before fencing existed get the owner columns (idempotent)."""
        have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({STATE})")}
        if {"owner_epoch", "owner"} <= have:
            return  # nothing to write (and no write lock to wait for)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({STATE})")}
            if "owner_epoch" not in have:
                self.conn.execute(
                    f"ALTER TABLE {STATE} ADD COLUMN owner_epoch INTEGER NOT NULL DEFAULT 0"
                )
            if "owner" not in have:
                self.conn.execute(f"ALTER TABLE {STATE} ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # -- ownership: fencing stale writers -------------------------------------------------

    def claim(self, owner: str, deadline_s: float = 120.0) -> int:
        """Become the shard's only writer: bump its owner epoch and remember ours.

        Called by a process when the group assigns it the partition. Every later write of
        this object checks, inside its write transaction, that the epoch is still ours, so
        a writer that was replaced (a zombie process, a thread that did not stop in time)
        can never write again, even if it wakes up mid-batch.

        A previous writer frozen inside a batch (SIGSTOP, a VM pause) still holds the
        shard's write lock: the claim waits for it up to ``deadline_s``, then raises
        ShardLocked. The frozen batch then commits first, as it would have anyway.
        """
        with interruptible():  # the wait for a frozen writer may end on SIGINT/SIGTERM
            self._begin_claim(deadline_s)
        try:
            self.conn.execute(
                f"UPDATE {STATE} SET owner_epoch = owner_epoch + 1, owner = ? WHERE partition = ?",
                (owner, self.partition),
            )
            (epoch,) = self.conn.execute(
                f"SELECT owner_epoch FROM {STATE} WHERE partition = ?", (self.partition,)
            ).fetchone()
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.epoch = int(epoch)
        return self.epoch

    def _begin_claim(self, deadline_s: float) -> None:
        """BEGIN IMMEDIATE, retried while another writer holds the lock, until the deadline."""
        end = time.monotonic() + deadline_s
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                (owner,) = self.conn.execute(
                    f"SELECT owner FROM {STATE} WHERE partition = ?", (self.partition,)
                ).fetchone()
                if time.monotonic() >= end:
                    raise ShardLocked(
                        f"partition {self.partition}: shard {self.path} stayed locked by its "
                        f"previous writer {owner!r} for over {deadline_s:.0f} s; that process "
                        "is frozen or stuck: kill it, and this partition is taken over"
                    ) from exc
                log.warning(
                    "partition %s: shard %s is locked by its previous writer %r (frozen?); "
                    "waiting up to %.0f s more to take it over",
                    self.partition,
                    self.path,
                    owner,
                    end - time.monotonic(),
                )

    def _check_owner(self) -> int:
        """Inside a write transaction: the recorded offset, if this writer still owns the shard."""
        epoch, owner, offset = self.conn.execute(
            f"SELECT owner_epoch, owner, offset FROM {STATE} WHERE partition = ?",
            (self.partition,),
        ).fetchone()
        if self.epoch is not None and epoch != self.epoch:
            raise ShardFenced(
                f"partition {self.partition}: shard {self.path} was claimed by {owner!r} "
                f"(epoch {epoch}) after this writer (epoch {self.epoch}); not writing"
            )
        return int(offset)

    def _write_state(self, sql: str, params: tuple, also: Callable[[], None] | None = None) -> None:
        """One fenced state update (and ``also``, in the same transaction), in the open
        batch or in a transaction of its own."""
        if self._in_batch:
            self.conn.execute(sql, params)
            if also is not None:
                also()
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._check_owner()
            self.conn.execute(sql, params)
            if also is not None:
                also()
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # -- state ----------------------------------------------------------------------------

    def state(self) -> ShardState:
        state = read_state(self.conn, self.partition)
        assert state is not None  # inserted by __init__
        return state

    def definitions(self) -> list[TableDefinition]:
        return load_definitions(self.conn)

    # -- batches: changes and the offset commit together ----------------------------------

    def begin(self) -> int:
        """Open a batch; return the offset the shard already holds (skip records up to it).

        The write lock is taken now and held to the commit, and ownership is checked under
        it: a stale writer fails here, before it changes anything. Reading the offset under
        the same lock makes apply idempotent whatever the caller remembers.
        """
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            offset = self._check_owner()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self._in_batch = True
        self._batch_applied = 0
        return offset

    def commit(self, last_offset: int) -> None:
        """Record ``last_offset`` with the batch's changes, atomically."""
        self.conn.execute(
            f"UPDATE {STATE} SET offset = ?, since_marker = since_marker + ? WHERE partition = ?",
            (last_offset, self._batch_applied, self.partition),
        )
        self.conn.execute("COMMIT")
        self._in_batch = False

    def rollback(self) -> None:
        if self._in_batch:
            self._in_batch = False
            try:
                # SQLite may have rolled back by itself (SQLITE_FULL, SQLITE_IOERR, ...)
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            except sqlite3.ProgrammingError:
                return  # closed under a stuck thread: SQLite rolled back on close
            self._definitions = {d.table: d for d in self.definitions()}
            self._statements = {}  # a rolled-back define may have changed a layout
            self._bulk.forget()

    def define(self, definition: TableDefinition) -> None:
        """Create a captured table from the primary's own DDL (native format).

        Capture sends every definition again at each start: that changes nothing. One
        marked ``reinstalled`` follows a schema change on the primary: the table is dropped
        and created from the new DDL, and the primary's whole content follows as INSERTs
        (``producers/schema_changes.py``); with no DDL, the table is no longer captured
        and is dropped. One with a higher ``incarnation`` than the shard holds (a restored
        primary, ``consumers/incarnations.py``) empties the table first.
        """
        if enter_incarnation(self.conn, definition):  # a restored primary: rows start over
            self._definitions.pop(definition.table, None)
            self._statements = {
                k: v for k, v in self._statements.items() if k[0] != definition.table
            }
            self._bulk.forget()
        known = self._definitions.get(definition.table)
        if known is not None and not definition.reinstalled:
            if known.column_names != definition.column_names:
                raise ApplyError(
                    f"table {definition.table!r} changed columns "
                    f"({','.join(known.column_names)} -> {','.join(definition.column_names)}) "
                    "in a definition not marked as re-installed by capture: set aside, the "
                    "replica keeps its layout"
                )
            changed_keys.track(self.conn, known, self.partition)  # shards older than it
            return
        self._statements = {k: v for k, v in self._statements.items() if k[0] != definition.table}
        self._bulk.forget()  # its key checks and parameter orders were for the old layout
        try:
            if known is not None:
                self.conn.execute(f"DROP TABLE IF EXISTS {quote_identifier(definition.table)}")
            changed_keys.untrack(self.conn, definition.table)
            if not definition.ddl and definition.reinstalled:  # no longer captured
                self.conn.execute(f"DELETE FROM {TABLES} WHERE tbl = ?", (definition.table,))
                self._definitions.pop(definition.table, None)
                return
            self.conn.execute(definition.ddl)
            changed_keys.track(self.conn, definition, self.partition)
        except sqlite3.Error as exc:
            raise ApplyError(f"cannot create table {definition.table!r}: {exc}") from exc
        columns = "\x1f".join(
            f"{c.name}\x1e{c.declared_type}\x1e{int(c.not_null)}" for c in definition.columns
        )
        self.conn.execute(
            f"INSERT OR REPLACE INTO {TABLES} VALUES (?, ?, ?, ?)",
            (definition.table, definition.ddl, columns, "\x1f".join(definition.key_columns)),
        )
        self._definitions[definition.table] = definition

    def apply(self, op: Operation) -> None:
        """Apply one operation inside the open batch; raise ApplyError if it cannot be."""
        definition = self._definitions.get(op.table)
        if definition is None:
            raise ApplyError(f"operation on table {op.table!r}, which was never defined")
        image = op.after if op.op is not OpType.DELETE else op.key
        if image is None:
            raise ApplyError(f"{op.op} on {op.table!r} without a row image")
        sql, names = self._statement(definition, op.op, image)
        try:
            if op.op is OpType.INSERT:
                params = [image[n] for n in names]
            elif op.op is OpType.UPDATE:
                params = [image[n] for n in names[: -len(definition.key_columns)]]
                params += [op.key[k] for k in definition.key_columns]
            else:
                params = [op.key[k] for k in definition.key_columns]
        except KeyError as exc:
            raise ApplyError(f"{op.op} on {op.table!r} lacks column {exc.args[0]!r}") from exc
        try:
            cursor = self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise ApplyError(f"{op.op} on {op.table!r} key {op.key!r} failed: {exc}") from exc
        if op.op is not OpType.INSERT and cursor.rowcount != 1:
            raise ApplyError(
                f"{op.op} on {op.table!r} matched {cursor.rowcount} rows for key {op.key!r}"
            )
        self._batch_applied += 1

    def apply_all(self, ops: list[Operation]) -> list[tuple[int, ApplyError]]:
        """Apply ``ops`` in order inside the open batch, in bulk where that is exact (see
        ``consumers.bulk_apply``); return the (index, error) of those that could not be."""
        return self._bulk.apply(ops)

    def apply_run(self, layout: RunLayout, run: Run) -> bool:
        """Apply a run of operations decoded as columns (``schemas.operation_runs``) inside
        the open batch, all or none; False (nothing applied) if any would not apply."""
        return self._bulk.apply_run(layout, run)

    def definition(self, table: str) -> TableDefinition | None:
        return self._definitions.get(table)

    def count_applied(self, n: int) -> None:
        """``n`` operations were applied in the open batch by other means than ``apply``."""
        self._batch_applied += n

    def statement(
        self, definition: TableDefinition, kind: OpType, image: dict
    ) -> tuple[str, tuple[str, ...]]:
        return self._statement(definition, kind, image)

    def _statement(
        self, definition: TableDefinition, kind: OpType, image: dict
    ) -> tuple[str, tuple[str, ...]]:
        cached = self._statements.get((definition.table, kind))
        if cached is not None:
            return cached
        table = quote_identifier(definition.table)
        keys = definition.key_columns
        where = " AND ".join(f"{quote_identifier(k)} = ?" for k in keys)
        columns = definition.column_names
        if keys == (ROWID,):
            columns = (*columns, ROWID)
        if kind is OpType.INSERT:
            names = columns
            marks = ",".join("?" * len(names))
            sql = f"INSERT INTO {table} ({','.join(map(quote_identifier, names))}) VALUES ({marks})"
        elif kind is OpType.UPDATE:
            names = tuple(c for c in definition.column_names if c not in keys)
            first = quote_identifier(keys[0])
            sets = ",".join(f"{quote_identifier(c)} = ?" for c in names) or f"{first} = {first}"
            sql = f"UPDATE {table} SET {sets} WHERE {where}"
            names = (*names, *keys)
        else:
            names = keys
            sql = f"DELETE FROM {table} WHERE {where}"
        self._statements[(definition.table, kind)] = (sql, names)
        return sql, names

    # -- markers --------------------------------------------------------------------------

    def reach_marker(self, marker: ConsistencyMarker, offset: int, *, hold: bool) -> None:
        """Record marker M at ``offset``: counting restarts, and the shard is held at M."""
        self._write_state(
            f"UPDATE {STATE} SET offset = ?, since_marker = 0, marker_id = ?, marker_offset = ?, "
            "held = ?, marker_t1_us = ?, marker_partitions = ?, marker_tables = ? "
            "WHERE partition = ?",
            (
                offset,
                marker.marker_id,
                offset,
                int(hold),
                marker.t1_us,
                marker.partitions,
                "\x1f".join(marker.tables),
                self.partition,
            ),
            also=lambda: changed_keys.start_pending(
                self.conn, self._definitions, self.partition, marker.marker_id
            ),
        )

    def release(self) -> None:
        self._write_state(f"UPDATE {STATE} SET held = 0 WHERE partition = ?", (self.partition,))

    def skip(self, offset: int) -> None:
        """Move past a record that carried no change (a dead letter) outside a batch."""
        self._write_state(
            f"UPDATE {STATE} SET offset = max(offset, ?) WHERE partition = ?",
            (offset, self.partition),
        )

    def close(self) -> None:
        self.rollback()
        self.conn.close()


def open_readonly(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def read_state(conn: sqlite3.Connection, partition: int) -> ShardState | None:
    row = conn.execute(
        "SELECT offset, since_marker, marker_id, marker_offset, held, marker_t1_us, "
        f"marker_partitions, marker_tables FROM {STATE} WHERE partition = ?",
        (partition,),
    ).fetchone()
    if row is None:
        return None
    tables = tuple(row[7].split("\x1f")) if row[7] else ()
    return ShardState(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6], tables)


def load_definitions(conn: sqlite3.Connection) -> list[TableDefinition]:
    """The table definitions a shard was given, as the primary declared them."""
    out = []
    for tbl, ddl, columns, keys in conn.execute(
        f"SELECT tbl, ddl, columns, key_columns FROM {TABLES} ORDER BY tbl"
    ):
        parts = [c.split("\x1e") for c in columns.split("\x1f")] if columns else []
        cols = tuple(Column(name, declared, flag == "1") for name, declared, flag in parts)
        out.append(TableDefinition("", tbl, ddl, cols, tuple(keys.split("\x1f"))))
    return out


def iter_rows(
    conn: sqlite3.Connection, table: str, columns: tuple[str, ...], chunk: int = 50_000
) -> Iterator[list[tuple]]:
    cursor = conn.execute(
        f"SELECT {','.join(map(quote_identifier, columns))} FROM {quote_identifier(table)}"
    )
    while rows := cursor.fetchmany(chunk):
        yield rows
