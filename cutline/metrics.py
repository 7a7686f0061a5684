"""What a running ``capture`` or ``replicate`` does, as Prometheus metrics.

Why a ``Metrics`` object handed to the pipeline rather than module-level metrics: each
process (and each test that runs several in one interpreter) gets its own
``CollectorRegistry``, and code that runs without ``--metrics-address`` calls the no-op
base class, so the hooks in the hot paths cost a method call and nothing else.

Every metric carries a ``source`` label. Every replication process of a source reads the
whole control topic, so each one reports every cut of the source: aggregate cut metrics
with ``max by (source)``, not ``sum``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Cuts take from milliseconds (an idle primary) to minutes (a large snapshot).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
OUTCOMES = ("published", "failed", "abandoned")


class Metrics:
    """The hooks the pipeline calls. This base class records nothing (metrics are off)."""

    def beat(self) -> None:
        """The main loop went round once (liveness)."""

    def cut_outcome(self, outcome: str) -> None:
        """A cut was resolved: ``published``, ``failed`` or ``abandoned``."""

    def cuts_in_flight(self, count: int) -> None:
        """Cuts seen on the control topic and not resolved yet."""

    def cut_alignment(self, seconds: float) -> None:
        """From the first partition reaching a marker to the last."""

    def cut_pause(self, seconds: float) -> None:
        """How long one partition was held at a marker."""

    def cut_snapshot(self, seconds: float, rows: int, size_bytes: int) -> None:
        """A backup written by this process: its duration, rows and bytes."""

    def backup_published(self, t1_us: int, t2_us: int) -> None:
        """A backup of the source is published (by any process)."""

    def applied(self, partition: int, records: int) -> None:
        """Records applied to a partition's replica shard."""

    def lag(self, partition: int, records: int) -> None:
        """Records on a partition that this process has not applied yet."""

    def forget_partitions(self) -> None:
        """The assignment changed: per-partition gauges of the old one no longer apply."""

    def dead_letter(self) -> None:
        """One record was sent to the dead-letter topic."""

    def captured(self, operations: int, markers: int, published_seq: int) -> None:
        """Capture committed a Kafka transaction holding these."""

    def capture_backlog(self, changes: int, oldest_age_s: float) -> None:
        """Changes committed on the primary and not yet published to Kafka."""


NO_METRICS = Metrics()


