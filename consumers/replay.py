"""``cutline replay``: rebuild the replica and the backups from the ops topic's history.

The ops topic is kept forever, so every cut still in it can be written again: when the
backup store is lost, or to produce backups in a new place.

It stays out of a running ``cutline replicate``'s way: it reads with its own group id
(``cutline.<source>.replay.<uuid>``) through ``assign()``, commits no offsets, has no
producer at all (so it writes neither to the control topic nor to the dead letters), and
writes backup M only while holding the backups directory's writer lock, after checking
that nobody wrote M meanwhile.

Alignment is local. One process owns every partition, so no control topic is needed: a
partition that reaches marker M stops applying until every partition of M's declared set
reached M, and then backup M is written from shards held at M (the snapshotter checks
that). Markers that get no backup (already in ``--backups``, before ``--from-marker``, or
failed) hold nothing: each partition only records them and goes on.

The read ends at the offsets that were the end of each partition at start (read
committed, so these are the last stable offsets). A marker's transaction can straddle
those ends; a partition that has not reached a marker another partition has already
passed keeps reading past its end until it does, so the last cut is complete.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumers.catalog import has_backup, source_dir
from consumers.coordinator import WriterLock
from consumers.replica import ApplyError, Shard, shard_path
from consumers.snapshotter import CutPlan, SnapshotError, write_backup
from cutline.errors import BrokerError, ConfigError, CutlineError, DeadlineExceeded
from cutline.kafka_clients import make_admin, make_consumer, wait_for_cluster
from cutline.settings import Topics
from schemas.codec import CodecError, decode
from schemas.records import ConsistencyMarker, Operation, TableDefinition

log = logging.getLogger("cutline.replay")

SHARD_GLOB = "partition-*.sqlite"
SHARD_COMPANIONS = ("-wal", "-shm", "-journal")
WARN_SKIPPED = 10  # skipped records reported one by one; the rest only counted


class ReplayError(CutlineError):
    """The replay could not finish: it says what it waited for or what to do."""


def replay_group(source: str) -> str:
    """A group id of replay's own: never the replicate group, so no offset of it moves."""
    return f"cutline.{source}.replay.{uuid.uuid4().hex[:12]}"


@dataclass
class ReplayConfig:
    bootstrap: str
    replica_dir: Path
    backups_dir: Path
    source: str = "default"
    from_marker: int | None = None
    until_marker: int | None = None
    force: bool = False
    full_every: int = 1
    idle_timeout_s: float = 60.0
    lock_deadline_s: float = 600.0
    queue_high: int = 20_000
    batch_size: int = 1000
    member: str = field(
        default_factory=lambda: (
            f"replay-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
    )


class CutOutcome(StrEnum):
    OPEN = "open"  # waiting for partitions to reach it
    WRITTEN = "written"
    EXISTS = "exists"  # already in --backups: skipped
    BEFORE = "before"  # before --from-marker: applied, no backup
    FAILED = "failed"


@dataclass
class ReplayReport:
    """What a replay did, for the summary line, ``--json`` output and tests."""

    written: list[int] = field(default_factory=list)
    existing: list[int] = field(default_factory=list)
    before_from: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    records: int = 0  # records read below the end offsets
    applied: int = 0  # operations applied to the replica
    skipped: int = 0  # malformed or unapplicable records, skipped with a warning
    interrupted: bool = False
    until_found: bool | None = None  # None without --until-marker

    def as_json(self) -> dict:
        return {
            "written": self.written,
            "existing": self.existing,
            "before_from_marker": self.before_from,
            "failed": {str(k): v for k, v in sorted(self.failed.items())},
            "records": self.records,
            "operations_applied": self.applied,
            "records_skipped": self.skipped,
            "interrupted": self.interrupted,
        }

    def summary(self) -> str:
        parts = [
            f"{self.records:,} records read, {self.applied:,} operations applied",
            f"backups written: {_ids(self.written)}",
        ]
        if self.existing:
            parts.append(f"already in --backups (skipped): {_ids(self.existing)}")
        if self.before_from:
            parts.append(f"before --from-marker (no backup): {_ids(self.before_from)}")
        if self.failed:
            parts.append(f"failed: {_ids(sorted(self.failed))}")
        if self.skipped:
            parts.append(f"{self.skipped} malformed or unapplicable records skipped")
        return ("replay interrupted: " if self.interrupted else "replay done: ") + "; ".join(parts)


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids)) if ids else "none"


@dataclass(frozen=True)
class ReplayStatus:
    """A moment of the replay, for a progress line."""

    records: int
    total: int
    applied: int
    markers_done: int
    markers_known: int
    written: int

    def detail(self) -> str:
        return (
            f"{self.applied:,} ops applied, markers {self.markers_done}/{self.markers_known} "
            f"done, {self.written} written"
        )


# -- the replica directory ----------------------------------------------------------------


