"""Capture backlog: changes committed on the primary and not yet published to Kafka.

Why it matters: a capture that is stopped, stuck or slower than the primary's writers
shows here first (the change log grows and its oldest change ages) long before backups
go missing. Read from the change log itself, so it works whether capture runs or not.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from producers.sqlite_changelog import CHANGES


@dataclass(frozen=True)
class Backlog:
    changes: int  # newest seq on the primary minus the seq published to Kafka
    oldest_at_us: int | None  # commit time of the oldest unpublished change

    def age_s(self, now_us: int | None = None) -> float:
        if self.oldest_at_us is None:
            return 0.0
        now = time.time_ns() // 1000 if now_us is None else now_us
        return max(0.0, (now - self.oldest_at_us) / 1e6)


def capture_backlog(conn: sqlite3.Connection, published_seq: int) -> Backlog:
    """The backlog after ``published_seq``: two index lookups on the change log."""
    try:
        newest = conn.execute(f"SELECT max(seq) FROM {CHANGES}").fetchone()[0]
        oldest = conn.execute(
            f"SELECT at_us FROM {CHANGES} WHERE seq > ? ORDER BY seq LIMIT 1", (published_seq,)
        ).fetchone()
    except sqlite3.OperationalError:  # capture never installed on this primary
        return Backlog(0, None)
    return Backlog(max(0, (newest or 0) - published_seq), oldest[0] if oldest else None)
