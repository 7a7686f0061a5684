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
change-log rows already durable in Kafka. A big table's initial snapshot is read by capture
itself, in chunks, each published in the same transaction as the change batch read with
it and with its progress in the position record (``producers/initial_snapshot.py``).
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
from producers.background_marks import BackgroundMarks
from producers.backlog import capture_backlog
from producers.change_runs import RunEncoder
from producers.chunk_records import chunk_records, partitions_of
from producers.digest_records import digest_record
from producers.initial_snapshot import CHUNK_ROWS, Chunk, InitialSnapshots, changes_after
from producers.operations import RecordBuilder, TableLayout, partition_for, to_operations
from producers.schema_changes import (
    ensure_schema,
    layouts_at,
    reinstalled_definition,
    schema_moved,
)
from producers.sources import (
    SourceRecord,
    Start,
    database_id,
    install_source,
    plan_start,
    read_registered_changes,
    read_view,
    save_cursor,
)
from producers.sqlite_changelog import (
    KIND_DELETE,
    KIND_DIGEST,
    KIND_INSERT,
    KIND_MARKER,
    KIND_SCHEMA,
    KIND_UPDATE,
    ChangeRow,
    connect,
    describe_table,
    now_us,
)
from producers.triggers import forget_pending
from producers.write_lock import (
    DEFAULT_LOCK_TIMEOUT_S,
    begin_write,
    try_begin_write,
    use_wal,
)
from schemas.codec import OPERATION_HEADER, CodecError, decode, encode
from schemas.records import CapturePosition, ConsistencyMarker, TableDefinition

log = logging.getLogger("cutline.capture")

