"""Capture throughput: cutline's capture vs a bare producer sending the very same bytes.

The difference is what cutline costs on top of Kafka: reading the SQLite change log,
turning rows into Avro operations, one Kafka transaction per batch (with its position
record), and deleting published rows from the primary. The baseline gets the records
cutline produced (read back from the ops topic: same keys, values and partitions) and the
same producer settings minus the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer

from bench.common import (
    PARTITIONS,
    TABLE,
    BenchError,
    Record,
    Workload,
    end_offsets,
    log,
    per_second,
    ratio,
    timed,
)
from cutline.kafka_clients import TopicSpec, ensure_topics
from cutline.kafka_config import client_properties
from producers.capture import Capture, CaptureConfig


@dataclass
class CaptureResult:
    ops: int
    cutline_s: float
    open_s: float
    transactions: int
    bare_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        cutline = per_second(self.ops, self.cutline_s)
        bare = per_second(self.ops, self.bare_s)
        return {
            "ops": self.ops,
            "partitions": PARTITIONS,
            "cutline_ops_per_s": cutline,
            "bare_producer_ops_per_s": bare,
            "ratio": ratio(cutline, bare),
            "cutline_s": round(self.cutline_s, 3),
            "cutline_open_s": round(self.open_s, 3),
            "cutline_ops_per_s_after_open": per_second(self.ops, self.cutline_s - self.open_s),
            "kafka_transactions": self.transactions,
            "bare_producer_s": round(self.bare_s, 3),
        }


def capture_phase(
    bootstrap: str, workload: Workload, deadline_s: float
) -> tuple[Capture, CaptureResult]:
    """Time ``Capture.open()`` plus ``step()`` until all changes are in committed
    transactions. The capture stays open: the marker phase runs it on."""
    config = CaptureConfig(
        str(workload.db_path), [TABLE], bootstrap, source=workload.source, partitions=PARTITIONS
    )
    capture = Capture(config, progress=log)
    try:
        with timed() as total:
            capture.open()
            open_s = total.so_far()
            while capture.stats.operations < workload.operations:
                if total.so_far() > deadline_s:
                    raise BenchError(
                        f"capture: published {capture.stats.operations} of "
                        f"{workload.operations} operations within {deadline_s:.0f} s"
                    )
                if not capture.step():
                    raise BenchError(
                        f"capture: change log drained after {capture.stats.operations} "
                        f"operations, expected {workload.operations}"
                    )
    except BaseException:
        capture.close()
        raise
    result = CaptureResult(workload.operations, total.elapsed, open_s, capture.stats.transactions)
    log(
        f"capture: {workload.operations} ops in {total.elapsed:.2f} s "
        f"(open {open_s:.2f} s, {capture.stats.transactions} transactions)"
    )
    return capture, result


def bare_producer_phase(
    bootstrap: str, records: list[Record], topic: str, deadline_s: float
) -> float:
    """Seconds for a plain idempotent producer to send ``records`` and flush them."""
    ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS)])
    producer = Producer(
        {
            **client_properties(bootstrap),  # the estate's settings (CUTLINE_KAFKA_*)
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 20,
            "batch.size": 1_000_000,  # as capture configures it
        }
    )
    with timed() as t:
        for record in records:
            while True:
                try:
                    producer.produce(topic, record.value, record.key, record.partition)
                    break
                except BufferError:
                    producer.poll(0.05)
            if t.so_far() > deadline_s:
                raise BenchError(f"bare producer: not done within {deadline_s:.0f} s")
        left = producer.flush(max(1.0, deadline_s - t.so_far()))
    if left:
        raise BenchError(f"bare producer: {left} records not acknowledged within {deadline_s} s")
    written = sum(end_offsets(bootstrap, topic, PARTITIONS).values())
    if written != len(records):
        raise BenchError(f"bare producer: topic holds {written} records, sent {len(records)}")
    log(f"bare producer: {len(records)} records in {t.elapsed:.2f} s")
    return t.elapsed
