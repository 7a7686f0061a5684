"""Replication threads: apply each partition's operations to its replica shard.

A *lane* is one assigned partition: a bounded queue filled by the poll loop, the shard it
writes, and whether it is held at a marker. A :class:`ReplicationThread` serves one lane
by default (one thread per partition, as the claim says) or several with ``--threads``.

On marker M a lane compares the operations it applied since the previous marker with
the count the marker carries. Equal: the shard records "held at M" in the same place as
its offset, the lane stops applying (records behind the marker wait in its bounded
queue) and the coordinator announces "partition p reached M at offset o". Different: the cut fails
loudly (invariant 5) and the lane goes on. When the cut is pinned (the writer holds a
read transaction on every shard, taken at M: the backup no longer needs the shard to stay
at M) or resolved, the lane asks the poll loop to commit the group offset at marker offset + 1
(only if the cut was pinned or published) and resumes at once, without waiting for Kafka's
answer: it applies records while backup M is written.

A lane whose shard was claimed by a newer owner (another process after a rebalance, or
this process after a thread failed to stop in time) is *fenced*: its thread drops it
and never writes, announces or commits for that partition again.

Failpoints (``cutline.failpoints``, off unless armed): ``apply.batch`` inside an open
shard batch, ``marker.held`` once a partition is held at a marker and announced, and
``commit.before`` after a backup was published but before the offset commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import methodcaller

from confluent_kafka import Message

from consumers.alignment import CutStatus
from consumers.apply_path import apply_records, stale_marker  # noqa: F401  (stale_marker: moved)
from consumers.coordinator import CutCoordinator
from consumers.dead_letter import DeadLetters
from consumers.replica import Shard, ShardFenced
from cutline import failpoints
from cutline.kafka_errors import NotAuthorized
from cutline.metrics import NO_METRICS, Metrics
from schemas.records import ConsistencyMarker

log = logging.getLogger("cutline.replication")


@dataclass
class Hold:
    marker: ConsistencyMarker
    offset: int
    since: float = field(default_factory=time.monotonic)


@dataclass
class LaneStats:
    applied: int = 0
    dead_letters: int = 0
    markers: int = 0
    pauses_s: list[float] = field(default_factory=list)


class Lane:
    """One partition's queue, shard and hold state. The poll loop fills it; one thread drains it."""

    def __init__(self, partition: int, shard: Shard, wake: threading.Event):
        self.partition = partition
        self.shard = shard
        self.wake = wake
        state = shard.state()
        self.applied_offset = state.offset
        self.hold: Hold | None = None
        if state.held:
            marker = ConsistencyMarker(
                source="",
                marker_id=state.marker_id,
                t1_us=state.marker_t1_us,
                seq=0,
                partitions=state.marker_partitions,
                counts=(),
                tables=state.marker_tables,
            )
            self.hold = Hold(marker, state.marker_offset)
        self._queue: deque[Message] = deque()
        self._lock = threading.Lock()
        self.consumer_paused = False
        self.announced = False
        self.fenced = False  # a newer owner claimed the shard; nothing more happens here
        self.stats = LaneStats()

    def offer(self, messages: list[Message]) -> None:
        with self._lock:
            self._queue.extend(messages)
        self.wake.set()

    def take(self, limit: int) -> list[Message]:
        with self._lock:
            n = min(limit, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def push_front(self, messages: list[Message]) -> None:
        with self._lock:
            self._queue.extendleft(reversed(messages))

    def __len__(self) -> int:
        return len(self._queue)


class ReplicationThread(threading.Thread):
    """Applies operations for its lanes until stopped. Never blocks on a held lane."""

    def __init__(
        self,
        lanes: list[Lane],
        *,
        source: str,
        coordinator: CutCoordinator,
        dead_letters: DeadLetters,
        commit: Callable[[int, int], threading.Event],
        batch_size: int = 1000,
        name: str = "replication",
        metrics: Metrics = NO_METRICS,
    ):
        super().__init__(name=name, daemon=True)
        self.lanes = lanes
        self.source = source
        self.coordinator = coordinator
        self.dead_letters = dead_letters
        self.commit = commit
        self.batch_size = batch_size
        self.metrics = metrics
        self.stop_event = threading.Event()
        self.wake = lanes[0].wake if lanes else threading.Event()
        self.error: BaseException | None = None

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def run(self) -> None:
        backoff = 0.1
        while not self.stop_event.is_set():
            busy = False
            for lane in list(self.lanes):
                if self.stop_event.is_set():
                    break
                try:
                    busy |= self._work(lane)
                    backoff = 0.1
                except NotAuthorized as exc:  # an ACL is missing: retrying cannot help
                    self._rollback(lane)
                    self.error = exc
                    return
                except ShardFenced as exc:  # a newer owner has it: never touch it again
                    self._rollback(lane)
                    log.warning("%s; dropping the partition from this thread", exc)
                    lane.fenced = True
                    self.lanes.remove(lane)
                except Exception as exc:  # keep going after a transient failure, loudly
                    self._rollback(lane)
                    log.exception("partition %s: replication step failed", lane.partition)
                    self.error = exc
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
            if not busy:
                self.wake.wait(0.05)
                self.wake.clear()

    @staticmethod
    def _rollback(lane: Lane) -> None:
        """Undo a failed step's open batch; a failure here must not end the thread."""
        try:
            lane.shard.rollback()
        except Exception:
            log.exception("partition %s: rolling back the failed batch failed", lane.partition)

    # -- one step -------------------------------------------------------------------------

    def _work(self, lane: Lane) -> bool:
        if lane.hold is not None:
            return self._check_hold(lane)
        batch = lane.take(self.batch_size)
        if not batch:
            return False
        try:
            self._apply(lane, batch)
        except BaseException:
            # nothing taken may be lost: apply skips whatever the shard already holds
            lane.push_front(batch)
            raise
        return True

    def _apply(self, lane: Lane, batch: list[Message]) -> None:
        shard = lane.shard
        # what the shard holds, read under its write lock: apply stays idempotent even if
        # this lane's memory is behind the shard
        done_up_to = max(shard.begin(), lane.applied_offset)
        result = apply_records(
            shard,
            self.source,
            batch,
            offset_of=methodcaller("offset"),
            value_of=methodcaller("value"),
            done_up_to=done_up_to,
            reject=self.dead_letters.send,
        )
        self._finish_batch(lane, result.last, result.rejected)
        lane.stats.applied += result.applied
        self.metrics.applied(lane.partition, result.applied)
        if result.marker is not None:
            self._reach(lane, result.marker, result.marker_offset)  # if it fails, all is retried
            lane.push_front(list(result.rest))

    def _finish_batch(self, lane: Lane, last: int | None, dead: int) -> None:
        if last is not None:
            failpoints.hit("apply.batch", lane.partition)  # changes applied, not committed
        if dead:
            self.dead_letters.flush()  # durable before the shard moves past them
            lane.stats.dead_letters += dead
        if last is None:
            lane.shard.rollback()
            return
        lane.shard.commit(last)
        lane.applied_offset = last

    def _reach(self, lane: Lane, marker: ConsistencyMarker, offset: int) -> None:
        p = lane.partition
        applied = lane.shard.state().since_marker
        lane.stats.markers += 1
        expected = marker.counts[p] if p < len(marker.counts) else None
        if expected is None or marker.partitions != len(marker.counts):
            detail = (
                f"marker {marker.marker_id} declares {marker.partitions} partitions with "
                f"{len(marker.counts)} counts but arrived on partition {p}"
            )
        elif applied != expected:
            detail = (
                f"partition {p}: marker {marker.marker_id} says {expected} operations since the "
                f"previous marker, the replica applied {applied}"
            )
        else:
            detail = None
        if detail is not None:
            # reported before the shard moves past the marker: if the report fails (or the
            # process dies), the marker is met again and reported again, never skipped
            self.coordinator.failed(marker, p, offset, detail)
        lane.shard.reach_marker(marker, offset, hold=detail is None)
        lane.applied_offset = offset
        if detail is not None:
            return
        lane.hold = Hold(marker, offset)
        lane.announced = False
        self._check_hold(lane)

    def _check_hold(self, lane: Lane) -> bool:
        hold = lane.hold
        assert hold is not None
        if not lane.announced:
            self.coordinator.reached(hold.marker, lane.partition, hold.offset)
            lane.announced = True
            failpoints.hit("marker.held", lane.partition)
        status = self.coordinator.resolution(hold.marker.marker_id)
        if status is None:
            return False
        if status in (CutStatus.PINNED, CutStatus.PUBLISHED):  # the cut is safe: move on
            # asked for, not waited for: the commit is asynchronous and forward only, and the
            # shard (not the group offset) says where the partition restarts, so waiting for
            # Kafka's answer would only lengthen the pause (a poll-loop turn and a round trip)
            failpoints.hit("commit.before", lane.partition)
            self.commit(lane.partition, hold.offset + 1)
        lane.shard.release()
        lane.stats.pauses_s.append(time.monotonic() - hold.since)
        self.metrics.cut_pause(lane.stats.pauses_s[-1])
        lane.hold = None
        return True
