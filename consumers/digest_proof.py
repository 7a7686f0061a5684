"""The check that makes backup M the primary at T1: replica digests against the primary's.

The primary's digests of marker M (``MarkerDigest``, on the control topic after M) are
collected in a :class:`DigestBook`; the snapshotter waits for M's (bounded) and compares
them with the digests of the replica rows it backs up (:func:`mismatches`). A difference
fails the cut, naming the table and the difference; a skipped digest lets it publish
unproven, and the manifest says so.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from cutline.errors import CutlineError
from cutline.kafka_clients import make_consumer
from cutline.settings import Topics
from producers.digest import TableDigest
from schemas.codec import CodecError, decode
from schemas.records import ControlEvent, ControlKind, MarkerDigest

KEEP_DIGESTS = 10_000  # digests of the most recent markers kept in memory

# Given a marker id, the primary's digest of it; raises DigestMissing when none comes.
ProofSource = Callable[[int], MarkerDigest]


class DigestMissing(CutlineError):
    """The primary's digest of a marker did not arrive in time."""


class DigestWaitStopped(Exception):
    """The process is stopping while a cut waits for its digest: the cut is not failed,
    it stays READY and the next start takes it over (not a CutlineError on purpose, so
    no handler turns it into a failed cut)."""


class DigestBook:
    """The primary's digests by marker id, fed by a control-topic reader, read by
    snapshot threads (who wait for the one they need)."""

    def __init__(self, source: str, keep: int = KEEP_DIGESTS):
        self.source = source
        self.keep = keep
        self._digests: OrderedDict[int, MarkerDigest] = OrderedDict()
        self._changed = threading.Condition()
        self.first_digest: int | None = None  # the lowest marker id with a digest, ever
        self.resolved: set[int] = set()  # cuts the control topic says were resolved

    def add(self, digest: MarkerDigest) -> None:
        if digest.source != self.source:
            return
        with self._changed:
            self._digests[digest.marker_id] = digest
            if self.first_digest is None or digest.marker_id < self.first_digest:
                self.first_digest = digest.marker_id
            while len(self._digests) > self.keep:
                self._digests.popitem(last=False)
            self._changed.notify_all()

    def get(self, marker_id: int) -> MarkerDigest | None:
        with self._changed:
            return self._digests.get(marker_id)

    def wait(
        self, marker_id: int, timeout_s: float, stop: threading.Event | None = None
    ) -> MarkerDigest:
        """M's digest, waiting up to ``timeout_s``; DigestMissing if it does not come."""
        end = time.monotonic() + timeout_s
        with self._changed:
            while (found := self._digests.get(marker_id)) is None:
                if stop is not None and stop.is_set():
                    raise DigestWaitStopped(f"stopped while waiting for marker {marker_id}")
                left = end - time.monotonic()
                if left <= 0:
                    raise DigestMissing(
                        f"the primary's digest of marker {marker_id} did not arrive within "
                        f"{timeout_s:.0f} s (the process that cut the marker stopped before "
                        "writing it, or capture is not running); the backup is not published "
                        "unproven. Cut a new marker with `cutline mark`"
                    )
                self._changed.wait(min(left, 0.5))
        return found

    def source_for(self, timeout_s: float, stop: threading.Event | None = None) -> ProofSource:
        return lambda marker_id: self.wait(marker_id, timeout_s, stop)


def mismatches(primary: MarkerDigest, replica: Mapping[str, TableDigest]) -> list[str]:
    """Each table whose replica digest differs from the primary's, as one sentence.

    A table missing on one side counts as empty there (0 rows, hash 0).
    """
    theirs = {t.table: (t.rows, int(t.hash, 16)) for t in primary.tables}
    out = []
    for table in sorted(set(theirs) | set(replica)):
        rows, digest = theirs.get(table, (0, 0))
        mine = replica.get(table)
        have_rows, have = (mine.rows, mine.hash) if mine is not None else (0, 0)
        if (rows, digest) == (have_rows, have):
            continue
        if rows != have_rows:
            out.append(
                f"table {table!r}: the backup has {have_rows} rows, the primary had {rows} at "
                f"T1 ({have_rows - rows:+d})"
            )
        else:
            out.append(
                f"table {table!r}: same {rows} rows, but their content differs from the "
                f"primary's at T1 (digest {have:016x}, primary {digest:016x})"
            )
    return out


