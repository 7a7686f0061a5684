"""The change-capture producer: tails the primary's change log into the ops topic.

Each batch of change-log rows is published in one Kafka transaction together with a
``CapturePosition`` record on the capture topic. So a batch, the markers in it and the
position that says it was published become visible together or not at all:

* a marker reaches every partition of its declared set or none (invariant 2);
* after a crash, capture resumes right after the last committed position: no change is
  published twice or skipped, and the per-partition counts since the last marker are
  exact (they travel in the position record);
* a second capture process for the same source fences the first (same transactional id);
* a transaction that fails for a reason Kafka may recover from (a leader change, a broker
  lost) is aborted and the batch published again, within ``retry_deadline_s``. If even
  aborting fails, the producer is rebuilt and the position read back from Kafka, because
  then only Kafka knows whether the commit went through.

Failpoints (``cutline.failpoints``) inside the transaction: ``capture.before_marker``,
``capture.marker_produced[P]`` (after the marker went to partition P),
``capture.batch_produced``, ``capture.before_commit``, and ``capture.after_commit``
(committed, not yet forgotten on the primary).

The primary is only read (WAL readers do not block writers), plus one short DELETE of
change-log rows already durable in Kafka.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from cutline import failpoints
from cutline.errors import BrokerError, ConfigError, CutlineError, DeadlineExceeded
from cutline.kafka_clients import (
    MAX_RECORD_BYTES,
    PRODUCER_MAX_BYTES,
    ensure_topics,
    make_consumer,
    make_producer,
    source_topic_specs,
    topic_config,
    wait_for_cluster,
)
from cutline.kafka_errors import describe, is_authorization
from cutline.metrics import NO_METRICS, Metrics
from cutline.settings import Topics
from cutline.stopping import interruptible
from producers.backlog import capture_backlog
from producers.markers import request_marker
from producers.operations import TableLayout, partition_for, to_operations
from producers.schema_changes import (
    follow_schema_changes,
    layouts_at,
    reinstalled_definition,
    schema_moved,
)
from producers.sqlite_changelog import (
    KIND_MARKER,
    KIND_SCHEMA,
    ChangeRow,
    connect,
    describe_table,
    forget_changes,
    install,
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
    retry_deadline_s: float = 120.0  # give up after Kafka refused transactions this long


class RecordTooLarge(CutlineError):
    """A change that Kafka cannot carry as one record; capture stops rather than drop it."""


class TransactionFailed(BrokerError):
    """A transaction was aborted for a reason Kafka may recover from; publish it again."""

    def __init__(self, message: str, *, position_reloaded: bool):
        super().__init__(message)
        self.position_reloaded = position_reloaded


@dataclass
class CaptureStats:
    changes: int = 0
    operations: int = 0
    markers: int = 0
    transactions: int = 0
    retried: int = 0
    last_seq: int = 0
    started: float = field(default_factory=time.monotonic)


class Capture:
    """One capture process for one source. ``open()`` then ``run()`` or ``step()``."""

    def __init__(
        self,
        config: CaptureConfig,
        *,
        progress: Callable[[str], None] | None = None,
        metrics: Metrics = NO_METRICS,
    ):
        self.config = config
        self.metrics = metrics
        self._status_mark = (time.monotonic(), 0)  # for the current rate of status lines
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
        self._max_record = MAX_RECORD_BYTES
        self._failing_since: float | None = None

    # -- set-up ---------------------------------------------------------------------------

    def open(self) -> None:
        """Validate inputs, reach Kafka, install capture, fence old instances, recover."""
        cfg = self.config
        conn = connect(cfg.db_path)
        for table in cfg.tables:
            describe_table(conn, cfg.source, table)  # missing tables fail before any change
        with interruptible():  # start-up waits (only these) end at once on SIGINT/SIGTERM
            wait_for_cluster(cfg.bootstrap, deadline_s=10.0)
        install(conn, cfg.source, cfg.tables)  # also follows schema changes made meanwhile
        self._conn = conn
        with interruptible():
            counts = ensure_topics(
                cfg.bootstrap,
                source_topic_specs(self.topics, cfg.partitions or DEFAULT_PARTITIONS),
            )
        self.partitions = counts[self.topics.ops]
        if cfg.partitions and cfg.partitions != self.partitions:
            raise ConfigError(
                f"topic {self.topics.ops} already has {self.partitions} partitions, not "
                f"{cfg.partitions}: drop --partitions to use it, or capture into a new --source"
            )
        self._max_record = self._record_limit()
        with interruptible():  # fencing the old capture, reading the position back
            self._producer = self._new_producer()
            self._recover_position()
        self._layouts = self._layouts_at_position()
        self._broadcast_definitions()
        self.metrics.captured(0, 0, self._seq)
        self.progress(
            f"capturing {', '.join(sorted(self._layouts))} from {cfg.db_path} into "
            f"{self.topics.ops} ({self.partitions} partitions), resuming after change {self._seq}"
        )

    def _new_producer(self):
        """A transactional producer, initialised: this fences any older capture process."""
        cfg = self.config
        producer = make_producer(
            cfg.bootstrap,
            **{
                "transactional.id": self.topics.capture_transactional_id,
                "transaction.timeout.ms": int(cfg.transaction_timeout_s * 1000),
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "message.max.bytes": PRODUCER_MAX_BYTES,
            },
        )
        end = time.monotonic() + max(30.0, cfg.transaction_timeout_s)
        while True:
            try:
                producer.init_transactions(max(1.0, min(30.0, end - time.monotonic())))
                return producer
            except KafkaException as exc:
                if not exc.args[0].retriable() or time.monotonic() >= end:
                    reason = describe(
                        exc.args[0],
                        resource=self.topics.capture_transactional_id,
                        operation="Write",
                    )
                    raise BrokerError(
                        f"cannot start a Kafka transaction for capture: {reason}"
                    ) from exc
                time.sleep(0.5)

    def _record_limit(self) -> int:
        """The largest record the ops topic takes: cutline's limit, or the topic's if lower."""
        try:
            configured = int(
                topic_config(self.config.bootstrap, self.topics.ops)["max.message.bytes"]
            )
        except Exception as exc:  # unknown yet, timed out, not allowed: assume cutline's own
            log.info("cannot read max.message.bytes of %s (%s)", self.topics.ops, exc)
            return MAX_RECORD_BYTES
        return min(MAX_RECORD_BYTES, configured - 1024)  # room for the batch header

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
        last_status, last_backlog = time.monotonic(), 0.0
        while not stop.is_set():
            self.metrics.beat()
            if self.metrics is not NO_METRICS and time.monotonic() - last_backlog >= 1.0:
                last_backlog = time.monotonic()
                backlog = capture_backlog(self._conn, self._seq)
                self.metrics.capture_backlog(backlog.changes, backlog.age_s())
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
        # the current rate: since the previous status line, not a cumulative average
        now = time.monotonic()
        since, before = self._status_mark
        rate = max(0, s.operations - before) / max(1e-9, now - since)
        self._status_mark = (now, s.operations)
        return (
            f"captured {s.changes} changes as {s.operations} operations ({rate:,.0f} ops/s), "
            f"{s.markers} markers, last change {s.last_seq}"
        )

    def step(self) -> int:
        """Publish one batch of committed changes; return how many change rows it held."""
        if self._producer is None:  # lost, and not rebuilt yet: only Kafka knows the position
            try:
                with interruptible():  # nothing is open: SIGTERM may end this wait at once
                    self._rebuild()
            except (BrokerError, DeadlineExceeded, KafkaException) as exc:
                failed = TransactionFailed(f"{exc}", position_reloaded=False)
                self._retry_later(failed)
                return 0
        rows = self._read_batch()
        if not rows:
            return 0
        saved = (self._marker_id, list(self._counts))
        saved_layouts = dict(self._layouts)
        produced: dict[str, int] = {"ops": 0, "markers": 0}

        def body() -> None:
            for row in rows:
                if row.kind == KIND_MARKER:
                    self._produce_marker(row.marker_id or 0, row.at_us, row.seq)
                    produced["markers"] += 1
                elif row.kind == KIND_SCHEMA:
                    self._produce_schema_change(row)
                else:
                    produced["ops"] += self._produce_change(row)
            failpoints.hit("capture.batch_produced")

        try:
            self._transaction(body, position=True, last_seq=rows[-1].seq)
        except BaseException as exc:
            self._layouts = saved_layouts  # definitions sent in the aborted batch are void
            if isinstance(exc, TransactionFailed):
                if not exc.position_reloaded:
                    self._marker_id, self._counts = saved
                else:
                    self._layouts = self._layouts_at_position()
                self._retry_later(exc)
                return 0
            self._marker_id, self._counts = saved
            raise
        self._failing_since = None
        failpoints.hit("capture.after_commit")
        self._seq = rows[-1].seq
        forget_changes(self._conn, self._seq)
        self.stats.changes += len(rows)
        self.stats.operations += produced["ops"]
        self.stats.markers += produced["markers"]
        self.stats.last_seq = self._seq
        self.metrics.captured(produced["ops"], produced["markers"], self._seq)
        return len(rows)

    def ready(self) -> tuple[bool, str]:
        """Readiness: opened, Kafka answers, and takes its transactions (none failing now).

        Called from the metrics server's thread: librdkafka handles are thread-safe, and an
        idle capture produces nothing, so Kafka is asked for the ops topic's metadata.
        """
        producer = self._producer
        if producer is None or self._conn is None:
            return False, "not connected to Kafka and the primary"
        if self._failing_since is not None:
            failing = time.monotonic() - self._failing_since
            return False, f"Kafka has refused transactions for {failing:.0f} s"
        try:
            producer.list_topics(self.topics.ops, timeout=2.0)
        except KafkaException as exc:
            return False, f"Kafka did not answer a metadata request: {exc.args[0].str()}"
        return True, f"ready: published up to change {self._seq}"

    def _read_batch(self) -> list[ChangeRow]:
        """The next batch, read in one read transaction that also checks schema_version.

        A DDL on the primary since the last check is followed first (ensure_schema in a
        write transaction: it may re-install tables, or raise ConfigError and stop capture),
        so no batch holding changes committed after a DDL is published before its fix-up.
        """
        conn = self._conn
        while True:
            conn.execute("BEGIN")
            try:
                if not schema_moved(conn):
                    return read_changes(conn, self._seq, self.config.batch_size)
            finally:
                conn.execute("COMMIT")
            reinstalled = follow_schema_changes(conn)
            if reinstalled:
                self.progress(f"schema change followed: re-installed {', '.join(reinstalled)}")

    def _layouts_at_position(self) -> dict[str, TableLayout]:
        """Each table's layout as of the position: change rows after it are in that layout."""
        definitions = layouts_at(self._conn, self.config.source, self._seq)
        return {table: TableLayout.of(d) for table, d in definitions.items()}

    def _produce_schema_change(self, row: ChangeRow) -> None:
        """A re-installed table: its new definition to every partition, in commit order."""
        definition = reinstalled_definition(row.table or "", row.after, self.config.source)
        self._produce_definitions([definition])
        if row.after is None:  # no longer captured: later markers do not list it
            self._layouts.pop(definition.table, None)
        else:
            self._layouts[definition.table] = TableLayout.of(replace(definition, reinstalled=False))

    def _retry_later(self, exc: TransactionFailed) -> None:
        """Note a failed transaction; give up once Kafka has refused them for too long."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self.stats.retried += 1
        waited = now - self._failing_since
        if waited > self.config.retry_deadline_s:
            raise BrokerError(
                f"capture could not commit a Kafka transaction for {waited:.0f} s; last "
                f"error: {exc}. Check the cluster (brokers up, min.insync.replicas met)"
            ) from exc
        self.progress(f"{exc}; publishing the batch again (retrying for {waited:.0f} s)")
        time.sleep(min(2.0, 0.2 * self.stats.retried))

    def _produce_change(self, row) -> int:
        layout = self._layouts.get(row.table)
        if layout is None:  # installed after this process started: its layout at this row
            definition = layouts_at(self._conn, self.config.source, row.seq - 1).get(row.table)
            definition = definition or describe_table(self._conn, self.config.source, row.table)
            layout = self._layouts[row.table] = TableLayout.of(definition)
            self._produce_definitions([definition])
        pairs = to_operations(row, layout, self.config.source)
        for key, operation in pairs:
            p = partition_for(key, self.partitions)
            value = encode(operation)
            if len(value) + len(key) > self._max_record:
                raise RecordTooLarge(
                    f"change {row.seq} ({operation.op} on table {row.table!r}, key "
                    f"{_short(operation.key)}) is a {len(value) + len(key):,}-byte record, over "
                    f"the {self._max_record:,} bytes topic {self.topics.ops} takes; capture "
                    "stopped without skipping it. Shrink that row (keep large payloads outside "
                    "captured tables), or raise the topic's max.message.bytes if it is below "
                    f"{MAX_RECORD_BYTES:,}"
                )
            self._produce(self.topics.ops, value, key, p)
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
        failpoints.hit("capture.before_marker")
        for p in range(self.partitions):
            self._produce(self.topics.ops, value, MARKER_KEY, p)
            failpoints.hit("capture.marker_produced", p)
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
        """Run ``body`` inside one Kafka transaction that also records the position.

        Raises TransactionFailed when Kafka may recover (the caller publishes the batch
        again), BrokerError when this producer was fenced or failed fatally.
        """
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
            failpoints.hit("capture.before_commit")
            while True:
                try:
                    producer.commit_transaction(max(1.0, deadline - time.monotonic()))
                    break
                except KafkaException as exc:
                    error = exc.args[0]
                    if error.retriable() and time.monotonic() < deadline:
                        continue
                    raise
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or error.code() == KafkaError._FENCED:
                raise BrokerError(
                    f"capture for source {self.config.source!r} was fenced or failed fatally "
                    f"({error.str()}); another capture process may have taken over"
                ) from exc
            if is_authorization(error):  # waiting cannot help: name the ACL to add
                self._abort_quietly()
                written = f"{self.topics.ops} and {self.topics.capture_position}"
                raise BrokerError(
                    f"capture cannot write: {describe(error, resource=written, operation='Write')}"
                ) from exc
            if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                self._abort_quietly()
                raise RecordTooLarge(
                    f"Kafka refused a record as too large ({error.str()}): check "
                    f"max.message.bytes of {self.topics.ops} (cutline creates it with "
                    f"{MAX_RECORD_BYTES:,} bytes and more)"
                ) from exc
            reloaded = self._abort_or_rebuild()
            raise TransactionFailed(
                f"Kafka transaction aborted: {error.str()}", position_reloaded=reloaded
            ) from exc
        except BaseException:
            self._abort_quietly()
            raise
        self.stats.transactions += 1

    def _abort_quietly(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(KafkaException):
                self._producer.abort_transaction(10)

    def _abort_or_rebuild(self) -> bool:
        """Abort the open transaction; if even that fails, start over from Kafka's word.

        Returns True when the position was read back from Kafka: a commit that timed out
        may still have gone through, and only the capture topic knows.
        """
        try:
            self._producer.abort_transaction(max(5.0, self.config.transaction_timeout_s / 2))
            return False
        except KafkaException as exc:
            log.warning("aborting the transaction failed (%s); restarting the producer", exc)
        old, self._producer = self._producer, None
        with contextlib.suppress(KafkaException, RuntimeError):
            old.purge()
        try:
            self._rebuild()
        except (BrokerError, DeadlineExceeded, KafkaException) as exc:
            # Kafka is still away: the next step rebuilds first, within retry_deadline_s
            log.warning("restarting the producer failed (%s); trying again", exc)
            return False
        return True

    def _rebuild(self) -> None:
        """A new producer, which fences the old one and ends its transaction, and the
        position read back from Kafka. The producer is kept only once both succeeded."""
        producer = self._new_producer()
        self._recover_position()
        self._producer = producer

    def close(self, timeout_s: float = 10.0) -> None:
        if self._producer is not None:
            try:  # a producer in a fatal state raises here; the cause was already raised
                self._producer.flush(timeout_s)
            except KafkaException as exc:
                log.info("flushing the producer on close: %s", exc)
            self._producer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _short(key: dict) -> str:
    text = repr(key)
    return text if len(text) <= 120 else text[:117] + "..."


def read_last_position(
    bootstrap: str, topics: Topics, deadline_s: float = 15.0
) -> CapturePosition | None:
    """The last committed capture position, read from the tail of the capture topic.

    The tail may hold nothing but aborted transactions (each retry of a batch Kafka would
    not commit leaves its position record there, aborted, and a read_committed consumer
    never sees it), so windows further and further back are read until one holds a
    committed position. None only when no committed position exists at all.
    """
    consumer = make_consumer(bootstrap, f"{topics.capture_position}.reader")
    try:
        tp = TopicPartition(topics.capture_position, 0)
        low, high = _watermarks(consumer, tp, deadline_s)
        end = time.monotonic() + deadline_s
        stop, window = high, 64
        while stop > low:
            start = max(low, stop - window)
            found = _last_position_between(consumer, tp, start, stop, end)
            if found is not None:
                return found
            stop, window = start, window * 8
        return None
    except _OutOfTime:
        raise DeadlineExceeded(
            f"reading the capture position from {topics.capture_position} took over "
            f"{deadline_s:.0f} s"
        ) from None
    finally:
        consumer.close()


class _OutOfTime(Exception):
    pass


def _last_position_between(
    consumer, tp: TopicPartition, start: int, stop: int, end: float
) -> CapturePosition | None:
    """The last committed CapturePosition at offsets [start, stop), or None."""
    consumer.assign([TopicPartition(tp.topic, 0, start)])
    last: CapturePosition | None = None
    while time.monotonic() < end:
        message = consumer.poll(0.5)
        if message is None:
            if consumer.position([tp])[0].offset >= stop:
                return last
            continue
        if message.error():
            if is_authorization(message.error()):
                reason = describe(message.error(), resource=tp.topic, operation="Read")
                raise BrokerError(f"cannot read {tp.topic}: {reason}")
            continue
        if message.offset() >= stop:
            return last
        try:
            record = decode(message.value())
        except CodecError:
            record = None
        if isinstance(record, CapturePosition):
            last = record
        if message.offset() >= stop - 1:
            return last
    raise _OutOfTime


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
                reason = describe(exc.args[0], resource=tp.topic, operation="Read")
                raise BrokerError(f"cannot read {tp.topic}: {reason}") from exc
            if time.monotonic() > end:
                raise DeadlineExceeded(
                    f"no leader answered for {tp.topic} within {deadline_s:.0f} s"
                ) from exc
            time.sleep(0.2)