DEFAULT_PARTITIONS = 4
MARKER_KEY = b"\x00cutline-marker"
TABLE_KEY = b"\x00cutline-table"
POSITION_KEY = b"position"
_CHANGE_KINDS = frozenset((KIND_INSERT, KIND_UPDATE, KIND_DELETE))  # rows of a table's runs


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
    digest_every: int = 1  # markers of --mark-every: the primary's digest on every N-th
    new_incarnation: bool = False  # this database is the source's primary restored from a backup
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S  # install's wait for the primary's write lock
    snapshot_chunk_rows: int = CHUNK_ROWS  # rows per chunk of an initial snapshot


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
        self._encoders: dict[str, RunEncoder] = {}  # per table, for its current layout
        self.partitions = 0
        self._seq = 0
        self._marker_id = 0
        self._counts: list[int] = []
        self._last_mark = time.monotonic()
        self._max_record = MAX_RECORD_BYTES
        self._failing_since: float | None = None
        self._database_id = ""
        self._incarnation = 0
        self._saved_cursor = 0  # the cursor last recorded in the primary's _cutline_sources
        self._lock_waiting_since: float | None = None
        self._lock_noted = 0.0
        self._table_starts: dict[str, int] = {}
        self._tables: tuple[str, ...] = ()  # this source's tables (others may capture more)
        # chunked initial snapshots under way (producers/initial_snapshot.py)
        self._snapshots = InitialSnapshots(config.source, config.snapshot_chunk_rows)
        self._chunk: Chunk | None = None  # the next chunk, read with the batch

    # -- set-up ---------------------------------------------------------------------------

    def open(self) -> None:
        """Validate inputs, reach Kafka, fence old instances, check the database is the
        source's own (``producers.sources``), install capture, recover."""
        cfg = self.config
        conn = connect(cfg.db_path)
        self._conn = conn
        for table in cfg.tables:
            describe_table(conn, cfg.source, table)  # missing tables fail before any change
        with interruptible():  # start-up waits (only these) end at once on SIGINT/SIGTERM
            wait_for_cluster(cfg.bootstrap, deadline_s=10.0)
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
            position = self._recover_position()
        with interruptible():  # the write-lock wait; the install rolls back if interrupted
            self._install(position)
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

    def _install(self, position: CapturePosition | None) -> None:
        """Install capture for this source in one write transaction, as the plan says."""
        cfg, conn = self.config, self._conn
        plan_start(  # refuse another database before changing anything in it
            cfg.source,
            position,
            read_view(conn, cfg.source),
            new_incarnation=cfg.new_incarnation,
            db_path=cfg.db_path,
        )
        use_wal(conn, cfg.lock_timeout_s, self.progress)
        begin_write(conn, "installing capture", cfg.lock_timeout_s, self.progress)
        try:
            plan = plan_start(  # again, under the lock: nothing changed in between
                cfg.source,
                position,
                read_view(conn, cfg.source),
                new_incarnation=cfg.new_incarnation,
                db_path=cfg.db_path,
            )
            last_marker = position.marker_id if position else 0
            record, _ = install_source(
                conn, cfg.source, cfg.tables, plan, last_marker, cfg.snapshot_chunk_rows
            )
            database = database_id(conn) or ""
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if plan.start is not Start.RESUME:
            self.progress(
                f"source {cfg.source!r} on {cfg.db_path}: {plan.start.value} (incarnation "
                f"{plan.incarnation}), starting after change {record.cursor_seq}"
            )
        self._database_id = database
        self.use_source(record)
        self._load_snapshots(position)

    def _load_snapshots(self, position: CapturePosition | None) -> None:
        """The chunked snapshots under way, from the primary, with the progress the last
        committed position gives (only if it is this database's, this incarnation's)."""
        mine = (
            position is not None
            and position.database_id == self._database_id
            and position.incarnation == self._incarnation
        )
        self._snapshots.load(self._conn, position.snapshots if mine and position else ())

    def use_source(self, record: SourceRecord) -> None:
        """Capture what the source's record says: its tables, from its cursor."""
        self._incarnation = record.incarnation
        self._seq = self._saved_cursor = record.cursor_seq
        self._tables = record.tables
        self._table_starts = dict(record.table_starts)
        self._layouts = self._layouts_at_position()

    def _recover_position(self) -> CapturePosition | None:
        position = read_last_position(self.config.bootstrap, self.topics)
        if position is None:
            self._seq, self._marker_id = 0, 0
            self._counts = [0] * self.partitions
            return None
        if position.partitions != self.partitions:
            raise ConfigError(
                f"{self.topics.ops} had {position.partitions} partitions when capture last ran "
                f"and has {self.partitions} now; row order cannot survive repartitioning: "
                "capture into a new --source"
            )
        self._seq, self._marker_id = position.seq, position.marker_id
        self._counts = list(position.counts)
        return position

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
        marks = BackgroundMarks(
            self.config.db_path,
            self.config.digest_every,
            lock_timeout_s=self.config.lock_timeout_s,
            on_locked=self._note_lock_wait,
        )
        try:
            while not stop.is_set():
                self.metrics.beat()
                marks.raise_failure()
                if self.metrics is not NO_METRICS and time.monotonic() - last_backlog >= 1.0:
                    last_backlog = time.monotonic()
                    backlog = capture_backlog(self._conn, self._seq)
                    self.metrics.capture_backlog(backlog.changes, backlog.age_s())
                due = bool(self.config.mark_every_s) and (
                    time.monotonic() - self._last_mark >= (self.config.mark_every_s or 0.0)
                )
                if due and marks.start("mark-every"):  # the digest runs beside this loop
                    self._last_mark = time.monotonic()
                handled = self.step()
                if not handled:
                    stop.wait(self.config.idle_sleep_s)
                if time.monotonic() - last_status >= status_every_s:
                    last_status = time.monotonic()
                    self.progress(self.status_line())
        finally:
            marks.join(self.config.transaction_timeout_s)
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
        chunk, self._chunk = self._chunk, None
        if not rows and chunk is None:
            if self._saved_cursor < self._seq or self._snapshots.active():
                self._save_cursor()  # (a finished snapshot not forgotten on the primary yet)
            return 0
        saved = (self._marker_id, list(self._counts))
        saved_snapshots = self._snapshots.save()
        saved_layouts = dict(self._layouts)
        produced: dict[str, int] = {"ops": 0, "markers": 0}

        def body() -> None:
            run: list[ChangeRow] = []  # consecutive changes of one table, encoded together
            for row in rows:
                if row.kind in _CHANGE_KINDS:
                    if run and run[0].table != row.table:
                        produced["ops"] += self._produce_run(run)
                        run = []
                    run.append(row)
                    continue
                if run:
                    produced["ops"] += self._produce_run(run)
                    run = []
                if row.kind == KIND_MARKER:
                    self._snapshots.check_marker(row)
                    self._produce_marker(row.marker_id or 0, row.at_us, row.seq)
                    produced["markers"] += 1
                elif row.kind == KIND_SCHEMA:
                    self._snapshots.schema_changed(row)
                    self._produce_schema_change(row)
                elif row.kind == KIND_DIGEST:
                    self._produce(self.topics.control, *digest_record(self.config.source, row))
                else:
                    produced["ops"] += self._produce_run([row])  # an unknown kind: as before
            if run:
                produced["ops"] += self._produce_run(run)
            if chunk is not None:
                produced["ops"] += self._produce_chunk(chunk)
            failpoints.hit("capture.batch_produced")

        try:
            self._transaction(body, position=True, last_seq=rows[-1].seq if rows else self._seq)
        except BaseException as exc:
            self._layouts = saved_layouts  # definitions sent in the aborted batch are void
            if isinstance(exc, TransactionFailed):
                if not exc.position_reloaded:
                    self._marker_id, self._counts = saved
                    self._snapshots.restore(saved_snapshots)
                else:
                    self._layouts = self._layouts_at_position()
                self._retry_later(exc)
                return 0
            self._marker_id, self._counts = saved
            self._snapshots.restore(saved_snapshots)
            raise
        self._failing_since = None
        failpoints.hit("capture.after_commit")
        self._seq = rows[-1].seq if rows else self._seq
        self._save_cursor()
        self.stats.changes += len(rows)
        self.stats.operations += produced["ops"]
        self.stats.markers += produced["markers"]
        self.stats.last_seq = self._seq
        self.metrics.captured(produced["ops"], produced["markers"], self._seq)
        return len(rows) + (len(chunk.rows) if chunk is not None else 0)

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

    def _save_cursor(self) -> None:
        """Record this source's cursor on the primary and trim the change log.

        Never waits for the write lock: while an application holds it, nothing new can be
        committed to the change log either, so the trim is only put off (and logged) and
        capture goes on publishing; the next step tries again. Kafka's position stays the
        truth: at start-up the cursor is set from it.
        """
        if not try_begin_write(self._conn):
            self._note_lock_wait("recording this source's cursor; capture goes on publishing")
            return
        try:
            save_cursor(self._conn, self.config.source, self._seq)
            forget_pending(self._conn)  # no application statement is mid-way: we hold the lock
            finished = self._snapshots.record(self._conn)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._snapshots.recorded(finished)
        self._saved_cursor = self._seq
        self._lock_waiting_since = None

    def _note_lock_wait(self, what: str) -> None:
        now = time.monotonic()
        if self._lock_waiting_since is None:
            self._lock_waiting_since, self._lock_noted = now, 0.0
        if now - self._lock_noted >= 10.0:
            self._lock_noted = now
            self.progress(
                "waiting for the primary's write lock held by another connection "
                f"({what}; {now - self._lock_waiting_since:.0f} s so far)"
            )

    def _read_batch(self) -> list[ChangeRow]:
        """The next batch, read in one read transaction that also checks schema_version.

        A DDL on the primary since the last check is followed first (ensure_schema in a
        write transaction: it may re-install tables, or raise ConfigError and stop capture),
        so no batch holding changes committed after a DDL is published before its fix-up.
        While another connection holds the write lock, nothing is published (logged).
        """
        conn = self._conn
        while True:
            conn.execute("BEGIN")
            try:
                if not schema_moved(conn):
                    rows = read_registered_changes(
                        conn, self.config.source, self._seq, self.config.batch_size
                    )
                    self._chunk = self._read_chunk(rows)  # same read transaction: same instant
                    return rows
            finally:
                conn.execute("COMMIT")
            if not try_begin_write(conn):
                self._note_lock_wait("following a schema change before publishing on")
                return []
            try:
                reinstalled = ensure_schema(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if reinstalled:
                self.progress(f"schema change followed: re-installed {', '.join(reinstalled)}")

    def _read_chunk(self, rows: list[ChangeRow]) -> Chunk | None:
        """Inside the batch's read transaction: the next chunk of an initial snapshot under
        way, if the batch reaches the end of the log (``initial_snapshot.py``)."""
        if not self._snapshots.active():
            return None
        last = rows[-1].seq if rows else self._seq
        if len(rows) >= self.config.batch_size or changes_after(
            self._conn, last, self.config.source
        ):
            return None  # catch up first: the chunk must follow every change before it
        reinstalled = {r.table or "" for r in rows if r.kind == KIND_SCHEMA}
        definitions = {t: layout.definition for t, layout in self._layouts.items()}
        return self._snapshots.read_chunk(self._conn, definitions, last, reinstalled)

    def _produce_chunk(self, chunk: Chunk) -> int:
        """A chunk's rows as INSERTs (in the open transaction); then its table's F moves."""
        if chunk.raw_text:
            log.warning(
                "a chunk of table %r holds TEXT that is not valid UTF-8: captured byte for "
                "byte as BLOBs (Avro and DuckDB strings must be UTF-8)",
                chunk.table,
            )
        produce, topic, counts = self._producer.produce, self.topics.ops, self._counts
        keys, values = chunk_records(chunk, self.config.source, OPERATION_HEADER, now_us())
        largest = max(map(len, values), default=0) + max(map(len, keys), default=0)
        if largest > self._max_record:
            raise RecordTooLarge(
                f"a row of table {chunk.table!r} makes a record of up to {largest:,} bytes, "
                f"over the {self._max_record:,} bytes topic {topic} takes; capture stopped "
                "without skipping it. Shrink that row, or raise the topic's max.message.bytes"
            )
        for key, value, p in zip(keys, values, partitions_of(keys, self.partitions), strict=True):
            try:
                produce(topic, value, key, p)
            except BufferError:
                self._produce(topic, value, key, p)  # waits for room in the queue
            counts[p] += 1
        self._snapshots.chunk_published(chunk)
        return len(chunk.rows)

    def _layouts_at_position(self) -> dict[str, TableLayout]:
        """This source's tables' layouts as of the position: change rows after it are in
        that layout; a table added later, as of its own snapshot (``table_starts``)."""
        source = self.config.source
        at_position = layouts_at(self._conn, source, self._seq)
        out: dict[str, TableLayout] = {}
        for table in self._tables:
            start = self._table_starts.get(table, 0)
            if start > self._seq:
                definition = layouts_at(self._conn, source, start).get(table)
            else:
                definition = at_position.get(table)
            if definition is not None:  # None: let go, and its 'S' row already published
                out[table] = TableLayout.of(replace(definition, incarnation=self._incarnation))
        return out

    def _produce_schema_change(self, row: ChangeRow) -> None:
        """A re-installed table: its new definition to every partition, in commit order.

        Only for this source's tables, and not before its own snapshot of a table it added
        later (that snapshot is in the new layout already).
        """
        table = row.table or ""
        if table not in self._layouts or row.seq <= self._table_starts.get(table, 0):
            return
        definition = replace(
            reinstalled_definition(table, row.after, self.config.source),
            incarnation=self._incarnation,
        )
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

    def _produce_run(self, run: list[ChangeRow]) -> int:
        """Consecutive change rows of one table, in order (see ``producers/change_runs.py``)."""
        table = run[0].table
        layout = None if table is None else self._layouts.get(table)
        if table is None or layout is None:
            return 0  # a table another source on this database captures, not this one
        start = self._table_starts.get(table, 0)
        if run[0].seq <= start:  # before this source's own snapshot of a table added later
            run = [row for row in run if row.seq > start]
        encoder = self._encoders.get(table)
        if encoder is None or encoder.builder.layout is not layout:
            builder = RecordBuilder(layout, self.config.source, OPERATION_HEADER)
            encoder = RunEncoder(builder, self.config.source, OPERATION_HEADER)
            self._encoders[table] = encoder
        filtering = self._snapshots.under_way(table)  # keys no chunk covered: not published
        # the per-operation path, with every lookup hoisted: it runs once per captured row
        produce, topic, counts = self._producer.produce, self.topics.ops, self._counts
        partitions, limit = self.partitions, self._max_record
        produced = 0
        for row, records in zip(run, encoder.records(run), strict=True):
            if filtering:
                records = self._snapshots.keep(self._conn, row, layout, records)
            for key, value in records:
                p = partition_for(key, partitions)
                if len(value) + len(key) > limit:
                    raise self._too_large(row, layout, key, len(value) + len(key))
                try:
                    produce(topic, value, key, p)
                except BufferError:
                    self._produce(topic, value, key, p)  # waits for room in the queue
                counts[p] += 1
            produced += len(records)
        return produced

    def _too_large(
        self, row: ChangeRow, layout: TableLayout, key: bytes, size: int
    ) -> RecordTooLarge:
        operation = next(  # the operation behind this record, for the message
            op for k, op in to_operations(row, layout, self.config.source) if k == key
        )
        return RecordTooLarge(
            f"change {row.seq} ({operation.op} on table {row.table!r}, key "
            f"{_short(operation.key)}) is a {size:,}-byte record, over "
            f"the {self._max_record:,} bytes topic {self.topics.ops} takes; capture "
            "stopped without skipping it. Shrink that row (keep large payloads outside "
            "captured tables), or raise the topic's max.message.bytes if it is below "
            f"{MAX_RECORD_BYTES:,}"
        )

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
                    database_id=self._database_id,
                    incarnation=self._incarnation,
                    snapshots=self._snapshots.progress(),
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
        self._load_snapshots(self._recover_position())
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
