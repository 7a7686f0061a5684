"""Taking the primary's write lock while an application may hold it for a long time.

SQLite has one writer at a time. An application's long write transaction (a migration, a
bulk load) holds the lock for as long as it likes; cutline's own short writes (install,
marker requests, trimming the change log) must wait it out, say that they are waiting,
and give up with one clear line at a deadline the user chose (``--lock-timeout``), never
die with ``database is locked`` after SQLite's busy timeout.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from cutline.errors import CutlineError

log = logging.getLogger("cutline.capture")

DEFAULT_LOCK_TIMEOUT_S = 60.0
ATTEMPT_MS = 1000  # SQLite's own busy wait per attempt; the loop around it has the deadline
NOTE_EVERY_S = 5.0


class PrimaryLocked(CutlineError):
    """Another connection kept the primary's write lock past the deadline."""


def is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def begin_write(
    conn: sqlite3.Connection,
    what: str,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
) -> None:
    """``BEGIN IMMEDIATE``, waiting up to ``lock_timeout_s`` for another writer to finish.

    Logs a line every few seconds while it waits; raises :class:`PrimaryLocked` with one
    line that says what to do once the deadline passes. The caller commits or rolls back.
    """
    _execute_waiting(conn, "BEGIN IMMEDIATE", what, lock_timeout_s, progress)


def use_wal(
    conn: sqlite3.Connection,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Switch the primary to WAL (readers never block writers), waiting out other writers."""
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    if str(mode).lower() != "wal":
        _execute_waiting(
            conn, "PRAGMA journal_mode = WAL", "switching to WAL", lock_timeout_s, progress
        )


def _execute_waiting(
    conn: sqlite3.Connection,
    sql: str,
    what: str,
    lock_timeout_s: float,
    progress: Callable[[str], None] | None,
) -> None:
    note = progress or log.warning
    start = time.monotonic()
    next_note = start + 1.0
    (saved,) = conn.execute("PRAGMA busy_timeout").fetchone()
    attempt_ms = max(0, min(ATTEMPT_MS, int(lock_timeout_s * 1000)))
    conn.execute(f"PRAGMA busy_timeout = {attempt_ms}")
    try:
        while True:
            try:
                conn.execute(sql)
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                now = time.monotonic()
                if now - start >= lock_timeout_s:
                    raise PrimaryLocked(
                        f"{what}: another connection held the primary's write lock for over "
                        f"{lock_timeout_s:.0f} s; finish or end that write transaction, or "
                        "raise --lock-timeout, and run this again"
                    ) from None
                if now >= next_note:
                    note(
                        f"waiting for the primary's write lock held by another connection "
                        f"({what}; waited {now - start:.0f} s of {lock_timeout_s:.0f} s)"
                    )
                    next_note = now + NOTE_EVERY_S
                if attempt_ms == 0:
                    time.sleep(0.01)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(saved)}")


def try_begin_write(conn: sqlite3.Connection, wait_ms: int = 50) -> bool:
    """``BEGIN IMMEDIATE`` if the lock is free within ``wait_ms``; False if another has it."""
    (saved,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
    try:
        conn.execute("BEGIN IMMEDIATE")
        return True
    except sqlite3.OperationalError as exc:
        if not is_busy(exc):
            raise
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(saved)}")
