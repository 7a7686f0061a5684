"""One replication process: a member of the source's consumer group.

The poll loop (this module) owns the Kafka consumer: it routes each partition's records
to that partition's lane, pauses a partition's fetching while its lane's queue is full,
commits offsets on behalf of the replication threads, and handles rebalances.

Where a partition starts is decided by its replica shard, never by the group's
committed offset: the shard's offset was recorded with the data, so resuming from it
can neither lose nor repeat a change. A partition without a
shard is rebuilt from the start of the topic.

Group offsets are committed only at markers whose cut is pinned or published (marker
offset + 1), and only forward; threads ask for the commit and resume without waiting for
Kafka's answer (the poll loop sends it on its next turn, and before partitions are let go).
On assignment the process claims each shard (a new owner epoch),
which fences any stale writer of it: a zombie process or a thread that did not stop.
A zombie's offset commits are refused by Kafka itself (its group generation is stale).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from backups.retention import RetentionPolicy
from consumers.coordinator import CutCoordinator
from consumers.dead_letter import DeadLetters
from consumers.health import check_threads
from consumers.history import (
    TopicIdentity,
    ops_topic_id_path,
    refusal_on_assign,
    warn_if_history_expires,
)
from consumers.offset_commits import PendingCommits
from consumers.replica import Shard, shard_path
from consumers.replication import Lane, ReplicationThread
from cutline.digest_options import DEFAULT_DIGEST_TIMEOUT_S
from cutline.directories import writable_directory
from cutline.errors import BrokerError, ConfigError
from cutline.kafka_clients import (
    committed_within,
    ensure_topics,
    make_consumer,
    make_producer,
    source_topic_specs,
    wait_for_cluster,
    wait_for_topic,
)
from cutline.kafka_errors import describe_read_refused, is_authorization
from cutline.metrics import NO_METRICS, Metrics
from cutline.settings import Topics
from cutline.source_names import ops_topic_hint
from cutline.stopping import interruptible

log = logging.getLogger("cutline.replicator")

GIL_SWITCH_INTERVAL_S = 0.001
CLAIM_DEADLINE_S = 120.0  # for all shard claims of one assignment (max.poll.interval: 300 s)


@dataclass
class ReplicateConfig:
    bootstrap: str
    replica_dir: Path
    backups_dir: Path
    source: str = "default"
    threads: int | None = None  # None: one replication thread per assigned partition
    alignment_timeout_s: float = 120.0
    queue_high: int = 20_000
    batch_size: int = 1000
    topic_wait_s: float = 120.0
    session_timeout_s: float = 15.0  # how long the group waits for a silent process
    full_every: int = 1  # a full backup every N; incrementals in between
    digest_timeout_s: float = DEFAULT_DIGEST_TIMEOUT_S  # wait for the primary's digest
    retention: RetentionPolicy | None = None  # pruned after each backup published here
    member: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )


@dataclass
class ReplicatorStats:
    applied: int = 0
    dead_letters: int = 0
    rebalances: int = 0
    pauses_s: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class Replicator:
    def __init__(
        self,
        config: ReplicateConfig,
        *,
        progress: Callable[[str], None] | None = None,
        metrics: Metrics = NO_METRICS,
    ):
        if config.threads is not None and config.threads < 1:
            raise ConfigError("--threads must be at least 1")
        self.config = config
        self.topics = Topics(config.source)
        self.progress = progress or log.info
        self.stats = ReplicatorStats()
        self.metrics = metrics
        self._status_mark = (time.monotonic(), 0)  # for the current rate of status lines
        self.lanes: dict[int, Lane] = {}
        self.threads: list[ReplicationThread] = []
        self._committed: dict[int, int] = {}
        self._commit_requests: queue.SimpleQueue = queue.SimpleQueue()
        self._pending_commits = PendingCommits()  # sent, not yet answered by Kafka
        self._consumer = None
        self._producer = None
        self.coordinator: CutCoordinator | None = None
        self.dead_letters: DeadLetters | None = None
        self._refusal: Exception | None = None  # set on assignment: the history is not there
        self._wakes: list[threading.Event] = []  # one per replication thread, replaced whole

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        cfg = self.config
        for label, path in (("--replica", cfg.replica_dir), ("--backups", cfg.backups_dir)):
            writable_directory(label, path)
        with interruptible():  # start-up waits: SIGINT/SIGTERM ends them at once
            wait_for_cluster(cfg.bootstrap, deadline_s=10.0)
            wait_for_topic(
                cfg.bootstrap,
                self.topics.ops,
                cfg.topic_wait_s,
                ops_topic_hint(cfg.bootstrap, cfg.source),  # names the sources there are
                self.progress,
            )
            # the single-partition topics replication writes to; capture creates the ops topic.
            # Only once the ops topic exists: a typo'd --source leaves no topics behind.
            mine = (self.topics.control, self.topics.dead_letter)
            ensure_topics(
                cfg.bootstrap, [s for s in source_topic_specs(self.topics, 1) if s.name in mine]
            )
        warn_if_history_expires(cfg.bootstrap, self.topics.ops, self.progress)
        # the cut's path (control events, the pin, waking held threads) runs on threads that
        # wait for the GIL behind replication threads applying records: a 1 ms switch
        # interval (Python's default is 5 ms) keeps each of its many hand-offs short
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self._producer = make_producer(cfg.bootstrap, **{"linger.ms": 0})
        self.dead_letters = DeadLetters(self._producer, self.topics.dead_letter, self.metrics)
        self.coordinator = CutCoordinator(
            bootstrap=cfg.bootstrap,
            source=cfg.source,
            member=cfg.member,
            replica_dir=cfg.replica_dir,
            backups_dir=cfg.backups_dir,
            producer=self._producer,
            alignment_timeout_s=cfg.alignment_timeout_s,
            full_every=cfg.full_every,
            digest_timeout_s=cfg.digest_timeout_s,
            retention=cfg.retention,
            progress=self.progress,
            metrics=self.metrics,
        )
        self.coordinator.on_release = self._wake_threads  # a pinned cut resumes at once
        self.coordinator.start()
        self._consumer = make_consumer(
            cfg.bootstrap,
            self.topics.replication_group,
            **{
                "client.id": cfg.member,
                "session.timeout.ms": int(cfg.session_timeout_s * 1000),
                "heartbeat.interval.ms": 1000,  # notice a rebalance within ~1 s, not 3
                "max.poll.interval.ms": 300000,
                # a fetch offset out of range is reported, never skipped over (see
                # _out_of_range); every assigned partition starts at an explicit offset
                "auto.offset.reset": "error",
                "on_commit": self._pending_commits.answered,
            },
        )
        self._consumer.subscribe(
            [self.topics.ops],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self.progress(
            f"replicating {self.topics.ops} into {cfg.replica_dir} (group "
            f"{self.topics.replication_group}, member {cfg.member}), "
            f"backups under {cfg.backups_dir}"
        )

    def run(self, stop: threading.Event, *, status_every_s: float = 10.0) -> ReplicatorStats:
        """Poll until ``stop`` is set, then shut down within bounded time."""
        last_status = last_lag = time.monotonic()
        try:
            while not stop.is_set():
                self.poll_once()
                self.check_health()
                self.metrics.beat()
                if self.metrics is not NO_METRICS and time.monotonic() - last_lag >= 1.0:
                    last_lag = time.monotonic()
                    self._report_lag()
                if time.monotonic() - last_status >= status_every_s:
                    last_status = time.monotonic()
                    self.progress(self.status_line())
        finally:
            self.close()
        return self.stats

    def check_health(self) -> None:
        """Raise ReplicationStopped if one of this process's threads died on its own, or
        HistoryGone if an assigned partition no longer holds the history its shard needs."""
        if self._refusal is not None:
            raise self._refusal
        check_threads(self.coordinator, self.threads)

    def poll_once(self, timeout_s: float = 0.02) -> int:
        messages = self._consumer.consume(500, timeout_s)
        routed: dict[int, list] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if is_authorization(error):  # retrying cannot help: say which ACL is missing
                    reason = describe_read_refused(
                        error, topic=self.topics.ops, group=self.topics.replication_group
                    )
                    raise BrokerError(f"replicating {self.topics.ops}: {reason}")
                if error.code() == KafkaError._AUTO_OFFSET_RESET:
                    self._out_of_range(message.partition(), error.str())
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", error.str())
                continue
            routed.setdefault(message.partition(), []).append(message)
        for partition, batch in routed.items():
            lane = self.lanes.get(partition)
            if lane is not None:  # else: revoked meanwhile; its new owner re-reads it
                lane.offer(batch)
        self._drain_commits()
        self._flow_control()
        return len(messages)

    def _flow_control(self) -> None:
        """Pause a partition's fetching while its queue is full; resume when half drained.

        A lane held at a marker applies nothing (that is the suspension the cut needs),
        but its partition keeps fetching into the bounded queue: pausing the Kafka
        partition itself costs librdkafka ~0.2-0.4 s to restart fetching on resume,
        which measured as most of each cut's latency.
        """
        high = self.config.queue_high
        for lane in list(self.lanes.values()):
            want_paused = len(lane) >= high
            tp = [TopicPartition(self.topics.ops, lane.partition)]
            if want_paused and not lane.consumer_paused:
                self._consumer.pause(tp)
                lane.consumer_paused = True
            elif not want_paused and lane.consumer_paused and len(lane) <= high // 2:
                self._consumer.resume(tp)
                lane.consumer_paused = False

    def _report_lag(self) -> None:
        """Per-partition lag from the watermarks librdkafka caches on every fetch."""
        for lane in list(self.lanes.values()):
            tp = TopicPartition(self.topics.ops, lane.partition)
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0:
                self.metrics.lag(lane.partition, max(0, high - (lane.applied_offset + 1)))

    def ready(self) -> tuple[bool, str]:
        """Readiness: in the group (an assignment received), control topic read, threads alive."""
        if self.coordinator is None or not self.coordinator.wait_caught_up(0):
            return False, "reading the control topic"
        if self.stats.rebalances == 0:
            return False, "waiting for a partition assignment from the group"
        try:
            self.check_health()
        except Exception as exc:
            return False, str(exc)
        return True, f"ready: partitions {sorted(self.lanes)}"

    def status_line(self) -> str:
        applied = sum(lane.stats.applied for lane in self.lanes.values()) + self.stats.applied
        # the current rate: since the previous status line, not a cumulative average
        now = time.monotonic()
        since, before = self._status_mark
        rate = max(0, applied - before) / max(1e-9, now - since)
        self._status_mark = (now, applied)
        held = sorted(p for p, lane in self.lanes.items() if lane.hold is not None)
        published = self.coordinator.stats.published if self.coordinator else []
        return (
            f"applied {applied} operations ({rate:,.0f} ops/s) on partitions "
            f"{sorted(self.lanes)}; held at a marker: {held or 'none'}; backups published: "
            f"{len(published)}{f' (last {published[-1]})' if published else ''}"
        )

    def close(self, deadline_s: float = 30.0) -> None:
        if self._consumer is not None:
            self._stop_threads(deadline_s)
            try:
                self._consumer.close()  # leave the group now: others get our partitions
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the consumer: %s", exc)
            self._consumer = None
        if self.coordinator is not None:
            self.coordinator.stop(deadline_s)
        if self._producer is not None:
            self._producer.flush(10)

    # -- rebalances -----------------------------------------------------------------------

    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        self._stop_threads()
        wakes: list[threading.Event] = []
        count = len(partitions)
        n_threads = count if self.config.threads is None else min(self.config.threads, count)
        wakes = [threading.Event() for _ in range(max(1, n_threads))]
        self._wakes = wakes
        # claims wait for frozen writers' locks; together well within max.poll.interval.ms
        claims_end = time.monotonic() + CLAIM_DEADLINE_S
        for i, tp in enumerate(sorted(partitions, key=lambda t: t.partition)):
            shard = Shard(
                shard_path(self.config.replica_dir, self.config.source, tp.partition), tp.partition
            )
            # fences whoever wrote this shard before us
            shard.claim(self.config.member, max(1.0, claims_end - time.monotonic()))
            lane = Lane(tp.partition, shard, wakes[i % len(wakes)])
            self.lanes[tp.partition] = lane
            tp.offset = lane.applied_offset + 1 if lane.applied_offset >= 0 else OFFSET_BEGINNING
        # before any thread applies a record: is every shard's history still in the topic?
        self._refusal = refusal_on_assign(
            consumer,
            self.topics.ops,
            {p: lane.applied_offset + 1 for p, lane in self.lanes.items()},
            TopicIdentity(
                self.config.bootstrap,
                self.topics.ops,
                ops_topic_id_path(self.config.replica_dir, self.config.source),
            ),
        )
        if self._refusal is not None:
            consumer.assign(partitions)  # the poll loop raises it and the process exits
            return
        with interruptible():  # a read: SIGINT/SIGTERM may end this wait at once
            committed = committed_within(consumer, partitions)
        for tp in committed:
            if tp.offset >= 0:
                known = self._committed.get(tp.partition, -1)
                self._committed[tp.partition] = max(known, tp.offset)
        consumer.assign(partitions)
        for index, wake in enumerate(wakes):
            lanes = [lane for lane in self.lanes.values() if lane.wake is wake]
            if not lanes:
                continue
            thread = ReplicationThread(
                lanes,
                source=self.config.source,
                coordinator=self.coordinator,
                dead_letters=self.dead_letters,
                commit=self._commit,
                batch_size=self.config.batch_size,
                name=f"replication-{index}",
                metrics=self.metrics,
            )
            self.threads.append(thread)
            thread.start()
        held = [p for p, lane in self.lanes.items() if lane.hold is not None]
        self.progress(
            f"assigned partitions {sorted(self.lanes)} to {len(self.threads)} replication "
            f"threads" + (f"; partitions {held} stay held at their marker" if held else "")
        )

    def _out_of_range(self, partition: int, reason: str) -> None:
        """A partition's fetch offset left the log while it was assigned: records were
        deleted before it was read (retention, DeleteRecords) or the topic was recreated.

        Resetting to the earliest offset would skip the lost records silently, so the
        history check decides: gone history stops the process; anything else (a moment
        of a new leader) fetches again from where it was.
        """
        lane = self.lanes.get(partition)
        if lane is None or self._refusal is not None:  # already stopping: keep the first why
            return
        tp = TopicPartition(self.topics.ops, partition)
        fetched = self._consumer.position([tp])[0].offset
        resume_at = max(lane.applied_offset + 1, fetched if fetched >= 0 else 0)
        self._refusal = refusal_on_assign(self._consumer, self.topics.ops, {partition: resume_at})
        if self._refusal is None:
            log.warning(
                "partition %s: %s; fetching again from offset %s", partition, reason, resume_at
            )
            self._consumer.seek(TopicPartition(self.topics.ops, partition, resume_at))

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        self._stop_threads()
        with contextlib.suppress(KafkaException):
            consumer.unassign()

    def _stop_threads(self, deadline_s: float = 30.0) -> None:
        for thread in self.threads:
            thread.stop()
        end = time.monotonic() + deadline_s
        for thread in self.threads:
            thread.join(max(0.0, end - time.monotonic()))
            if thread.is_alive():
                log.error(
                    "replication thread %s did not stop within %.0f s", thread.name, deadline_s
                )
        if self._consumer is not None:
            # threads resume without waiting for their commit: send what they asked for while
            # the partitions are still ours (closing the consumer waits for the answers)
            self._drain_commits()
        for lane in self.lanes.values():
            self.stats.applied += lane.stats.applied
            self.stats.dead_letters += lane.stats.dead_letters
            self.stats.pauses_s.extend(lane.stats.pauses_s)
            lane.shard.close()
        self.threads = []
        self.lanes = {}
        self.metrics.forget_partitions()

    # -- offsets --------------------------------------------------------------------------

    def _commit(self, partition: int, offset: int) -> threading.Event:
        """Ask the poll loop to commit a partition's group offset; the event says it did.

        Called by replication threads. Only the poll loop touches the consumer: a commit
        from another thread while it polls can block indefinitely.
        """
        lane = self.lanes.get(partition)
        done = _Waking(lane.wake) if lane is not None else threading.Event()
        self._commit_requests.put((partition, offset, done))
        return done

    def _wake_threads(self) -> None:
        """Called by the coordinator when a cut releases its partitions: the threads check
        their holds now, not at their next idle tick."""
        for wake in self._wakes:
            wake.set()

    def _drain_commits(self) -> None:
        """Commit requested offsets (forward only); release the waiting threads once Kafka
        answers, or at the deadline. Asynchronous: a synchronous commit blocks the poll
        loop without a deadline while the group coordinator is away."""
        self._pending_commits.expire(time.monotonic())
        requests = []
        while not self._commit_requests.empty():
            requests.append(self._commit_requests.get_nowait())
        if not requests:
            return
        best: dict[int, int] = {}
        for partition, offset, _ in requests:
            if offset > self._committed.get(partition, -1) and partition in self.lanes:
                best[partition] = max(best.get(partition, -1), offset)
        waiting = [done for _, _, done in requests]
        if best:
            offsets = [TopicPartition(self.topics.ops, p, o) for p, o in best.items()]
            try:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.warning("commit of %s failed: %s", best, exc)
            else:
                self._committed.update(best)
                self._pending_commits.add(best, waiting, time.monotonic())
                return
        for done in waiting:
            done.set()

    def all_pauses(self) -> list[float]:
        return self.stats.pauses_s + [
            p for lane in self.lanes.values() for p in lane.stats.pauses_s
        ]


class _Waking(threading.Event):
    """A commit's done event that also wakes the thread waiting on it, so a partition
    resumes as soon as Kafka answers its commit."""

    def __init__(self, wake: threading.Event):
        super().__init__()
        self._wake = wake

    def set(self) -> None:
        super().set()
        self._wake.set()
