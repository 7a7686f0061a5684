"""Read transactions opened on each shard as soon as it is held at a marker.

Pinning cut M takes a read transaction on every shard while all are held at M. Opened at
READY, one after the other, that costs a few milliseconds per shard on the cut's critical
path (every partition waits for it). A shard held at M does not change until the cut
releases it, so its read transaction can be begun the moment it is held, while the other
partitions are still on their way to M: the pin at READY then only checks what each
transaction sees (:func:`consumers.snapshotter.pin_cut` with ``opened``) and opens those
that are missing (a partition of another process, or one whose early open failed).

Who calls what: the process's replication threads call :meth:`PrePins.open` through the
coordinator right after announcing a hold; the writer takes the connections with
:meth:`PrePins.take`; the coordinator discards a cut's connections once it no longer needs
them (pinned elsewhere, or resolved) and closes all of them when it stops.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

from consumers.replica import read_state, shard_path

log = logging.getLogger("cutline.coordinator")

BUSY_TIMEOUT_MS = 10_000


def open_shard_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection usable from another thread (the writer pins with it)."""
    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


class PrePins:
    """Per cut, the read transactions begun on its held shards in this process."""

    def __init__(self, replica_dir: Path, source: str):
        self.replica_dir = Path(replica_dir)
        self.source = source
        self._lock = threading.Lock()
        self._open: dict[int, dict[int, sqlite3.Connection]] = {}
        # cuts already taken or discarded: a late open (the cut pinned or resolved before
        # the thread got here) is closed at once, never left holding back checkpoints
        self._done: set[int] = set()

    def open(self, marker_id: int, partition: int) -> None:
        """Begin a read transaction on the shard of ``partition``, now held at ``marker_id``.

        Best effort: any failure only means the writer opens this shard itself at READY.
        """
        try:
            conn = open_shard_reader(shard_path(self.replica_dir, self.source, partition))
            conn.execute("BEGIN")
            read_state(conn, partition)  # the read transaction starts at the first read
        except sqlite3.Error as exc:
            log.debug("early read of partition %s for cut %s: %s", partition, marker_id, exc)
            return
        with self._lock:
            late = marker_id in self._done
            previous = None if late else self._open.setdefault(marker_id, {}).pop(partition, None)
            if not late:
                self._open[marker_id][partition] = conn
        for unused in (conn if late else None, previous):
            if unused is not None:
                _close(unused)

    def take(self, marker_id: int) -> dict[int, sqlite3.Connection]:
        """The cut's connections, now the caller's to use and close."""
        with self._lock:
            self._done.add(marker_id)
            return self._open.pop(marker_id, {})

    def discard(self, marker_id: int) -> None:
        for conn in self.take(marker_id).values():
            _close(conn)

    def close(self) -> None:
        with self._lock:
            cuts, self._open = self._open, {}
        for conns in cuts.values():
            for conn in conns.values():
                _close(conn)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(c) for c in self._open.values())


def _close(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()