def read_control_digests(
    bootstrap: str, source: str, book: DigestBook, deadline_s: float = 30.0
) -> None:
    """Add every digest on ``source``'s control topic, up to its current end, to ``book``."""
    topics = Topics(source)
    consumer = make_consumer(
        bootstrap, f"{topics.control}.digests", **{"enable.partition.eof": True}
    )
    try:
        tp = TopicPartition(topics.control, 0)
        _low, high = consumer.get_watermark_offsets(tp, timeout=max(1.0, deadline_s / 3))
        if high <= 0:
            return
        consumer.assign([TopicPartition(topics.control, 0, OFFSET_BEGINNING)])
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == message.error()._PARTITION_EOF:
                    return
                continue
            try:
                record = decode(message.value())
            except CodecError:
                record = None
            if isinstance(record, MarkerDigest):
                book.add(record)
            elif (
                isinstance(record, ControlEvent)
                and record.source == source
                and record.kind is not ControlKind.REACHED
            ):
                book.resolved.add(record.marker_id)
            if message.offset() >= high - 1:
                return
    finally:
        consumer.close()


class DigestMismatch(CutlineError):
    """The replica rows of a cut differ from the primary's at T1."""


def prove(
    marker_id: int, replica: Mapping[str, TableDigest], proof: ProofSource | None
) -> dict[str, object]:
    """Check the replica's digests against the primary's; return the manifest's ``proof``.

    Raises DigestMismatch naming every table that differs, DigestMissing when the
    primary's digest never came.
    """
    if proof is None:
        return {"checked": False, "note": "written without the primary's digest"}
    primary = proof(marker_id)
    if primary.skipped:
        return {"checked": False, "note": primary.note or "the primary skipped this digest"}
    problems = mismatches(primary, replica)
    if problems:
        raise DigestMismatch(
            f"backup {marker_id} is not the primary at T1, nothing was published: "
            + "; ".join(problems)
            + ". Rebuild the replica (see README, 'Every backup carries its proof')"
        )
    return {"checked": True, "note": "every table's digest equals the primary's at T1"}


def replica_digests(tables_meta: Mapping[str, Mapping[str, object]]) -> dict[str, TableDigest]:
    """The digests the snapshotter recorded per table (``tables_meta[t]['digest']``)."""
    out = {}
    for table, meta in tables_meta.items():
        digest = meta["digest"]
        assert isinstance(digest, Mapping)
        out[table] = TableDigest(table, int(digest["rows"]), int(str(digest["hash"]), 16))
    return out


class ControlTopicDigests:
    """A ProofSource for a process that does not follow the control topic (replay): it
    reads the topic again, up to its end, until the marker's digest is there or
    ``timeout_s`` has passed."""

    def __init__(
        self,
        bootstrap: str,
        source: str,
        timeout_s: float,
        stop: threading.Event | None = None,
    ):
        self.bootstrap = bootstrap
        self.book = DigestBook(source)
        self.timeout_s = timeout_s
        self.stop = stop

    def __call__(self, marker_id: int) -> MarkerDigest:
        end = time.monotonic() + self.timeout_s
        while (found := self.book.get(marker_id)) is None:
            if self.stop is not None and self.stop.is_set():
                raise DigestWaitStopped(f"stopped while waiting for marker {marker_id}")
            left = end - time.monotonic()
            read_control_digests(self.bootstrap, self.book.source, self.book, max(5.0, left))
            if predates_digests(marker_id, self.book):
                return MarkerDigest(
                    self.book.source,
                    marker_id,
                    True,
                    (),
                    at_us=time.time_ns() // 1000,
                    note=f"marker {marker_id} was cut before the primary's digests were kept",
                )
            if self.book.get(marker_id) is None and time.monotonic() >= end:
                return self.book.wait(marker_id, 0.0)  # raises DigestMissing, saying why
            if self.book.get(marker_id) is None:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        return found


def predates_digests(marker_id: int, book: DigestBook) -> bool:
    """True for a marker cut before its source kept digests: its cut was resolved long
    ago (the control topic says so) and no digest exists for it or any earlier marker.
    Every marker since has a digest record, if only one saying "skipped"."""
    if book.get(marker_id) is not None or marker_id not in book.resolved:
        return False
    return book.first_digest is None or book.first_digest > marker_id
