"""The replay engine: applies every partition's history to fresh shards, and aligns cuts
locally (one process owns every partition, so no control topic is needed).

A partition that reaches marker M stops applying until every partition of M's declared
set reached M; then backup M is written, under the backups directory's writer lock, from
shards held at M (the snapshotter checks that). Markers that get no backup (already in
``--backups``, before ``--from-marker``, or failed) hold nothing: each partition only
records them and goes on.

The read ends at the offsets that were the end of each partition at start (read
committed, so these are the last stable offsets). A marker's transaction can straddle
those ends; a partition that has not reached a marker another partition has already
passed keeps reading past its end until it does, so the last cut is complete.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

from backups.catalog import has_backup
from backups.storage.local import LocalStorage
from consumers.apply_path import apply_records
from consumers.digest_proof import DigestWaitStopped, ProofSource
from consumers.replay.config import ReplayConfig, ReplayError
from consumers.replay.feed import Feed, FeedItem
from consumers.replay.report import CutOutcome, ReplayReport, ReplayStatus
from consumers.replica import Shard, shard_path
from consumers.snapshotter import CutPlan, SnapshotError, write_backup
from cutline.errors import DeadlineExceeded
from cutline.settings import Topics
from schemas.records import ConsistencyMarker

log = logging.getLogger("cutline.replay")

WARN_SKIPPED = 10  # skipped records reported one by one; the rest only counted


@dataclass
class _Cut:
    marker: ConsistencyMarker
    outcome: CutOutcome
    reached: dict[int, int] = field(default_factory=dict)
    detail: str | None = None

    @property
    def marker_id(self) -> int:
        return self.marker.marker_id


class _Lane:
    """One partition: its queue of records read, its shard, and where it stands."""

    def __init__(self, partition: int, shard: Shard, start: int, end: int):
        self.partition = partition
        self.shard = shard
        self.start = start
        self.end = end
        self.queue: deque[tuple[int, bytes]] = deque()
        self.received_to = start  # every record below this has been read
        self.applied_offset = start - 1
        self.held: _Cut | None = None
        self.last_marker: int | None = None  # the id of the last marker this partition met
        self.paused = False

    @property
    def consumed_to(self) -> int:
        """Every record below this offset has been applied or skipped."""
        return self.queue[0][0] if self.queue else self.received_to

    @property
    def at_end(self) -> bool:
        return self.consumed_to >= self.end

    def receive(self, item: FeedItem) -> None:
        if item.value is None:
            self.received_to = max(self.received_to, item.offset)
        elif item.offset >= self.received_to:
            self.queue.append((item.offset, item.value))
            self.received_to = item.offset + 1


class ReplayEngine:
    """Applies every partition's history to fresh shards and writes backups at markers.

    One thread does everything: it polls the feed, applies a batch per partition, and
    writes a backup inline when a cut is complete. Collaborators are passed in, so unit
    tests drive it with an in-memory feed and a fake clock.
    """

    def __init__(
        self,
        config: ReplayConfig,
        *,
        bounds: dict[int, tuple[int, int]],
        feed: Feed,
        clock: Callable[[], float] = time.monotonic,
        progress: Callable[[str], None] | None = None,
        on_status: Callable[[ReplayStatus], None] | None = None,
        proof: ProofSource | None = None,
    ):
        self.config = config
        self.proof = proof  # the primary's digests: each backup is checked against them
        self.feed = feed
        self.clock = clock
        self.progress = progress or log.info
        self.on_status = on_status
        self.partitions = len(bounds)
        self.lanes = {
            p: _Lane(p, Shard(shard_path(config.replica_dir, config.source, p), p), start, end)
            for p, (start, end) in sorted(bounds.items())
        }
        self.total = sum(max(0, end - start) for start, end in bounds.values())
        self.cuts: dict[int, _Cut] = {}
        self._open: dict[int, _Cut] = {}  # cuts waiting for partitions to reach them
        self.report = ReplayReport(until_found=False if config.until_marker is not None else None)
        self._done = False
        self._stop = threading.Event()

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> ReplayReport:
        """Replay until every partition reached its end offset (or ``--until-marker``)."""
        self._stop = stop
        last_activity = self.clock()
        try:
            while not self._done:
                if stop.is_set():
                    self.report.interrupted = True
                    break
                pending = any(lane.queue and lane.held is None for lane in self.lanes.values())
                items = self.feed.poll(0.0 if pending else 0.1)
                for item in items:
                    lane = self.lanes.get(item.partition)
                    if lane is not None:
                        lane.receive(item)
                worked = False
                for lane in self.lanes.values():
                    if self._done or stop.is_set():
                        break
                    worked |= self._step(lane)
                self._flow_control()
                self._status()
                if self._finished():
                    break
                if items or worked:
                    last_activity = self.clock()
                elif self.clock() - last_activity > self.config.idle_timeout_s:
                    raise ReplayError(self._stalled())
        finally:
            self._close()
        return self.report

    def _finished(self) -> bool:
        return not self._open and all(lane.at_end for lane in self.lanes.values())

    def _stalled(self) -> str:
        short = [
            f"partition {p} at offset {lane.consumed_to} of {lane.end}"
            for p, lane in self.lanes.items()
            if not lane.at_end
        ]
        waiting = ", ".join(short) if short else f"markers {sorted(self._open)} to complete"
        return (
            f"no record from {Topics(self.config.source).ops} for "
            f"{self.config.idle_timeout_s:.0f} s while waiting for {waiting}: check that the "
            "broker is up, then run replay again (with --force, since the replica is partial)"
        )

    def _status(self) -> None:
        self.report.records = sum(
            max(0, min(lane.consumed_to, lane.end) - lane.start) for lane in self.lanes.values()
        )
        if self.on_status is None:
            return
        done = len(self.cuts) - len(self._open)
        self.on_status(
            ReplayStatus(
                records=self.report.records,
                total=self.total,
                applied=self.report.applied,
                markers_done=done,
                markers_known=len(self.cuts),
                written=len(self.report.written),
            )
        )

    def _flow_control(self) -> None:
        """Stop fetching a partition whose queue is full (one held at a marker, or one past
        its end); fetch again once it is half drained."""
        high = self.config.queue_high
        for lane in self.lanes.values():
            if not lane.paused and len(lane.queue) >= high:
                self.feed.pause(lane.partition)
                lane.paused = True
            elif lane.paused and len(lane.queue) <= high // 2:
                self.feed.resume(lane.partition)
                lane.paused = False

    def _close(self) -> None:
        for lane in self.lanes.values():
            lane.shard.close()

    # -- one partition's batch ------------------------------------------------------------

    def _limit(self, lane: _Lane) -> float:
        """A partition stops at its end offset, unless a cut to be written waits for it."""
        behind = any(lane.partition not in cut.reached for cut in self._open.values())
        return math.inf if behind else lane.end

    def _step(self, lane: _Lane) -> bool:
        if lane.held is not None or not lane.queue:
            return False
        limit = self._limit(lane)
        if lane.queue[0][0] >= limit:
            return False
        batch: list[tuple[int, bytes]] = []
        while lane.queue and len(batch) < self.config.batch_size and lane.queue[0][0] < limit:
            batch.append(lane.queue.popleft())
        shard = lane.shard
        done_up_to = max(shard.begin(), lane.applied_offset)
        try:
            result = apply_records(
                shard,
                self.config.source,
                batch,
                offset_of=itemgetter(0),
                value_of=itemgetter(1),
                done_up_to=done_up_to,
                reject=lambda item, reason: self._skip(lane.partition, item[0], reason),
            )
            self._finish_batch(lane, result.last)
            self.report.applied += result.applied
            if result.marker is not None:
                lane.queue.extendleft(reversed(result.rest))
                self._reach(lane, result.marker, result.marker_offset)
        except BaseException:
            shard.rollback()
            raise
        return True

    def _finish_batch(self, lane: _Lane, last: int | None) -> None:
        if last is None:
            lane.shard.rollback()
            return
        lane.shard.commit(last)
        lane.applied_offset = last

    def _skip(self, partition: int, offset: int, reason: str) -> None:
        """Count a record replay moves past. It is not sent to the dead letters again:
        ``cutline replicate`` did that when it first met it."""
        self.report.skipped += 1
        if self.report.skipped <= WARN_SKIPPED:
            self.progress(f"warning: skipping partition {partition} offset {offset}: {reason}")
        if self.report.skipped == WARN_SKIPPED:
            self.progress("warning: further skipped records are only counted")

    # -- markers and cuts -----------------------------------------------------------------

    def _cut_for(self, marker: ConsistencyMarker) -> _Cut:
        cut = self.cuts.get(marker.marker_id)
        if cut is not None:
            return cut
        cfg = self.config
        if cfg.from_marker is not None and marker.marker_id < cfg.from_marker:
            outcome = CutOutcome.BEFORE
            self.report.before_from.append(marker.marker_id)
        elif has_backup(cfg.backups_dir, cfg.source, marker.marker_id):
            outcome = CutOutcome.EXISTS
            self.report.existing.append(marker.marker_id)
            self.progress(f"backup {marker.marker_id} is already in {cfg.backups_dir}: skipped")
        else:
            outcome = CutOutcome.OPEN
        cut = self.cuts[marker.marker_id] = _Cut(marker, outcome)
        if outcome is not CutOutcome.OPEN:
            self._resolved(cut)
            return cut
        self._open[cut.marker_id] = cut
        # Marker ids grow in topic order, the same in every partition: a partition that
        # already met a later marker passed this one without it, so it can never complete.
        for q, other in self.lanes.items():
            if other.last_marker is not None and other.last_marker > cut.marker_id:
                self._fail(cut, f"partition {q} reached marker {other.last_marker} without it")
                break
        return cut

    def _reach(self, lane: _Lane, marker: ConsistencyMarker, offset: int) -> None:
        """Partition ``lane`` met marker M at ``offset``: check its count, hold if M is to
        be written, and write M once every partition of its declared set is there."""
        p = lane.partition
        cut = self._cut_for(marker)
        for other in list(self._open.values()):
            if other.marker_id < cut.marker_id and p not in other.reached:
                self._fail(other, f"partition {p} reached marker {cut.marker_id} without it")
        detail = self._count_problem(lane, marker, cut, offset)
        hold = detail is None and cut.outcome is CutOutcome.OPEN
        lane.shard.reach_marker(marker, offset, hold=hold)
        lane.applied_offset = offset
        lane.last_marker = max(marker.marker_id, lane.last_marker or marker.marker_id)
        cut.reached.setdefault(p, offset)
        if detail is not None:
            if cut.outcome is CutOutcome.OPEN:
                self._fail(cut, detail)
            else:
                self.progress(f"warning: {detail} (no backup of it was to be written)")
            return
        if hold:
            lane.held = cut
            if all(q in cut.reached for q in range(marker.partitions)):
                self._write(cut)

    def _count_problem(
        self, lane: _Lane, marker: ConsistencyMarker, cut: _Cut, offset: int
    ) -> str | None:
        p = lane.partition
        if marker.partitions != len(marker.counts) or p >= marker.partitions:
            return (
                f"marker {marker.marker_id} declares {marker.partitions} partitions with "
                f"{len(marker.counts)} counts but arrived on partition {p}"
            )
        if marker.partitions > self.partitions:
            return (
                f"marker {marker.marker_id} declares {marker.partitions} partitions; the topic "
                f"has {self.partitions}"
            )
        previous = cut.reached.get(p)
        if previous is not None and previous != offset:
            return (
                f"partition {p} met marker {marker.marker_id} at offsets {previous} and "
                f"{offset} (duplicated marker id?)"
            )
        applied = lane.shard.state().since_marker
        if applied != marker.counts[p]:
            return (
                f"partition {p}: marker {marker.marker_id} says {marker.counts[p]} operations "
                f"since the previous marker, the replica applied {applied}"
            )
        return None

    def _write(self, cut: _Cut) -> None:
        """Write backup M under the writer lock, so a running replicate never races it."""
        cfg = self.config
        marker = cut.marker
        plan = CutPlan(
            source=cfg.source,
            marker_id=marker.marker_id,
            t1_us=marker.t1_us,
            partitions=marker.partitions,
            offsets={p: cut.reached[p] for p in range(marker.partitions)},
            tables=tuple(marker.tables),
        )
        lock = LocalStorage(cfg.backups_dir).lock(cfg.source)
        started = self.clock()
        try:
            try:
                lock.acquire(0.0, self._stop)
            except DeadlineExceeded:
                self.progress(
                    f"backup {marker.marker_id}: waiting up to {cfg.lock_deadline_s:.0f} s for "
                    f"the writer lock {lock.path} (another process is writing a backup)"
                )
                lock.acquire(cfg.lock_deadline_s, self._stop)
        except DeadlineExceeded as exc:
            if self._stop.is_set():
                self.report.interrupted = True
                self._done = True
                return
            self._fail(cut, str(exc))
            return
        try:
            if has_backup(cfg.backups_dir, cfg.source, marker.marker_id):
                cut.outcome = CutOutcome.EXISTS
                self.report.existing.append(marker.marker_id)
                self.progress(
                    f"backup {marker.marker_id} was written meanwhile by another process: skipped"
                )
            else:
                extra = {"full_every": cfg.full_every} if cfg.full_every > 1 else {}
                backup = write_backup(
                    cfg.replica_dir,
                    cfg.backups_dir,
                    plan,
                    writer=cfg.member,
                    proof=self.proof,
                    **extra,
                )
                cut.outcome = CutOutcome.WRITTEN
                self.report.written.append(marker.marker_id)
                rows = sum(t["rows"] for t in backup.tables.values())
                self.progress(
                    f"backup {marker.marker_id} written: primary as of T1 {backup.t1}, {rows} "
                    f"rows in {len(backup.tables)} tables ({self.clock() - started:.1f} s)"
                )
        except SnapshotError as exc:
            self._fail(cut, str(exc))
            return
        except DigestWaitStopped:  # interrupted while waiting for the primary's digest
            self.report.interrupted = True
            self._done = True
            return
        finally:
            lock.release()
        self._release(cut)
        self._resolved(cut)

    def _fail(self, cut: _Cut, detail: str) -> None:
        cut.outcome = CutOutcome.FAILED
        cut.detail = detail
        self.report.failed[cut.marker_id] = detail
        self.progress(f"cut {cut.marker_id} failed, no backup written: {detail}")
        self._release(cut)
        self._resolved(cut)

    def _release(self, cut: _Cut) -> None:
        for lane in self.lanes.values():
            if lane.held is cut:
                lane.shard.release()
                lane.held = None

    def _resolved(self, cut: _Cut) -> None:
        self._open.pop(cut.marker_id, None)
        if cut.marker_id == self.config.until_marker:
            self.report.until_found = True
            self._done = True