class PrometheusMetrics(Metrics):
    """The hooks, recorded in a registry of this process's own."""

    def __init__(self, source: str, *, clock=time.time, monotonic=time.monotonic):
        self.source = source
        self.registry = CollectorRegistry()
        self._clock = clock
        self._monotonic = monotonic
        self.last_beat = monotonic()
        self._newest_t1_us: int | None = None
        r, labels = self.registry, ["source"]
        pl = ["source", "partition"]
        self._cuts = Counter(
            "cutline_cuts", "Cuts resolved, by outcome.", [*labels, "outcome"], registry=r
        )
        for outcome in OUTCOMES:  # present at 0 from the start, so rate() and alerts work
            self._cuts.labels(source, outcome)
        self._in_flight = Gauge(
            "cutline_cuts_in_flight", "Cuts seen and not resolved yet.", labels, registry=r
        )
        self._alignment = Histogram(
            "cutline_cut_alignment_seconds",
            "From the first partition reaching a marker to the last.",
            labels,
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self._pause = Histogram(
            "cutline_cut_pause_seconds",
            "How long one partition was held at a marker.",
            labels,
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self._snapshot = Histogram(
            "cutline_cut_snapshot_seconds",
            "Writing one backup (this process's writes only).",
            labels,
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self._rows = Counter(
            "cutline_backup_rows", "Rows written into backups by this process.", labels, registry=r
        )
        self._bytes = Counter(
            "cutline_backup_bytes",
            "Bytes written into backups by this process.",
            labels,
            registry=r,
        )
        self._last_rows = Gauge(
            "cutline_last_backup_rows",
            "Rows in the newest backup this process wrote.",
            labels,
            registry=r,
        )
        self._last_bytes = Gauge(
            "cutline_last_backup_bytes",
            "Bytes of the newest backup this process wrote.",
            labels,
            registry=r,
        )
        self._t1 = Gauge(
            "cutline_last_backup_t1_seconds",
            "T1 (the primary's instant) of the newest published backup, unix seconds.",
            labels,
            registry=r,
        )
        self._t2 = Gauge(
            "cutline_last_backup_t2_seconds",
            "T2 (when it was written) of the newest published backup, unix seconds.",
            labels,
            registry=r,
        )
        self._applied = Counter(
            "cutline_records_applied", "Operations applied to the replica.", pl, registry=r
        )
        self._lag = Gauge(
            "cutline_consumer_lag",
            "Records on the partition not applied yet (>= 1 when idle: the transaction "
            "commit marker takes an offset).",
            pl,
            registry=r,
        )
        self._dead = Counter(
            "cutline_dead_letters", "Records sent to the dead-letter topic.", labels, registry=r
        )
        self._ops = Counter(
            "cutline_captured_operations", "Operations published by capture.", labels, registry=r
        )
        self._markers = Counter(
            "cutline_captured_markers", "Markers published by capture.", labels, registry=r
        )
        self._published_seq = Gauge(
            "cutline_capture_published_seq",
            "The primary's change sequence number published so far.",
            labels,
            registry=r,
        )
        self._backlog = Gauge(
            "cutline_capture_backlog_changes",
            "Changes committed on the primary and not yet published to Kafka.",
            labels,
            registry=r,
        )
        self._backlog_age = Gauge(
            "cutline_capture_backlog_age_seconds",
            "Age of the oldest change not yet published (0 when there is none).",
            labels,
            registry=r,
        )
        for counter in (self._rows, self._bytes, self._dead, self._ops, self._markers):
            counter.labels(source)

    # -- the hooks ------------------------------------------------------------------------

    def beat(self) -> None:
        self.last_beat = self._monotonic()

    def cut_outcome(self, outcome: str) -> None:
        self._cuts.labels(self.source, outcome).inc()

    def cuts_in_flight(self, count: int) -> None:
        self._in_flight.labels(self.source).set(count)

    def cut_alignment(self, seconds: float) -> None:
        self._alignment.labels(self.source).observe(seconds)

    def cut_pause(self, seconds: float) -> None:
        self._pause.labels(self.source).observe(seconds)

    def cut_snapshot(self, seconds: float, rows: int, size_bytes: int) -> None:
        self._snapshot.labels(self.source).observe(seconds)
        self._rows.labels(self.source).inc(rows)
        self._bytes.labels(self.source).inc(size_bytes)
        self._last_rows.labels(self.source).set(rows)
        self._last_bytes.labels(self.source).set(size_bytes)

    def backup_published(self, t1_us: int, t2_us: int) -> None:
        # the newest by T1 (cuts of the past are published in order, but a restarted
        # process replays them); absent until a backup is known, so a fresh process does
        # not look like one whose last backup is from 1970
        if self._newest_t1_us is None or t1_us >= self._newest_t1_us:
            self._newest_t1_us = t1_us
            self._t1.labels(self.source).set(t1_us / 1e6)
            self._t2.labels(self.source).set(t2_us / 1e6)

    def applied(self, partition: int, records: int) -> None:
        if records:
            self._applied.labels(self.source, str(partition)).inc(records)

    def lag(self, partition: int, records: int) -> None:
        self._lag.labels(self.source, str(partition)).set(records)

    def forget_partitions(self) -> None:
        self._lag.clear()

    def dead_letter(self) -> None:
        self._dead.labels(self.source).inc()

    def captured(self, operations: int, markers: int, published_seq: int) -> None:
        self._ops.labels(self.source).inc(operations)
        self._markers.labels(self.source).inc(markers)
        self._published_seq.labels(self.source).set(published_seq)

    def capture_backlog(self, changes: int, oldest_age_s: float) -> None:
        self._backlog.labels(self.source).set(changes)
        self._backlog_age.labels(self.source).set(oldest_age_s)

    # -- reading --------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's value (for status lines and tests); None if absent."""
        return self.registry.get_sample_value(name, {"source": self.source, **labels})

    def seconds_since_beat(self) -> float:
        return self._monotonic() - self.last_beat
