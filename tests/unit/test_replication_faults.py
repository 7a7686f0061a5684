"""Replication threads and the coordinator under faults, with plain stubs and no broker.

Each test injects one failure that a real deployment meets (a control event that cannot
be sent while a broker is lost, a disk error that makes SQLite roll back on its own, a
previous owner frozen inside a shard batch, a group coordinator that is moving) and
checks that no cut loses its report, no thread dies silently and the process notices.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumers import replica
from consumers.alignment import CutStatus
from consumers.coordinator import CutCoordinator
from consumers.health import ReplicationStopped
from consumers.history import TopicIdentity
from consumers.replica import Shard, ShardFenced, ShardLocked
from consumers.replication import Lane, ReplicationThread
from consumers.replicator import ReplicateConfig, Replicator
from consumers.snapshotter import CutPlan
from cutline.errors import DeadlineExceeded
from schemas.codec import encode
from schemas.records import (
    Column,
    ConsistencyMarker,
    ControlEvent,
    ControlKind,
    Operation,
    OpType,
    TableDefinition,
)

SOURCE = "s"
DEF = TableDefinition(
    SOURCE,
    "t",
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
    (Column("id", "INTEGER"), Column("v", "TEXT")),
    ("id",),
)


class FakeMessage:
    """The part of ``confluent_kafka.Message`` a replication thread reads."""

    def __init__(self, offset: int, record: object, partition: int = 0):
        self._offset = offset
        self._value = encode(record)
        self._partition = partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b""

    def partition(self) -> int:
        return self._partition

    def topic(self) -> str:
        return f"cutline.{SOURCE}.ops"


class FakeCoordinator:
    """Records what a replication thread reports; ``failures`` sends fail first."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.reported: list[tuple[str, int, int, int]] = []
        self.statuses: dict[int, CutStatus] = {}

    def _send(self, kind: str, marker: ConsistencyMarker, partition: int, offset: int) -> None:
        if self.failures:
            self.failures -= 1
            raise DeadlineExceeded(f"{kind} for marker {marker.marker_id} not acknowledged")
        self.reported.append((kind, marker.marker_id, partition, offset))

    def reached(self, marker: ConsistencyMarker, partition: int, offset: int) -> None:
        self._send("reached", marker, partition, offset)

    def failed(self, marker: ConsistencyMarker, partition: int, offset: int, detail: str) -> None:
        self._send("failed", marker, partition, offset)

    def resolution(self, marker_id: int) -> CutStatus | None:
        return self.statuses.get(marker_id)


class FakeDeadLetters:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    def send(self, message: FakeMessage, reason: str) -> None:
        self.sent.append((message.offset(), reason))

    def flush(self, deadline_s: float = 30.0) -> None:
        return None


def reached(marker: int, partition: int, offset: int, partitions: int = 3) -> ControlEvent:
    return ControlEvent(
        ControlKind.REACHED,
        "shop",
        marker,
        partitions,
        member=f"m{partition}",
        at_us=0,
        partition=partition,
        offset=offset,
        t1_us=1,
        tables=("t",),
    )


def _insert(key: int) -> Operation:
    return Operation(SOURCE, key, "t", OpType.INSERT, {"id": key}, None, {"id": key, "v": "x"}, 0)


def _marker(marker_id: int, count: int) -> ConsistencyMarker:
    return ConsistencyMarker(SOURCE, marker_id, 1, 0, 1, (count,), ("t",))


def _thread(lane: Lane, coordinator: FakeCoordinator) -> ReplicationThread:
    def commit(partition: int, offset: int) -> threading.Event:
        done = threading.Event()
        done.set()
        return done

    return ReplicationThread(
        [lane],
        source=SOURCE,
        coordinator=coordinator,  # type: ignore[arg-type]
        dead_letters=FakeDeadLetters(),  # type: ignore[arg-type]
        commit=commit,
    )


def _lane(path: Path, owner: str = "me") -> Lane:
    shard = Shard(path, 0)
    shard.claim(owner)
    return Lane(0, shard, threading.Event())