def prepare_replica(
    replica_dir: Path, source: str, *, force: bool, progress: Callable[[str], None]
) -> None:
    """Refuse a replica that already has this source's shards, or wipe them with ``force``.

    Replay rebuilds from offset 0, so old shards would be applied twice. Only this
    source's shard files are removed; never use ``force`` on the replica of a running
    ``cutline replicate``.
    """
    directory = shard_path(replica_dir, source, 0).parent
    try:
        Path(replica_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--replica {replica_dir} cannot be used: {exc}") from exc
    if not os.access(replica_dir, os.W_OK):
        raise ConfigError(f"--replica {replica_dir} is not writable")
    shards = sorted(directory.glob(SHARD_GLOB)) if directory.is_dir() else []
    if not shards:
        return
    if not force:
        raise ConfigError(
            f"--replica {replica_dir} already holds {len(shards)} shards of source {source!r} "
            f"({directory}); replay rebuilds the replica from the start of the topic: pass "
            "--force to delete them first (never on the replica of a running `cutline "
            "replicate`), or give another --replica"
        )
    progress(
        f"--force: deleting the {len(shards)} replica shards of source {source!r} in "
        f"{directory} before rebuilding them"
    )
    for shard in shards:
        for path in (shard, *(Path(f"{shard}{suffix}") for suffix in SHARD_COMPANIONS)):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot delete replica shard {path}: {exc}") from exc


# -- where records come from --------------------------------------------------------------


@dataclass(frozen=True)
class FeedItem:
    """A record of the ops topic, or (``value`` None) "partition p ends at ``offset``"."""

    partition: int
    offset: int
    value: bytes | None

    @property
    def is_end(self) -> bool:
        return self.value is None


class Feed(Protocol):
    """What the replay engine reads from: the ops topic (``KafkaFeed``) or a test double."""

    def poll(self, timeout_s: float) -> list[FeedItem]: ...

    def pause(self, partition: int) -> None: ...

    def resume(self, partition: int) -> None: ...


class KafkaFeed:
    """Every partition of the ops topic through ``assign()``: no group membership, no commits."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, group_id: str):
        self.topic = topic
        self.partitions = partitions
        self._consumer = make_consumer(
            bootstrap, group_id, **{"enable.partition.eof": True, "client.id": group_id}
        )

    def bounds(self, deadline_s: float = 30.0) -> dict[int, tuple[int, int]]:
        """(first offset, end offset) of every partition now; read committed, so the end is
        the last stable offset: nothing below it belongs to an undecided transaction."""
        out: dict[int, tuple[int, int]] = {}
        end = time.monotonic() + deadline_s
        for p in range(self.partitions):
            tp = TopicPartition(self.topic, p)
            while p not in out:
                try:
                    out[p] = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                except KafkaException as exc:
                    if time.monotonic() > end:
                        raise DeadlineExceeded(
                            f"no answer for the end offsets of {self.topic} partition {p} "
                            f"within {deadline_s:.0f} s ({exc.args[0].str()})"
                        ) from exc
                    time.sleep(0.2)
        return out

    def start(self, starts: dict[int, int]) -> None:
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])

    def poll(self, timeout_s: float) -> list[FeedItem]:
        items = []
        for message in self._consumer.consume(1000, timeout_s):
            error = message.error()
            if error is None:
                items.append(FeedItem(message.partition(), message.offset(), message.value()))
            elif error.code() == KafkaError._PARTITION_EOF:
                items.append(FeedItem(message.partition(), message.offset(), None))
            elif error.fatal():
                raise BrokerError(f"reading {self.topic} failed: {error.str()}")
            else:
                log.warning("reading %s: %s", self.topic, error.str())
        return items

    def pause(self, partition: int) -> None:
        self._consumer.pause([TopicPartition(self.topic, partition)])

    def resume(self, partition: int) -> None:
        self._consumer.resume([TopicPartition(self.topic, partition)])

    def close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the replay consumer: %s", exc)


# -- the engine ---------------------------------------------------------------------------


@dataclass
class _Cut:
    marker: ConsistencyMarker
    order: int  # the n-th marker seen: markers come in the same order in every partition
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
    ):
        self.config = config
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
        shard = lane.shard
        shard.begin()
        last: int | None = None
        applied = 0
        try:
            for _ in range(self.config.batch_size):
                if not lane.queue or lane.queue[0][0] >= limit:
                    break
                offset, value = lane.queue.popleft()
                if offset <= lane.applied_offset:
                    continue
                record = self._decode(lane.partition, offset, value)
                if isinstance(record, ConsistencyMarker):
                    self._finish_batch(lane, last)
                    last = None
                    self.report.applied += applied
                    applied = 0
                    self._reach(lane, record, offset)
                    return True
                if isinstance(record, Operation):
                    try:
                        shard.apply(record)
                        applied += 1
                    except ApplyError as exc:
                        self._skip(lane.partition, offset, f"cannot apply operation: {exc}")
                elif isinstance(record, TableDefinition):
                    try:
                        shard.define(record)
                    except ApplyError as exc:
                        self._skip(lane.partition, offset, f"cannot apply table definition: {exc}")
                last = offset
        except BaseException:
            shard.rollback()
            raise
        self._finish_batch(lane, last)
        self.report.applied += applied
        return True

    def _finish_batch(self, lane: _Lane, last: int | None) -> None:
        if last is None:
            lane.shard.rollback()
            return
        lane.shard.commit(last)
        lane.applied_offset = last

    def _decode(self, partition: int, offset: int, value: bytes) -> object | None:
        """The record, or None (after a warning) for one replay cannot use."""
        try:
            record = decode(value)
        except CodecError as exc:
            self._skip(partition, offset, f"{exc.reason}: {exc}")
            return None
        source = getattr(record, "source", self.config.source)
        if source != self.config.source:
            self._skip(partition, offset, f"a record of source {source!r}")
            return None
        if not isinstance(record, Operation | TableDefinition | ConsistencyMarker):
            self._skip(partition, offset, f"a {type(record).__name__} does not belong here")
            return None
        return record

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
        cut = self.cuts[marker.marker_id] = _Cut(marker, len(self.cuts), outcome)
        if outcome is CutOutcome.OPEN:
            self._open[cut.marker_id] = cut
        else:
            self._resolved(cut)
        return cut

    def _reach(self, lane: _Lane, marker: ConsistencyMarker, offset: int) -> None:
        """Partition ``lane`` met marker M at ``offset``: check its count, hold if M is to
        be written, and write M once every partition of its declared set is there."""
        p = lane.partition
        cut = self._cut_for(marker)
        for other in list(self._open.values()):
            if other.order < cut.order and p not in other.reached:
                self._fail(other, f"partition {p} reached marker {cut.marker_id} without it")
        detail = self._count_problem(lane, marker, cut, offset)
        hold = detail is None and cut.outcome is CutOutcome.OPEN
        lane.shard.reach_marker(marker, offset, hold=hold)
        lane.applied_offset = offset
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
        lock = WriterLock(source_dir(cfg.backups_dir, cfg.source))
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
                    cfg.replica_dir, cfg.backups_dir, plan, writer=cfg.member, **extra
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


# -- the command ----------------------------------------------------------------------------


def ops_partitions(bootstrap: str, topic: str, source: str) -> int:
    """The ops topic's partition count; replay never creates topics."""
    found = make_admin(bootstrap).list_topics(timeout=10).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ReplayError(
            f"topic {topic} does not exist, so there is nothing to replay for source "
            f"{source!r}: check --source and --bootstrap-servers"
        )
    return len(found.partitions)


def run_replay(
    config: ReplayConfig,
    stop: threading.Event,
    *,
    progress: Callable[[str], None] | None = None,
    on_status: Callable[[ReplayStatus], None] | None = None,
) -> ReplayReport:
    """Replay the ops topic of ``config.source`` into fresh shards and backups."""
    say = progress or log.info
    if (
        config.from_marker is not None
        and config.until_marker is not None
        and config.from_marker > config.until_marker
    ):
        raise ConfigError(
            f"--from-marker {config.from_marker} is after --until-marker {config.until_marker}"
        )
    if config.full_every < 1:
        raise ConfigError("--full-every must be at least 1")
    try:
        Path(config.backups_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--backups {config.backups_dir} cannot be used: {exc}") from exc
    if not os.access(config.backups_dir, os.W_OK):
        raise ConfigError(f"--backups {config.backups_dir} is not writable")
    wait_for_cluster(config.bootstrap, deadline_s=10.0)
    topics = Topics(config.source)
    partitions = ops_partitions(config.bootstrap, topics.ops, config.source)
    prepare_replica(config.replica_dir, config.source, force=config.force, progress=say)
    group = replay_group(config.source)
    feed = KafkaFeed(config.bootstrap, topics.ops, partitions, group)
    try:
        bounds = feed.bounds()
        total = sum(max(0, end - start) for start, end in bounds.values())
        say(
            f"replaying {topics.ops} ({partitions} partitions, {total:,} records up to the "
            f"current end, group {group}) into {config.replica_dir}, backups under "
            f"{config.backups_dir}"
        )
        feed.start({p: start for p, (start, _) in bounds.items()})
        engine = ReplayEngine(config, bounds=bounds, feed=feed, progress=say, on_status=on_status)
        report = engine.run(stop)
    finally:
        feed.close()
    if report.until_found is False and not report.interrupted:
        known = sorted(engine.cuts)
        raise ReplayError(
            f"--until-marker {config.until_marker} is not in {topics.ops} (markers seen: "
            f"{_ids(known)}); {report.summary()}"
        )
    return report
