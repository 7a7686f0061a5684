"""The workload driver: seeded random transactions on the primary, and cuts between them.

Every kind of change replication must get right is in the mix (``tests/faults/statements``):
inserts, updates and deletes on four tables, transactions that touch rows in different
partitions (a transfer moves money between two accounts), primary-key changes (a row moves
to another key, so most likely to another partition), and bulk updates; more statement
forms are added there, by name. Markers are cut through
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

from tests.faults.statements import DEFAULT_KINDS, Change, StatementKind, pick_and_run
from tests.integration.pipeline import Pipeline


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
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._one_change(conn, rng)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.stats.transactions += 1

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _one_change(self, conn: sqlite3.Connection, rng: random.Random) -> None:
        ids = [r[0] for r in conn.execute("SELECT id FROM accounts")]
        ran = pick_and_run(self.kinds, Change(conn, rng, ids, self._new_id))
        if ran is not None:
            self.stats.kinds[ran] += 1