def _drain(thread: ReplicationThread, lane: Lane, coordinator: FakeCoordinator) -> None:
    """Step the lane as the thread's loop would, retrying after each failure, until idle."""
    for _ in range(20):
        try:
            if not thread._work(lane):
                return
        except DeadlineExceeded:
            continue  # the loop logs it and tries again
    raise AssertionError("the lane never went idle")


def test_a_count_mismatch_is_reported_even_when_the_first_report_fails(tmp_path: Path) -> None:
    """The lane must not move past a marker whose gap it could not report yet."""
    lane = _lane(tmp_path / "p0.sqlite")
    coordinator = FakeCoordinator(failures=1)  # the broker is away for the first report
    thread = _thread(lane, coordinator)
    lane.offer(
        [
            FakeMessage(0, DEF),
            FakeMessage(1, _insert(1)),
            FakeMessage(2, _marker(1, count=5)),  # says 5 operations; the replica applied 1
            FakeMessage(3, _insert(2)),
        ]
    )
    _drain(thread, lane, coordinator)
    assert ("failed", 1, 0, 2) in coordinator.reported
    assert lane.shard.state().offset == 3  # and then it went on, nothing lost


def test_a_count_mismatch_is_reported_by_the_next_owner_after_a_crash(tmp_path: Path) -> None:
    """A process dies between noticing the gap and reporting it: its successor reports it."""
    path = tmp_path / "p0.sqlite"
    first = _lane(path, "first")
    dying = FakeCoordinator(failures=1)  # the report never leaves this process
    messages = [
        FakeMessage(0, DEF),
        FakeMessage(1, _insert(1)),
        FakeMessage(2, _marker(1, count=5)),
        FakeMessage(3, _insert(2)),
    ]
    first.offer(messages)
    with pytest.raises(DeadlineExceeded):
        _thread(first, dying)._work(first)
    first.shard.close()  # SIGKILL: whatever the shard committed stays

    second = _lane(path, "second")
    resume = second.applied_offset + 1  # where the replicator seeks the partition
    coordinator = FakeCoordinator()
    second.offer([m for m in messages if m.offset() >= resume])
    _drain(_thread(second, coordinator), second, coordinator)
    assert ("failed", 1, 0, 2) in coordinator.reported


def test_a_held_partition_announces_again_after_a_failed_report(tmp_path: Path) -> None:
    lane = _lane(tmp_path / "p0.sqlite")
    coordinator = FakeCoordinator(failures=1)
    thread = _thread(lane, coordinator)
    lane.offer([FakeMessage(0, DEF), FakeMessage(1, _insert(1)), FakeMessage(2, _marker(1, 1))])
    _drain(thread, lane, coordinator)
    assert coordinator.reported == [("reached", 1, 0, 2)]
    assert lane.hold is not None and lane.shard.state().held


