"""Replication throughput and the pause a marker costs.

Throughput: one in-process :class:`Replicator` applying the whole captured topic to fresh
shards, against a bare consume-and-decode loop over the same topic. The difference is the
SQLite apply (with the offset recorded per batch), the per-partition threads and the
hand-off between the poll loop and them.

Pause per marker: with capture, a writer and the replicator running, markers are cut one
after another. Every partition stops at each marker until the backup is published and its
offset committed; ``Replicator.all_pauses()`` holds those stops, the coordinator's reports
the alignment (first to last partition reaching the marker) and snapshot times.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from confluent_kafka import Consumer, KafkaError

from backups.catalog import list_backups
from bench.common import (
    PARTITIONS,
    TABLE,
    BenchError,
    Workload,
    end_offsets,
    log,
    per_second,
    ratio,
    read_topic,
    summary_ms,
    timed,
    wait_until,
)
from consumers.replicator import ReplicateConfig, Replicator
from cutline.kafka_config import client_properties
from cutline.settings import Topics
from producers.capture import MARKER_KEY, Capture
from producers.markers import request_marker
from producers.sqlite_changelog import connect
from schemas.codec import decode
from schemas.records import ConsistencyMarker, ControlEvent, ControlKind, Operation

ALIGNMENT_TIMEOUT_S = 30.0
WRITER_OPS_PER_S = 2_000  # steady background load; unthrottled it would starve the GIL
GAP_BETWEEN_MARKERS_S = 0.25  # writes that land between two cuts


class Background(threading.Thread):
    """A daemon thread that keeps its exception, so the main thread can fail fast on it."""

    def __init__(self, name: str, target: Callable[[], object]):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:
            self.error = exc
            log(f"{self.name} failed: {exc!r}")

    def check(self) -> None:
        if self.error is not None:
            raise BenchError(f"{self.name} failed: {self.error}") from self.error


# -- throughput -------------------------------------------------------------------------------


def bare_consumer_phase(
    bootstrap: str, workload: Workload, deadline_s: float
) -> tuple[float, float]:
    """Seconds for a plain read_committed consumer (new group, from the beginning) to
    decode every record until all operations were seen; and seconds to the first record."""
    topic = Topics(workload.source).ops
    consumer = Consumer(
        {
            **client_properties(bootstrap),  # the estate's settings (CUTLINE_KAFKA_*)
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}.bench-bare-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    seen = 0
    first: float | None = None
    try:
        with timed() as t:
            consumer.subscribe([topic])
            while seen < workload.operations:
                if t.so_far() > deadline_s:
                    raise BenchError(
                        f"bare consumer: decoded {seen} of {workload.operations} operations "
                        f"within {deadline_s:.0f} s"
                    )
                for message in consumer.consume(500, 0.05):
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            raise BenchError(f"bare consumer: {error.str()}")
                        continue
                    if first is None:
                        first = t.so_far()
                    if isinstance(decode(message.value()), Operation):
                        seen += 1
    finally:
        consumer.close()
    log(f"bare consumer: {seen} ops decoded in {t.elapsed:.2f} s")
    return t.elapsed, first or 0.0


@dataclass
class RunningReplicator:
    replicator: Replicator
    stop: threading.Event
    thread: Background

    def applied(self) -> int:
        rep = self.replicator
        return rep.stats.applied + sum(lane.stats.applied for lane in list(rep.lanes.values()))

    def shutdown(self, deadline_s: float = 60.0) -> None:
        self.stop.set()
        self.thread.join(deadline_s)
        if self.thread.is_alive():
            log(f"replicator did not stop within {deadline_s:.0f} s (left as a daemon thread)")


def replication_phase(
    bootstrap: str, workload: Workload, workdir: Path, deadline_s: float
) -> tuple[RunningReplicator, float, float]:
    """Time a fresh replicator from ``open()`` until it applied every operation.

    Returns it still running (the marker phase needs it), the seconds taken and the seconds
    to its first partition assignment (group join and shard creation).
    """
    config = ReplicateConfig(
        bootstrap,
        workdir / "replica",
        workdir / "backups",
        source=workload.source,
        alignment_timeout_s=ALIGNMENT_TIMEOUT_S,
    )
    replicator = Replicator(config, progress=log)
    stop = threading.Event()
    running = RunningReplicator(
        replicator,
        stop,
        Background("replicator", lambda: replicator.run(stop, status_every_s=30.0)),
    )
    try:
        with timed() as t:
            replicator.open()
            running.thread.start()

            def assigned() -> bool:
                running.thread.check()
                return len(replicator.lanes) == PARTITIONS

            startup = wait_until(assigned, deadline_s, "replicator: partition assignment")

            def caught_up() -> bool:
                running.thread.check()
                return running.applied() >= workload.operations

            wait_until(
                caught_up,
                deadline_s - t.so_far(),
                "replicator: applying every captured operation",
                detail=lambda: f"applied {running.applied()} of {workload.operations}",
            )
        dead = replicator.stats.dead_letters + sum(
            lane.stats.dead_letters for lane in list(replicator.lanes.values())
        )
        if dead:
            raise BenchError(f"replicator: {dead} records went to the dead-letter topic")
    except BaseException:
        if running.thread.is_alive():
            running.shutdown()
        else:
            replicator.close()
        raise
    log(f"replicator: {workload.operations} ops applied in {t.elapsed:.2f} s")
    return running, t.elapsed, startup


def replication_json(
    workload: Workload, cutline_s: float, startup_s: float, bare_s: float, bare_first_s: float
) -> dict[str, Any]:
    cutline = per_second(workload.operations, cutline_s)
    bare = per_second(workload.operations, bare_s)
    return {
        "ops": workload.operations,
        "cutline_ops_per_s": cutline,
        "bare_consumer_ops_per_s": bare,
        "ratio": ratio(cutline, bare),
        "cutline_s": round(cutline_s, 3),
        "cutline_startup_s": round(startup_s, 3),
        "bare_consumer_s": round(bare_s, 3),
        "bare_consumer_first_record_s": round(bare_first_s, 3),
    }


# -- pause per marker -------------------------------------------------------------------------


class Writer(Background):
    """Transfers between random accounts (two UPDATEs per commit), throttled to a steady
    rate: the primary keeps changing while markers are cut, and the total stays constant."""

    def __init__(self, db_path: Path, accounts: int, ops_per_s: float):
        super().__init__("writer", self._loop)
        self.db_path = db_path
        self.accounts = accounts
        self.ops_per_s = ops_per_s
        self.halt = threading.Event()
        self.ops = 0

    def _loop(self) -> None:
        conn = connect(self.db_path)
        rng = random.Random(3)
        update = f"UPDATE {TABLE} SET balance = balance + ? WHERE id = ?"
        started = time.monotonic()
        try:
            while not self.halt.is_set():
                if self.ops > (time.monotonic() - started) * self.ops_per_s:
                    self.halt.wait(0.002)
                    continue
                a, b = rng.sample(range(1, self.accounts + 1), 2)
                amount = rng.randint(1, 20)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(update, (-amount, a))
                conn.execute(update, (amount, b))
                conn.execute("COMMIT")
                self.ops += 2
        finally:
            conn.close()


@dataclass
class MarkerResult:
    markers: int
    published: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    pauses_s: list[float] = field(default_factory=list)
    alignment_s: list[float] = field(default_factory=list)
    snapshot_s: list[float] = field(default_factory=list)
    request_to_published_s: list[float] = field(default_factory=list)
    writer_ops: int = 0
    writer_s: float = 0.0
    backups_checked: int = 0
    inconsistent: list[str] = field(default_factory=list)
    replica_rows: int = 0
    breakdown_s: dict[str, list[float]] = field(default_factory=dict)

    def as_json(self) -> dict[str, dict[str, Any]]:
        return {
            "pause_per_marker_ms": {
                **summary_ms(self.pauses_s),
                "markers": self.markers,
                "lanes": PARTITIONS,
                "published": len(self.published),
                "failed": len(self.failed),
                "replica_rows": self.replica_rows,
                "writer_ops_per_s": per_second(self.writer_ops, self.writer_s),
            },
            "alignment_ms": summary_ms(self.alignment_s),
            "snapshot_ms": summary_ms(self.snapshot_s),
            "marker_request_to_published_ms": summary_ms(self.request_to_published_s),
            "marker_latency_breakdown_ms": {
                stage: summary_ms(values) for stage, values in self.breakdown_s.items()
            },
            "backup_consistency": {
                "backups_checked": self.backups_checked,
                "all_equal_to_primary_total": not self.inconsistent,
                "problems": self.inconsistent[:5],
            },
        }


def marker_phase(
    capture: Capture,
    running: RunningReplicator,
    workload: Workload,
    workdir: Path,
    markers: int,
) -> MarkerResult:
    """Cut ``markers`` markers, one at a time, while the writer, capture and replicator run."""
    rep = running.replicator
    coordinator = rep.coordinator
    assert coordinator is not None
    result = MarkerResult(markers, replica_rows=workload.accounts)
    bootstrap = rep.config.bootstrap
    topics = Topics(workload.source)
    ops_start = end_offsets(bootstrap, topics.ops, PARTITIONS)
    t1_us: dict[int, int] = {}
    capture_stop = threading.Event()
    capture_thread = Background("capture", lambda: capture.run(capture_stop, status_every_s=30.0))
    writer = Writer(workload.db_path, workload.accounts, WRITER_OPS_PER_S)
    conn = connect(workload.db_path)
    threads = (capture_thread, writer, running.thread)

    def healthy() -> None:
        for thread in threads:
            thread.check()

    try:
        capture_thread.start()
        writer.start()
        writer_started = time.monotonic()
        for _ in range(markers):
            time.sleep(GAP_BETWEEN_MARKERS_S)
            healthy()
            asked = time.monotonic()
            ticket = request_marker(conn, note="bench")
            marker_id = ticket.marker_id
            t1_us[marker_id] = ticket.t1_us

            def resolved(marker_id: int = marker_id) -> bool:
                healthy()
                stats = coordinator.stats
                return marker_id in stats.published or marker_id in stats.failed

            wait_until(
                resolved,
                ALIGNMENT_TIMEOUT_S + 60.0,
                f"marker {marker_id}: backup published or cut resolved",
                detail=lambda marker_id=marker_id: (
                    f"cut status {coordinator.alignment.status(marker_id)}, held partitions "
                    f"{sorted(p for p, lane in list(rep.lanes.items()) if lane.hold)}"
                ),
            )
            result.request_to_published_s.append(time.monotonic() - asked)

        def all_resumed() -> bool:
            healthy()
            if any(lane.hold for lane in list(rep.lanes.values())):
                return False
            return len(rep.all_pauses()) >= len(coordinator.stats.published) * PARTITIONS

        wait_until(
            all_resumed,
            30.0,
            "replicator: every partition resumed after the last marker",
            detail=lambda: f"{len(rep.all_pauses())} pauses recorded",
        )
        result.writer_s = time.monotonic() - writer_started
        result.writer_ops = writer.ops
    finally:
        writer.halt.set()
        writer.join(10)
        capture_stop.set()
        capture_thread.join(30)
        if capture_thread.is_alive():
            log("capture did not stop within 30 s (left as a daemon thread)")
        conn.close()
    stats = coordinator.stats
    result.published = list(stats.published)
    result.failed = list(stats.failed)
    result.pauses_s = list(rep.all_pauses())
    for report in stats.reports.values():
        if report.alignment_s is not None:
            result.alignment_s.append(report.alignment_s)
        if report.snapshot_s is not None:
            result.snapshot_s.append(report.snapshot_s)
    check_backups(workload, workdir / "backups", result)
    result.breakdown_s = latency_breakdown(bootstrap, topics, ops_start, t1_us)
    log(
        f"markers: {len(result.published)} published, {len(result.failed)} failed; "
        f"pause p50 {summary_ms(result.pauses_s)['p50']} ms"
    )
    return result


def check_backups(workload: Workload, backups_dir: Path, result: MarkerResult) -> None:
    """Every backup must hold all accounts and the primary's (constant) total balance."""
    for backup in list_backups(backups_dir, workload.source):
        db = duckdb.connect(str(backup.duckdb_path), read_only=True)
        try:
            rows, total = db.execute(f"SELECT count(*), sum(balance) FROM {TABLE}").fetchone()
        finally:
            db.close()
        result.backups_checked += 1
        if rows != workload.accounts or total != workload.total_balance:
            result.inconsistent.append(
                f"marker {backup.marker_id}: {rows} rows, total {total} "
                f"(primary: {workload.accounts} rows, total {workload.total_balance})"
            )


