"""``capture --mark-every``: markers cut on a thread of their own, with their own connection.

The primary's digest at a marker reads every captured row (about 4 s per million rows);
on capture's own thread that would stop publishing for as long. Here it runs beside the
loop: the marker commits at once, capture keeps publishing, and the digest's ``G`` row
follows when it is ready. A new marker is cut only once the previous one is finished, so
markers never pile up behind slow digests (the interval stretches instead). A marker that
failed is raised on capture's thread, which stops loudly as before, except when an
application held the write lock past ``--lock-timeout``: that only delays the marker (or,
after its commit, leaves it without a digest, so its cut fails, saying so), and is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from producers.initial_snapshot import SnapshotInProgress
from producers.markers import request_marker
from producers.sqlite_changelog import connect
from producers.write_lock import DEFAULT_LOCK_TIMEOUT_S, PrimaryLocked

log = logging.getLogger("cutline.capture")


class BackgroundMarks:
    """One marker at a time, on a daemon thread; ``raise_failure`` reports its error."""

    def __init__(
        self,
        db_path: str | Path,
        digest_every: int = 1,
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        on_locked: Callable[[str], None] | None = None,
    ):
        self.db_path = db_path
        self.digest_every = digest_every
        self.lock_timeout_s = lock_timeout_s
        self.on_locked = on_locked or log.warning
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def idle(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def start(self, note: str) -> bool:
        """Cut a marker unless one is still being cut; True if one was started."""
        if not self.idle():
            return False
        self._thread = threading.Thread(target=self._run, args=(note,), name="mark", daemon=True)
        self._thread.start()
        return True

    def _run(self, note: str) -> None:
        try:
            conn = connect(self.db_path)
            try:
                ticket = request_marker(
                    conn,
                    note=note,
                    digest_every=self.digest_every,
                    lock_timeout_s=self.lock_timeout_s,
                )
                log.debug("requested marker %s", ticket.marker_id)
            finally:
                conn.close()
        except PrimaryLocked as exc:  # an application's long write: not capture's failure
            self.on_locked(f"the next --mark-every marker: {exc}")
        except SnapshotInProgress as exc:  # the initial snapshot is not finished yet: later
            log.info("the next --mark-every marker waits: %s", exc)
        except BaseException as exc:  # reported on capture's thread
            self._failure = exc

    def raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def join(self, deadline_s: float) -> None:
        """Let a marker being cut write its digest before capture stops."""
        if self._thread is not None:
            self._thread.join(deadline_s)
            if self._thread.is_alive():
                log.warning("a marker's digest was still being computed after %.0f s", deadline_s)
