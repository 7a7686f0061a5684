"""Shared pieces of the benchmark: stderr progress, timing, deadlines, percentiles and the
workload (a SQLite primary with an ``accounts`` table).

Balances are whole numbers stored as REAL, so sums are exact in floating point: a backup
taken while transfers run must show the same total as the primary, which the marker phase
checks for free.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from cutline.kafka_config import client_properties
from producers.sources import Start, StartPlan, install_source
from producers.sqlite_changelog import connect

TABLE = "accounts"
DDL = f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, owner TEXT, balance REAL)"
PARTITIONS = 4  # capture's default partition count
Row = tuple[int, str, float]


@dataclass(frozen=True)
class Record:
    """One Kafka record as read back, with its producer-side timestamp."""

    partition: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class BenchError(RuntimeError):
    """A phase failed or missed its deadline; the run stops with this message."""


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries exactly one JSON document."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Timer:
    started: float
    elapsed: float = 0.0

    def so_far(self) -> float:
        return time.perf_counter() - self.started


@contextmanager
def timed() -> Iterator[Timer]:
    """Wall-clock time of a block (``perf_counter``: monotonic, high resolution)."""
    timer = Timer(time.perf_counter())
    try:
        yield timer
    finally:
        timer.elapsed = time.perf_counter() - timer.started


def wait_until(
    done: Callable[[], bool],
    deadline_s: float,
    what: str,
    *,
    detail: Callable[[], str] | None = None,
    interval_s: float = 0.005,
) -> float:
    """Poll ``done`` until true; raise BenchError after ``deadline_s``. Returns seconds waited.

    Every wait in the benchmark goes through here, so a stuck phase fails with a message
    saying what it was waiting for instead of hanging the run.
    """
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > deadline_s:
            extra = f" ({detail()})" if detail else ""
            raise BenchError(f"{what}: not done within {deadline_s:.0f} s{extra}")
        time.sleep(interval_s)
    return time.monotonic() - start


def read_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    deadline_s: float,
    start: dict[int, int] | None = None,
) -> list[Record]:
    """Every committed record of ``topic`` from ``start`` (default: the beginning) to its end.

    Untimed set-up and diagnostics only: it assigns partitions directly (no group join) and
    stops when every partition reported end-of-partition.
    """
    consumer = Consumer(
        {
            **client_properties(bootstrap),  # the estate's settings (CUTLINE_KAFKA_*)
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}.bench-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    records: list[Record] = []
    at_end: set[int] = set()
    offsets = start or {}
    try:
        consumer.assign(
            [TopicPartition(topic, p, offsets.get(p, OFFSET_BEGINNING)) for p in range(partitions)]
        )

        def drained() -> bool:
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                if error is None:
                    records.append(
                        Record(
                            message.partition(),
                            message.key(),
                            message.value(),
                            message.timestamp()[1],
                        )
                    )
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                else:
                    raise BenchError(f"reading {topic}: {error.str()}")
            return len(at_end) == partitions

        wait_until(
            drained,
            deadline_s,
            f"reading {topic}",
            detail=lambda: f"{len(records)} records, partitions at end: {sorted(at_end)}",
            interval_s=0,
        )
    finally:
        consumer.close()
    return records


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """High watermarks per partition (where a reader starting now would begin)."""
    consumer = Consumer(
        {
            **client_properties(bootstrap),
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}.bench-check",
        }
    )
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(seconds: list[float]) -> dict[str, float | int | None]:
    """p50/p99/max of durations given in seconds, in milliseconds."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "p50": ms(percentile(seconds, 50)),
        "p99": ms(percentile(seconds, 99)),
        "max": ms(max(seconds) if seconds else None),
        "samples": len(seconds),
    }


def per_second(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def ratio(ours: float | None, baseline: float | None) -> float | None:
    """ours / baseline: below 1 means cutline is slower than the bare baseline."""
    return round(ours / baseline, 3) if ours is not None and baseline else None


def account_rows(count: int, seed: int = 7) -> list[Row]:
    rng = random.Random(seed)
    return [(i, f"owner-{i:07d}", float(rng.randint(0, 10_000))) for i in range(1, count + 1)]


@dataclass(frozen=True)
class Workload:
    db_path: Path
    source: str
    accounts: int
    operations: int  # change-log rows written = operations capture will publish
    total_balance: float


def build_primary(path: Path, source: str, operations: int, seed: int = 11) -> Workload:
    """A primary whose change log already holds exactly ``operations`` changes.

    Capture is installed here, before the updates, so the timed capture phase reads a full
    change log: ``accounts`` rows (captured as INSERTs by ``install_source``) plus updates.
    """
    accounts = max(10, min(operations // 20, 50_000))
    if operations <= accounts:
        raise BenchError(f"--ops must exceed {accounts} (the accounts the workload inserts)")
    plain = sqlite3.connect(path)
    plain.execute(DDL)
    plain.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?)", account_rows(accounts))
    plain.commit()
    plain.close()
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")  # installed for this source, as capture would
        install_source(conn, source, [TABLE], StartPlan(Start.FRESH, 0), last_marker=0)
        conn.execute("COMMIT")
        rng = random.Random(seed)
        left = operations - accounts
        while left:
            n = min(left, 5_000)
            updates = [(rng.randint(-50, 50), rng.randint(1, accounts)) for _ in range(n)]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(f"UPDATE {TABLE} SET balance = balance + ? WHERE id = ?", updates)
            conn.execute("COMMIT")
            left -= n
        total = conn.execute(f"SELECT sum(balance) FROM {TABLE}").fetchone()[0]
        logged = conn.execute("SELECT count(*) FROM _cutline_changes").fetchone()[0]
    finally:
        conn.close()
    if logged != operations:
        raise BenchError(f"the change log holds {logged} changes, expected {operations}")
    return Workload(path, source, accounts, operations, float(total))
