"""Read what cutline wrote, for fault tests: the ops topic as a consumer sees it, and the
replica shards as one database."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from consumers.replica import open_readonly, shard_path
from cutline.kafka_clients import make_consumer
from schemas.codec import CodecError, decode
from schemas.records import ConsistencyMarker, Operation
from tests.integration.pipeline import Rows, table_rows


@dataclass(frozen=True)
class Entry:
    partition: int
    offset: int
    record: object  # a decoded record, or None for bytes that are not one


def read_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    committed_only: bool = True,
    deadline_s: float = 60.0,
) -> list[Entry]:
    """Every record of ``topic`` up to its end, as read_committed (or uncommitted) sees it."""
    consumer = make_consumer(
        bootstrap,
        f"ops-log-{time.monotonic_ns()}",
        **{
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        },
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    entries: list[Entry] = []
    at_end: set[int] = set()
    end = time.monotonic() + deadline_s
    try:
        while len(at_end) < partitions:
            if time.monotonic() > end:
                raise AssertionError(
                    f"reading {topic} took over {deadline_s:.0f} s (at end: {sorted(at_end)})"
                )
            for message in consumer.consume(1000, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                    continue
                at_end.discard(message.partition())
                try:
                    record = decode(message.value())
                except CodecError:
                    record = None
                entries.append(Entry(message.partition(), message.offset(), record))
    finally:
        consumer.close()
    return entries


def marker_placement(entries: list[Entry]) -> dict[int, Counter[int]]:
    """For each marker id: how many times it appears in each partition."""
    placed: dict[int, Counter[int]] = {}
    for entry in entries:
        if isinstance(entry.record, ConsistencyMarker):
            placed.setdefault(entry.record.marker_id, Counter())[entry.partition] += 1
    return placed


def assert_markers_whole(entries: list[Entry], partitions: int) -> dict[int, Counter[int]]:
    """Invariant 2 on the topic itself: each marker once in every partition, or nowhere."""
    placed = marker_placement(entries)
    every = Counter(dict.fromkeys(range(partitions), 1))
    for marker_id, counts in placed.items():
        assert counts == every, f"marker {marker_id} is not whole: per partition {dict(counts)}"
    return placed


def assert_no_change_twice(entries: list[Entry]) -> int:
    """No change of the primary was published twice; returns how many operations there are."""
    seen = Counter(
        (e.record.seq, e.record.table, e.record.op, repr(sorted(e.record.key.items())))
        for e in entries
        if isinstance(e.record, Operation)
    )
    twice = [k for k, n in seen.items() if n > 1]
    assert not twice, f"{len(twice)} operations were published more than once, e.g. {twice[:3]}"
    return len(seen)


def replica_rows(
    replica_dir: Path, source: str, partitions: int, tables: dict[str, list[str]]
) -> Rows:
    """The replica as one database: the union of every shard's rows, per table.

    A shard not yet given a table (no operation of it reached that partition) adds none.
    """
    out: Rows = {table: [] for table in tables}
    for p in range(partitions):
        conn = open_readonly(shard_path(replica_dir, source, p))
        try:
            known = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            for table, columns in tables.items():
                if table in known:
                    out[table].extend(table_rows(conn, table, columns))
        finally:
            conn.close()
    return {table: sorted(rows, key=repr) for table, rows in out.items()}