def latency_breakdown(
    bootstrap: str, topics: Topics, ops_start: dict[int, int], t1_us: dict[int, int]
) -> dict[str, list[float]]:
    """Where the time between a marker request and its published backup goes, per marker.

    From timestamps already in Kafka: T1 (the request's commit on the primary), the marker
    records' CreateTime (capture's produce call), and the control events' ``at_us``
    (REACHED per partition, PUBLISHED). All clocks are this host's wall clock.
    """
    produced_ms: dict[int, int] = {}
    for record in read_topic(bootstrap, topics.ops, PARTITIONS, 60.0, ops_start):
        if record.key == MARKER_KEY:
            marker = decode(record.value)
            assert isinstance(marker, ConsistencyMarker)
            known = produced_ms.get(marker.marker_id, record.timestamp_ms)
            produced_ms[marker.marker_id] = min(known, record.timestamp_ms)
    reached: dict[int, list[int]] = {}
    published: dict[int, int] = {}
    for record in read_topic(bootstrap, topics.control, 1, 60.0):
        event = decode(record.value)
        if not isinstance(event, ControlEvent):
            continue
        if event.kind is ControlKind.REACHED:
            reached.setdefault(event.marker_id, []).append(event.at_us)
        elif event.kind is ControlKind.PUBLISHED:
            published.setdefault(event.marker_id, event.at_us)
    stages: dict[str, list[float]] = {
        "request_to_marker_produced": [],
        "marker_produced_to_first_reached": [],
        "first_to_last_reached": [],
        "last_reached_to_published": [],
    }
    for marker_id, t1 in t1_us.items():
        if not (marker_id in produced_ms and marker_id in published and marker_id in reached):
            continue
        produced = produced_ms[marker_id] * 1000
        first, last = min(reached[marker_id]), max(reached[marker_id])
        stages["request_to_marker_produced"].append((produced - t1) / 1e6)
        stages["marker_produced_to_first_reached"].append((first - produced) / 1e6)
        stages["first_to_last_reached"].append((last - first) / 1e6)
        stages["last_reached_to_published"].append((published[marker_id] - last) / 1e6)
    return stages
