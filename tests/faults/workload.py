"""The workload driver: seeded random transactions on the primary, and cuts between them.

Every kind of change replication must get right is in the mix (``tests/faults/statements``):
inserts, updates and deletes on four tables, transactions that touch rows in different
partitions (a transfer moves money between two accounts), primary-key changes (a row moves
to another key, so most likely to another partition), and bulk updates; more statement
forms are added there, by name. Now and then a schema change (ADD, RENAME and DROP COLUMN,
and a table migration that changes a key) must be followed by capture mid-run. Markers are
cut through
:meth:`Pipeline.cut`, which records the primary's exact rows at each marker's commit
boundary: that record is the oracle every backup is checked against.
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
from tests.faults.statements import DEFAULT_KINDS, Change, StatementKind, pick_and_run
from tests.integration.pipeline import Pipeline

SCHEMA_CHANGE_RATE = 0.003  # of transactions: about one a second at the default pace

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


class Workload:
    """Writes to the primary from one connection; reproducible for a given seed."""

    def __init__(
        self, pipeline: Pipeline, seed: int, kinds: Sequence[StatementKind] = DEFAULT_KINDS
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
        self._next_id = 100_000
        self._schema_changes = 0

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
        if rng.random() < SCHEMA_CHANGE_RATE:
            self._schema_change(conn)
            self.stats.transactions += 1
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._one_change(conn, rng)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.stats.transactions += 1

    def _schema_change(self, conn: sqlite3.Connection) -> None:
        """The next step of a cycle of schema changes; every other statement stays valid."""
        step = self._schema_changes % 4
        self._schema_changes += 1
        if step == 0:
            conn.execute("ALTER TABLE events ADD COLUMN note TEXT DEFAULT 'n'")
        elif step == 1:
            conn.execute("ALTER TABLE events RENAME COLUMN note TO remark")
        elif step == 2:  # SQLite refuses it while capture's triggers read the column
            migrate(conn, "ALTER TABLE events DROP COLUMN remark")
        else:
            key = "tag, account" if self._schema_changes % 8 == 4 else "account, tag"
            conn.executescript(TAGS_MIGRATION.format(key=key))

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _one_change(self, conn: sqlite3.Connection, rng: random.Random) -> None:
        ids = [r[0] for r in conn.execute("SELECT id FROM accounts")]
        ran = pick_and_run(self.kinds, Change(conn, rng, ids, self._new_id))
        if ran is not None:
            self.stats.kinds[ran] += 1