def test_a_claim_waits_for_a_frozen_writer_to_let_go(tmp_path: Path, monkeypatch) -> None:
    """A process frozen mid-batch (SIGSTOP) holds the shard's write lock past one timeout."""
    monkeypatch.setattr(replica, "BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "p0.sqlite"
    frozen = Shard(path, 0)
    frozen.claim("frozen")
    frozen.begin()
    frozen.define(DEF)
    frozen.apply(_insert(1))
    waking = threading.Timer(0.8, lambda: frozen.commit(1))  # thawed after several timeouts
    waking.start()
    try:
        successor = Shard(path, 0)
        assert successor.claim("successor", deadline_s=30) == frozen.epoch + 1
    finally:
        waking.join(10)
    assert successor.state().offset == 1  # the frozen batch committed before the takeover
    with pytest.raises(ShardFenced):
        frozen.begin()


def test_a_claim_gives_up_on_a_writer_that_never_lets_go(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(replica, "BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "p0.sqlite"
    frozen = Shard(path, 0)
    frozen.claim("frozen-host-42")
    frozen.begin()
    successor = Shard(path, 0)
    with pytest.raises(ShardLocked, match="frozen-host-42"):
        successor.claim("successor", deadline_s=0.3)
    frozen.rollback()


class DiskFullOnCommit:
    """SQLite's behaviour on SQLITE_FULL at COMMIT: it rolls the transaction back itself."""

    def __init__(self, shard: Shard, times: int):
        self.shard = shard
        self.times = times
        self.original = shard.commit

    def __call__(self, last_offset: int) -> None:
        if self.times:
            self.times -= 1
            self.shard.conn.execute("ROLLBACK")  # what SQLite did on its own
            raise sqlite3.OperationalError("database or disk is full")
        self.original(last_offset)


def test_a_replication_thread_outlives_a_transaction_sqlite_rolled_back_itself(
    tmp_path: Path,
) -> None:
    lane = _lane(tmp_path / "p0.sqlite")
    lane.shard.commit = DiskFullOnCommit(lane.shard, times=2)  # type: ignore[method-assign]
    coordinator = FakeCoordinator()
    thread = _thread(lane, coordinator)
    lane.offer([FakeMessage(0, DEF), FakeMessage(1, _insert(1)), FakeMessage(2, _insert(2))])
    thread.start()
    try:
        end = time.monotonic() + 15
        while lane.shard.state().offset != 2:
            assert thread.is_alive(), "the replication thread died on the failed rollback"
            assert time.monotonic() < end, "the batch was never applied once the disk had room"
            time.sleep(0.05)
    finally:
        thread.stop()
        thread.join(10)
    rows = lane.shard.conn.execute("SELECT id FROM t ORDER BY id").fetchall()
    assert rows == [(1,), (2,)]


class FlakyProducer:
    """A producer whose first ``fail`` messages are not acknowledged: their delivery reports
    say so (as librdkafka's do once ``message.timeout.ms`` runs out)."""

    def __init__(self, fail: int):
        self.fail = fail
        self.produced: list[bytes] = []
        self._reports: list = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery=None) -> None:
        self.produced.append(value)
        self._reports.append(on_delivery)

    def poll(self, timeout: float = 0.0) -> int:
        reports, self._reports = self._reports, []
        for report in reports:
            if self.fail:
                self.fail -= 1
                report(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                report(None, None)
        return len(reports)

    def flush(self, timeout: float) -> int:
        self.poll()
        return 0


def _coordinator(tmp_path: Path, producer: FlakyProducer) -> CutCoordinator:
    return CutCoordinator(
        bootstrap="127.0.0.1:1",
        source="shop",
        member="me",
        replica_dir=tmp_path / "replica",
        backups_dir=tmp_path / "backups",
        producer=producer,  # type: ignore[arg-type]
        alignment_timeout_s=5.0,
    )


def test_an_abandon_that_could_not_be_sent_is_sent_again(tmp_path: Path) -> None:
    from schemas.codec import decode

    producer = FlakyProducer(fail=1)
    coordinator = _coordinator(tmp_path, producer)
    coordinator.alignment.apply(reached(7, 0, 10), 0.0)  # partitions 1 and 2 never come
    coordinator._expire(6.0)  # the broker is away: must not raise out of the control loop
    coordinator._expire(6.2)
    sent = [decode(value) for value in producer.produced]
    assert all(isinstance(e, ControlEvent) and e.kind is ControlKind.ABANDONED for e in sent)
    assert len(sent) == 2, "the unacknowledged ABANDONED was not sent again"
    coordinator._expire(6.4)
    assert len(producer.produced) == 2, "an acknowledged ABANDONED is sent once"
    coordinator.stop(5)


def test_the_replicator_stops_loudly_when_a_thread_died(tmp_path: Path) -> None:
    """A dead coordinator or replication thread must end the process, not leave a zombie."""
    replicator = Replicator(ReplicateConfig("127.0.0.1:1", tmp_path / "r", tmp_path / "b"))
    coordinator = _coordinator(tmp_path, FlakyProducer(fail=0))
    replicator.coordinator = coordinator
    replicator.check_health()  # not started yet: nothing to report

    dead = threading.Thread(target=lambda: None, name="coordinator")
    dead.start()
    dead.join()
    coordinator._thread = dead
    with pytest.raises(ReplicationStopped, match="coordinator"):
        replicator.check_health()

    coordinator._thread = None
    lane = _lane(tmp_path / "p0.sqlite")
    thread = _thread(lane, FakeCoordinator())
    thread.run = lambda: None  # type: ignore[method-assign] # dies at once
    thread.start()
    thread.join()
    replicator.threads = [thread]
    with pytest.raises(ReplicationStopped, match="replication"):
        replicator.check_health()
    coordinator.stop(5)


class MovingCoordinatorConsumer:
    """A consumer whose group coordinator is moving: the first ``failures`` asks time out."""

    def __init__(self, failures: int):
        self.failures = failures
        self.assigned: list[TopicPartition] = []

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.failures:
            self.failures -= 1
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "no coordinator", retriable=True)
            )
        return [TopicPartition(tp.topic, tp.partition, 40 + tp.partition) for tp in partitions]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float, cached: bool
    ) -> tuple[int, int]:
        return 0, 100  # the whole history is there: the assignment check passes


