"""The workload driver: seeded random transactions on the primary, and cuts between them.

Every kind of change replication must get right is in the mix: inserts, updates and
deletes on four tables, transactions that touch rows in different partitions (a
transfer moves money between two accounts), primary-key changes (a row moves to another
key, so most likely to another partition), bulk updates, and now and then a schema change
(ADD, RENAME and DROP COLUMN, and a table migration that changes a key), which capture
must follow mid-run. Markers are cut through
:meth:`Pipeline.cut`, which records the primary's exact rows at each marker's commit
boundary: that record is the oracle every backup is checked against.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from dataclasses import dataclass

from producers.schema_changes import migrate
from tests.integration.pipeline import Pipeline
from tests.integration.workload import transfer

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


def real(rng: random.Random, scale: float = 1.0) -> float:
    """A REAL at full precision (16-17 significant digits), as applications write them."""
    return rng.random() * scale


class Workload:
    """Writes to the primary from one connection; reproducible for a given seed."""

    def __init__(self, pipeline: Pipeline, seed: int):
        self.pipeline = pipeline
        self.rng = random.Random(seed)
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
        choice = rng.random()
        if choice < 0.40 and len(ids) >= 2:
            transfer(conn, rng, ids)
        elif choice < 0.50:
            new = self._new_id()
            conn.execute(
                "INSERT INTO accounts VALUES (?, ?, 0, ?, NULL)", (new, f"new-{new}", real(rng))
            )
            conn.execute("INSERT INTO tags VALUES (?, 'new')", (new,))
        elif choice < 0.57:
            conn.execute(
                "DELETE FROM transfers WHERE id IN (SELECT id FROM transfers ORDER BY random() "
                "LIMIT 2)"
            )
        elif choice < 0.63 and ids:
            # a primary-key change: the row moves to another key (and likely partition)
            old = rng.choice(ids)
            conn.execute("UPDATE accounts SET id = ? WHERE id = ?", (self._new_id(), old))
        elif choice < 0.67:
            # a key change in a WITHOUT ROWID table with a composite key
            conn.execute(
                "UPDATE tags SET tag = tag || '+' WHERE (account, tag) IN "
                "(SELECT account, tag FROM tags ORDER BY random() LIMIT 1)"
            )
        elif choice < 0.80:
            conn.execute(
                "INSERT INTO events (kind, payload) VALUES (?, ?)",
                ("tick", rng.randbytes(rng.randint(0, 8))),
            )
        elif choice < 0.85:
            conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY random() LIMIT 3)"
            )
        elif choice < 0.92 and ids:
            # a bulk update over many partitions in one transaction
            for account in rng.sample(ids, min(6, len(ids))):
                conn.execute("UPDATE accounts SET rate = ? WHERE id = ?", (real(rng), account))
        elif ids:
            conn.execute(
                "UPDATE accounts SET rate = ?, avatar = ? WHERE id = ?",
                (real(rng, 1e6), rng.randbytes(4), rng.choice(ids)),
            )
