"""The workload driver: seeded random transactions on the primary, and cuts between them.

Every kind of change replication must get right is in the mix (``tests/faults/statements``):
inserts, updates and deletes on four tables, transactions that touch rows in different
partitions (a transfer moves money between two accounts), primary-key changes (a row moves
to another key, so most likely to another partition), and bulk updates; more statement
forms are added there, by name. Between markers, at seeded random points, come the mid-run
events: a schema change (ADD, RENAME and DROP COLUMN, and SQLite's create-copy-drop-rename
migration that changes a key) that capture must follow, and a long write transaction
(holding the primary's write lock for seconds, writing as it goes) that capture and a
``cutline mark`` started meanwhile must wait out. Markers are cut through
:meth:`Pipeline.cut`, which records the primary's exact rows (and each table's layout) at
each marker's commit boundary: that record is the oracle every backup is checked against.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from producers.schema_changes import migrate
from tests.faults.primary import FaultPipeline
from tests.faults.statements import DEFAULT_KINDS, Change, StatementKind, pick_and_run

SCHEMA_CHANGE_RATE = 0.005  # of transactions: a few per run, at seeded random points
LONG_TRANSACTION_RATE = 0.0015  # of transactions: a few per run
LONG_TRANSACTION_S = (2.0, 4.0)  # how long one holds the write lock (capture polls far faster)
MARK_WAIT_DEADLINE_S = 30.0  # for the `cutline mark` started inside it to say it waits
MID_RUN_EVENTS = ("add-column", "rename-column", "drop-column", "migration", "long-transaction")

# SQLite's create-copy-drop-rename recipe, in one transaction; the key's order flips
TAGS_MIGRATION = """
BEGIN;
CREATE TABLE tags_new (account INTEGER, tag TEXT, PRIMARY KEY ({key})) WITHOUT ROWID;
INSERT INTO tags_new SELECT account, tag FROM tags;
DROP TABLE tags;
ALTER TABLE tags_new RENAME TO tags;
COMMIT;
"""


@dataclass
class WorkloadStats:
    transactions: int = 0
    cuts: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # statement kind -> times run
    events: Counter[str] = field(default_factory=Counter)  # mid-run event -> times run


class Workload:
    """Writes to the primary from one connection; reproducible for a given seed."""

    def __init__(
        self, pipeline: FaultPipeline, seed: int, kinds: Sequence[StatementKind] = DEFAULT_KINDS
    ):
        self.pipeline = pipeline
        self.rng = random.Random(seed)
        self.kinds = tuple(kinds)
        self.stats = WorkloadStats()
        # used by the workload thread and, between runs of it, by the scenario
        self.conn = sqlite3.connect(
            pipeline.db, timeout=30, isolation_level=None, check_same_thread=False
        )
        self.conn.execute("PRAGMA busy_timeout = 30000")
        self.conn.execute("PRAGMA foreign_keys = ON")  # cascades (recursive_triggers stays off)
        self._next_id = 100_000
        self._migrations = 0
        self._marks = 0

    def close(self) -> None:
        self.conn.close()

    def cut(self) -> int:
        """Commit a marker; the oracle now holds the primary's rows at it."""
        ticket = self.pipeline.cut(self.conn)
        self.stats.cuts += 1
        return ticket.marker_id

    def run(
        self, stop: threading.Event, *, cut_every_s: tuple[float, float], pace_s: float = 0.004
    ) -> None:
        """Transactions until ``stop``, a cut every ``cut_every_s`` (a random range)."""
        next_cut = time.monotonic() + self.rng.uniform(*cut_every_s)
        while not stop.is_set():
            self.transaction()
            if time.monotonic() >= next_cut:
                self.cut()
                next_cut = time.monotonic() + self.rng.uniform(*cut_every_s)
            time.sleep(self.rng.random() * pace_s)

    def transaction(self) -> None:
        """One random write transaction (several statements, one commit)."""
        conn, rng = self.conn, self.rng
        event = rng.random()
        if event < SCHEMA_CHANGE_RATE:
            self.schema_change()
            return
        if event < SCHEMA_CHANGE_RATE + LONG_TRANSACTION_RATE:
            self.long_transaction()
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._one_change(conn, rng)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.stats.transactions += 1

    def next_schema_changes(self) -> tuple[str, ...]:
        """The schema changes possible now: events's extra column goes ADD, RENAME, DROP
        (in that order), and the migration of tags may come at any point."""
        columns = [r[1] for r in self.conn.execute("PRAGMA table_info(events)")]
        if "note" in columns:
            return ("rename-column", "migration")
        if "remark" in columns:
            return ("drop-column", "migration")
        return ("add-column", "migration")

    def schema_change(self, step: str | None = None) -> str:
        """One schema change, in its own transaction: ``step`` (one of
        :meth:`next_schema_changes`), or a seeded choice among them. Every statement kind
        stays valid after it."""
        conn = self.conn
        step = step or self.rng.choice(self.next_schema_changes())
        if step not in self.next_schema_changes():
            raise ValueError(f"schema change {step} is not possible now")
        if step == "add-column":
            conn.execute("ALTER TABLE events ADD COLUMN note TEXT DEFAULT 'n'")
        elif step == "rename-column":
            conn.execute("ALTER TABLE events RENAME COLUMN note TO remark")
        elif step == "drop-column":  # SQLite refuses it while capture's triggers read the column
            migrate(conn, "ALTER TABLE events DROP COLUMN remark")
        else:  # SQLite's recipe; the key's column order flips each time
            self._migrations += 1
            key = "tag, account" if self._migrations % 2 else "account, tag"
            conn.executescript(TAGS_MIGRATION.format(key=key))
        self.stats.events[step] += 1
        self.stats.transactions += 1
        return step

    def long_transaction(self) -> int:
        """Hold the write lock for seconds, writing, while a ``cutline mark`` waits for it.

        The transaction lasts a seeded 2-4 s and at least until the mark says it is waiting
        (its Python start-up may be slow on a loaded machine; bounded by a deadline). After
        the commit the mark takes the lock; nothing else writes the captured tables until
        it exits, so the primary read then is the primary at its marker: the oracle.
        Returns the mark's marker id.
        """
        conn, rng = self.conn, self.rng
        self._marks += 1
        hold_until = time.monotonic() + rng.uniform(*LONG_TRANSACTION_S)
        give_up = time.monotonic() + MARK_WAIT_DEADLINE_S
        conn.execute("BEGIN IMMEDIATE")  # first: the mark must come after this transaction
        mark, log = self.pipeline.start_mark(f"mark-{self._marks}")
        try:
            while time.monotonic() < hold_until or (
                not self.pipeline.waits_logged(log) and time.monotonic() < give_up
            ):
                self._one_change(conn, rng)
                time.sleep(0.1)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            mark.kill()
            mark.wait(10)
            raise
        self.stats.transactions += 1
        self.stats.events["long-transaction"] += 1
        if self.pipeline.waits_logged(log):
            self.stats.events["mark-waited"] += 1
        marker_id = self.pipeline.finish_mark(mark, log)
        self.pipeline.record_marker(marker_id, conn)
        self.stats.cuts += 1
        return marker_id

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _one_change(self, conn: sqlite3.Connection, rng: random.Random) -> None:
        ids = [r[0] for r in conn.execute("SELECT id FROM accounts")]
        ran = pick_and_run(self.kinds, Change(conn, rng, ids, self._new_id))
        if ran is not None:
            self.stats.kinds[ran] += 1