def test_an_assignment_outlives_a_group_coordinator_that_is_moving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker lost with the group coordinator must not end the process at a rebalance."""
    monkeypatch.setattr(TopicIdentity, "current", lambda self: "topic-id")  # no cluster here
    replicator = Replicator(
        ReplicateConfig("127.0.0.1:1", tmp_path / "r", tmp_path / "b", source=SOURCE)
    )
    consumer = MovingCoordinatorConsumer(failures=2)
    topic = f"cutline.{SOURCE}.ops"
    try:
        replicator._on_assign(consumer, [TopicPartition(topic, 0), TopicPartition(topic, 1)])
        assert [tp.partition for tp in consumer.assigned] == [0, 1]
        assert replicator._committed == {0: 40, 1: 41}  # the forward-only floor is known
    finally:
        replicator._stop_threads()


def test_a_failed_cut_is_reported_whole_to_other_threads(tmp_path: Path) -> None:
    """A reader polling ``stats.reports`` (tests, benchmarks) must never see a FAILED
    report without its detail, or before its message was said."""
    coordinator = _coordinator(tmp_path, FlakyProducer(fail=0))
    seen_while_saying: list[object] = []
    coordinator.progress = lambda _: seen_while_saying.append(coordinator.stats.reports.get(7))
    coordinator._caught_up.set()
    event = ControlEvent(
        ControlKind.FAILED, "shop", 7, 3, member="m", at_us=0, detail="disk full at /b/shop"
    )
    coordinator._on_event(encode(event), 0.0)
    assert seen_while_saying == [None], "the report was visible before its message was said"
    report = coordinator.stats.reports[7]
    assert (report.status, report.detail) == (CutStatus.FAILED, "disk full at /b/shop")
    coordinator.stop(5)


class AwayCoordinatorConsumer:
    """A consumer whose group coordinator does not answer: a synchronous commit would
    block (librdkafka defers it until a coordinator is found), an asynchronous one is
    answered only when ``answer`` is called."""

    def __init__(self) -> None:
        self.sent: list[list[TopicPartition]] = []
        self.on_commit = None
        self.unblock = threading.Event()

    def consume(self, n: int, timeout: float) -> list:
        return []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        if not asynchronous:
            self.unblock.wait(30)  # stands for "until the coordinator is back"
        self.sent.append(offsets)

    def answer(self) -> None:
        offsets = self.sent.pop(0)
        self.on_commit(None, [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets])


def test_the_poll_loop_never_blocks_on_an_offset_commit(tmp_path: Path, monkeypatch) -> None:
    """With the group coordinator away, commits wait in flight; polling goes on."""
    replicator = Replicator(
        ReplicateConfig("127.0.0.1:1", tmp_path / "r", tmp_path / "b", source=SOURCE)
    )
    consumer = AwayCoordinatorConsumer()
    consumer.on_commit = lambda error, done: replicator._pending_commits.answered(error, done)
    replicator._consumer = consumer
    replicator.lanes[0] = _lane(tmp_path / "p0.sqlite")
    try:
        done = replicator._commit(0, 11)
        polled = threading.Thread(target=replicator.poll_once, daemon=True)
        polled.start()
        polled.join(5)
        assert not polled.is_alive(), "the poll loop is stuck in a commit"
        assert not done.is_set(), "released before Kafka answered"
        consumer.answer()
        assert done.is_set() and replicator._committed == {0: 11}

        # no answer at all: the waiting thread is released at the deadline
        monkeypatch.setattr(replicator._pending_commits, "deadline_s", 0.0)
        unanswered = replicator._commit(0, 25)
        replicator.poll_once()
        replicator.poll_once()
        assert unanswered.is_set()
    finally:
        consumer.unblock.set()
        replicator.lanes[0].shard.close()


def test_stop_does_not_wait_past_its_deadline_for_a_stuck_snapshot(tmp_path: Path) -> None:
    """Shutdown has a deadline: a snapshot that hangs is left to its daemon thread."""
    coordinator = _coordinator(tmp_path, FlakyProducer(fail=0))
    started, release = threading.Event(), threading.Event()
    written: list[int] = []

    def stuck(plan: CutPlan) -> None:
        started.set()
        release.wait(30)
        written.append(plan.marker_id)

    coordinator._snapshot = stuck  # type: ignore[method-assign]
    plan = CutPlan("shop", 7, 0, 1, {0: 3}, ("t",))
    coordinator._submit(plan)
    coordinator._submit(CutPlan("shop", 8, 0, 1, {0: 9}, ("t",)))
    assert started.wait(10)
    coordinator.stop(0.2)
    snapshotter = coordinator._snapshotter
    assert snapshotter is not None and snapshotter.is_alive(), "stop waited for the snapshot"
    assert snapshotter.daemon, "a hung snapshot must not keep the process from exiting"
    release.set()
    snapshotter.join(10)
    assert written == [7], "the snapshot queued behind it is dropped once stopped"


def _committing_thread(
    lane: Lane, coordinator: FakeCoordinator, commits: list
) -> ReplicationThread:
    thread = _thread(lane, coordinator)

    def commit(partition: int, offset: int) -> threading.Event:
        commits.append((partition, offset))
        done = threading.Event()
        done.set()
        return done

    thread.commit = commit
    return thread


@pytest.mark.parametrize("status", [CutStatus.PINNED, CutStatus.PUBLISHED])
def test_a_pinned_cut_releases_the_partition_with_its_offset_committed(
    tmp_path: Path, status: CutStatus
) -> None:
    """PINNED is enough to move on: the writer's read transactions hold the cut, so the
    lane commits marker offset + 1 and applies what follows while the backup is written."""
    lane = _lane(tmp_path / "p0.sqlite")
    coordinator = FakeCoordinator()
    commits: list[tuple[int, int]] = []
    thread = _committing_thread(lane, coordinator, commits)
    lane.offer([FakeMessage(0, DEF), FakeMessage(1, _insert(1)), FakeMessage(2, _marker(1, 1))])
    lane.offer([FakeMessage(3, _insert(2))])
    _drain(thread, lane, coordinator)
    assert lane.hold is not None and lane.shard.state().held  # READY alone holds
    assert lane.shard.state().offset == 2
    coordinator.statuses[1] = status
    _drain(thread, lane, coordinator)
    assert commits == [(0, 3)]
    assert lane.hold is None and not lane.shard.state().held
    assert lane.shard.state().offset == 3  # applied past the marker


def test_a_restarted_lane_held_at_a_pinned_cut_is_released(tmp_path: Path) -> None:
    """A process that dies with a shard held at M, restarts and replays PINNED(M) from the
    control topic does not hold again: it releases the shard and goes on."""
    path = tmp_path / "p0.sqlite"
    first = _lane(path, "first")
    held = FakeCoordinator()
    first.offer([FakeMessage(0, DEF), FakeMessage(1, _insert(1)), FakeMessage(2, _marker(1, 1))])
    _drain(_thread(first, held), first, held)
    assert first.shard.state().held
    first.shard.close()  # SIGKILL

    second = _lane(path, "second")
    assert second.hold is not None  # the shard says: held at marker 1
    coordinator = FakeCoordinator()
    coordinator.statuses[1] = CutStatus.PINNED
    commits: list[tuple[int, int]] = []
    thread = _committing_thread(second, coordinator, commits)
    second.offer([FakeMessage(3, _insert(2))])
    _drain(thread, second, coordinator)
    assert second.hold is None and second.shard.state().offset == 3
    assert commits == [(0, 3)]
