"""The change-capture producer: tails the primary's change log into the ops topic.

Each batch of change-log rows is published in one Kafka transaction together with a
``CapturePosition`` record on the capture topic. So a batch, the markers in it and the
position that says it was published become visible together or not at all:

* a marker reaches every partition of its declared set or none (invariant 2);
* after a crash, capture resumes right after the last committed position: no change is
  published twice or skipped, and the per-partition counts since the last marker are
  exact (they travel in the position record);
* a second capture process for the same source fences the first (same transactional id).

The primary is only read (WAL readers do not block writers), plus one short DELETE of
change-log rows already durable in Kafka.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from cutline.errors import BrokerError, ConfigError, DeadlineExceeded
from cutline.kafka_clients import (
    ensure_topics,
    make_consumer,
    make_producer,
    source_topic_specs,
    wait_for_cluster,
)
from cutline.settings import Topics
from producers.markers import request_marker
from producers.operations import TableLayout, partition_for, to_operations
from producers.sqlite_changelog import (
    KIND_MARKER,
    connect,
    describe_table,
    forget_changes,
    install,
    installed_tables,
    read_changes,
)
from schemas.codec import CodecError, decode, encode
from schemas.records import CapturePosition, ConsistencyMarker, TableDefinition

log = logging.getLogger("cutline.capture")

DEFAULT_PARTITIONS = 4
MARKER_KEY = b"\x00cutline-marker"
TABLE_KEY = b"\x00cutline-table"
POSITION_KEY = b"position"


@dataclass
class CaptureConfig:
    db_path: str
    tables: list[str]
    bootstrap: str
    source: str = "default"
    partitions: int | None = None
    mark_every_s: float | None = None
    batch_size: int = 5000
    idle_sleep_s: float = 0.05
    transaction_timeout_s: float = 30.0


@dataclass
class CaptureStats:
    changes: int = 0
    operations: int = 0
    markers: int = 0
    transactions: int = 0
    last_seq: int = 0
    started: float = field(default_factory=time.monotonic)


class Capture:
    """One capture process for one source. ``open()`` then ``run()`` or ``step()``."""

    def __init__(self, config: CaptureConfig, *, progress: Callable[[str], None] | None = None):
        self.config = config
        self.topics = Topics(config.source)
        self.progress = progress or log.info
        self.stats = CaptureStats()
        self._conn = None
        self._producer = None
        self._layouts: dict[str, TableLayout] = {}
        self.partitions = 0
        self._seq = 0
        self._marker_id = 0
        self._counts: list[int] = []
        self._last_mark = time.monotonic()

    # -- set-up ---------------------------------------------------------------------------

    def open(self) -> None:
        """Validate inputs, reach Kafka, install capture, fence old instances, recover."""
        cfg = self.config
        conn = connect(cfg.db_path)
        for table in cfg.tables:
            describe_table(conn, cfg.source, table)  # missing tables fail before any change
        wait_for_cluster(cfg.bootstrap, deadline_s=10.0)
        install(conn, cfg.source, cfg.tables)
        self._conn = conn
        self._layouts = {
            t: TableLayout.of(describe_table(conn, cfg.source, t)) for t in installed_tables(conn)
        }
        counts = ensure_topics(
            cfg.bootstrap, source_topic_specs(self.topics, cfg.partitions or DEFAULT_PARTITIONS)
        )
        self.partitions = counts[self.topics.ops]
        if cfg.partitions and cfg.partitions != self.partitions:
            raise ConfigError(
                f"topic {self.topics.ops} already has {self.partitions} partitions, not "
                f"{cfg.partitions}: drop --partitions to use it, or capture into a new --source"
            )
        self._producer = make_producer(
            cfg.bootstrap,
            **{
                "transactional.id": self.topics.capture_transactional_id,
                "transaction.timeout.ms": int(cfg.transaction_timeout_s * 1000),
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
            },
        )
        try:
            self._producer.init_transactions(30)
        except KafkaException as exc:
            raise BrokerError(f"cannot start a Kafka transaction for capture: {exc}") from exc
        self._recover_position()
        self._broadcast_definitions()
        self.progress(
            f"capturing {', '.join(sorted(self._layouts))} from {cfg.db_path} into "
            f"{self.topics.ops} ({self.partitions} partitions), resuming after change {self._seq}"
        )

    def _recover_position(self) -> None:
        position = read_last_position(self.config.bootstrap, self.topics)
        if position is None:
            self._seq, self._marker_id = 0, 0
            self._counts = [0] * self.partitions
            return
        if position.partitions != self.partitions:
            raise ConfigError(
                f"{self.topics.ops} had {position.partitions} partitions when capture last ran "
                f"and has {self.partitions} now; row order cannot survive repartitioning: "
                "capture into a new --source"
            )
        self._seq, self._marker_id = position.seq, position.marker_id
        self._counts = list(position.counts)

    def _broadcast_definitions(self) -> None:
        """Send every table definition to every partition, before any of its operations."""
        definitions = [layout.definition for layout in self._layouts.values()]
        self._transaction(lambda: self._produce_definitions(definitions), position=True)

    def _produce_definitions(self, definitions: list[TableDefinition]) -> None:
        for definition in definitions:
            value = encode(definition)
            for p in range(self.partitions):
                self._produce(self.topics.ops, value, TABLE_KEY, p)

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, status_every_s: float = 10.0) -> CaptureStats:
        """Publish changes until ``stop`` is set; the current transaction finishes first."""
        last_status = time.monotonic()
        while not stop.is_set():
            if self.config.mark_every_s and (
                time.monotonic() - self._last_mark >= self.config.mark_every_s
            ):
                ticket = request_marker(self._conn, note="mark-every")
                self._last_mark = time.monotonic()
                log.debug("requested marker %s", ticket.marker_id)
            handled = self.step()
            if not handled:
                stop.wait(self.config.idle_sleep_s)
            if time.monotonic() - last_status >= status_every_s:
                last_status = time.monotonic()
                self.progress(self.status_line())
        return self.stats

    def status_line(self) -> str:
        s = self.stats
        rate = s.operations / max(1e-9, time.monotonic() - s.started)
        return (
            f"captured {s.changes} changes as {s.operations} operations ({rate:,.0f} ops/s), "
            f"{s.markers} markers, last change {s.last_seq}"
        )

    def step(self) -> int:
        """Publish one batch of committed changes; return how many change rows it held."""
        rows = read_changes(self._conn, self._seq, self.config.batch_size)
        if not rows:
            return 0
        saved = (self._marker_id, list(self._counts))
        produced: dict[str, int] = {"ops": 0, "markers": 0}

        def body() -> None:
            for row in rows:
                if row.kind == KIND_MARKER:
                    self._produce_marker(row.marker_id or 0, row.at_us, row.seq)
                    produced["markers"] += 1
                else:
                    produced["ops"] += self._produce_change(row)

        try:
            self._transaction(body, position=True, last_seq=rows[-1].seq)
        except BaseException:
            self._marker_id, self._counts = saved
            raise
        self._seq = rows[-1].seq
        forget_changes(self._conn, self._seq)
        self.stats.changes += len(rows)
        self.stats.operations += produced["ops"]
        self.stats.markers += produced["markers"]
        self.stats.last_seq = self._seq
        return len(rows)

    def _produce_change(self, row) -> int:
        layout = self._layouts.get(row.table)
        if layout is None:
            definition = describe_table(self._conn, self.config.source, row.table)
            layout = self._layouts[row.table] = TableLayout.of(definition)
            self._produce_definitions([definition])
        pairs = to_operations(row, layout, self.config.source)
        for key, operation in pairs:
            p = partition_for(key, self.partitions)
            self._produce(self.topics.ops, encode(operation), key, p)
            self._counts[p] += 1
        return len(pairs)

    def _produce_marker(self, marker_id: int, t1_us: int, seq: int) -> None:
        marker = ConsistencyMarker(
            source=self.config.source,
            marker_id=marker_id,
            t1_us=t1_us,
            seq=seq,
            partitions=self.partitions,
            counts=tuple(self._counts),
            tables=tuple(sorted(self._layouts)),
        )
        value = encode(marker)
        for p in range(self.partitions):
            self._produce(self.topics.ops, value, MARKER_KEY, p)
        self._marker_id = marker_id
        self._counts = [0] * self.partitions

    def _produce(self, topic: str, value: bytes, key: bytes, partition: int) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, partition)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _transaction(
        self, body: Callable[[], None], *, position: bool, last_seq: int | None = None
    ):
        """Run ``body`` inside one Kafka transaction that also records the position."""
        producer = self._producer
        deadline = time.monotonic() + self.config.transaction_timeout_s
        try:
            producer.begin_transaction()
            body()
            if position:
                record = CapturePosition(
                    source=self.config.source,
                    seq=self._seq if last_seq is None else last_seq,
                    marker_id=self._marker_id,
                    partitions=self.partitions,
                    counts=tuple(self._counts),
                )
                self._produce(self.topics.capture_position, encode(record), POSITION_KEY, 0)
            while True:
                try:
                    producer.commit_transaction(max(1.0, deadline - time.monotonic()))
                    break
                except KafkaException as exc:
                    if exc.args[0].retriable() and time.monotonic() < deadline:
                        continue
                    raise
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or error.code() == KafkaError._FENCED:
                raise BrokerError(
                    f"capture for source {self.config.source!r} was fenced or failed fatally "
                    f"({error.str()}); another capture process may have taken over"
                ) from exc
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(10)
            raise BrokerError(f"Kafka transaction aborted: {error.str()}") from exc
        self.stats.transactions += 1

    def close(self, timeout_s: float = 10.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout_s)
            self._producer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def read_last_position(
    bootstrap: str, topics: Topics, deadline_s: float = 15.0
) -> CapturePosition | None:
    """The last committed capture position, read from the tail of the capture topic."""
    consumer = make_consumer(bootstrap, f"{topics.capture_position}.reader")
    try:
        tp = TopicPartition(topics.capture_position, 0)
        low, high = _watermarks(consumer, tp, deadline_s)
        if high <= low:
            return None
        consumer.assign([TopicPartition(tp.topic, 0, max(low, high - 64))])
        last: CapturePosition | None = None
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            message = consumer.poll(0.5)
            if message is None:
                position = consumer.position([tp])[0].offset
                if position >= high:
                    return last
                continue
            if message.error():
                continue
            try:
                record = decode(message.value())
            except CodecError:
                continue
            if isinstance(record, CapturePosition):
                last = record
            if message.offset() >= high - 1:
                return last
        raise DeadlineExceeded(
            f"reading the capture position from {topics.capture_position} took over "
            f"{deadline_s:.0f} s"
        )
    finally:
        consumer.close()


def _watermarks(consumer, tp: TopicPartition, deadline_s: float) -> tuple[int, int]:
    """Watermarks of a partition, retrying while leadership settles (new topics)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=5)
        except KafkaException as exc:
            if not exc.args[0].retriable() and exc.args[0].code() not in (
                KafkaError.NOT_LEADER_FOR_PARTITION,
                KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError._TRANSPORT,
            ):
                raise BrokerError(f"cannot read {tp.topic}: {exc.args[0].str()}") from exc
            if time.monotonic() > end:
                raise DeadlineExceeded(
                    f"no leader answered for {tp.topic} within {deadline_s:.0f} s"
                ) from exc
            time.sleep(0.2)
