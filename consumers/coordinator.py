"""Cut coordination for one replication process, over the control topic.

Who calls what:

* replication threads call :meth:`reached` / :meth:`failed` when a partition meets a
  marker, then poll :meth:`resolution` without blocking (a thread may serve several
  partitions, and one held partition must not stall the others);
* the coordinator's own thread reads the control topic from the beginning, feeds every
  event to the :class:`~consumers.alignment.Alignment` state machine, publishes ABANDONED
  for cuts that outlive the alignment timeout, and on READY runs the snapshot.

Exactly one process writes backup M: the writers of one source take an exclusive file
lock in the backups directory, and whoever holds it first writes; the others find M in
the catalog. The lock dies with its process, so a writer killed mid-snapshot is replaced
(its half-written temp directory is never visible and is swept up).

Start-up replays the control topic from its beginning, but only to rebuild state: no
snapshot is run and no cut is abandoned until the replay has reached the topic's end.
Then every cut still READY is written (its writer died before publishing, or nobody
was left to take it over), and cuts still aligning get the full timeout from then on.
A cut READY whose writer lock cannot be had within the snapshot deadline is reported
FAILED, so held partitions never wait forever. A backup found published without its
PUBLISHED event (the writer died in between) gets the event, from whoever finds it.

The pause is the time to pin the cut, not to copy it. The writer, under its lock, opens
a read transaction on every shard while all are held at M (``pin_cut``), says PINNED(M)
and writes the backup from those transactions while replication goes on (threads release
their partitions on PINNED, asking for marker offset + 1 to be committed); then PUBLISHED,
or FAILED with the reason. The writer's own threads release as soon as the broker has
acknowledged PINNED (it is durable: the same as reading it back); other processes release
when they read it. The pause is then: partitions meeting M, REACHED read back, READY, the
pin (a read transaction per shard: no work proportional to the replica's size) and one
acknowledged produce. Outcomes are said before the lock is let go. Crash semantics:

* the writer dies before PINNED: the shards are still held at M; whoever takes the lock
  next (another process, or this one after a restart) writes M, as before;
* the writer dies after PINNED and before publishing: its read transactions died with it
  and the shards have moved past M, so nothing can be written as M any more. Whoever
  takes the lock next finds M PINNED and not in the catalog, and says ABANDONED(M)
  ("writer died after releasing the partitions"). The next cut is written as usual (an
  incremental builds on the last *published* backup, so a missing M costs nothing);
* the writer dies after publishing and before PUBLISHED: whoever comes next finds M in
  the catalog and says PUBLISHED. Publishing is atomic, so there is never a half backup.

While M is pinned its shards cannot checkpoint their WAL past M: each WAL grows by what
replication writes during the backup, and is reused after the pin is closed (always, in a
``finally``). The write has the snapshot deadline: past it the pinned reads are
interrupted, FAILED is said, and the backup is not published.

Failpoints: ``snapshot.before_pin`` (the writer has the lock, the partitions are still
held), ``snapshot.after_pin`` (PINNED said, nothing written), ``snapshot.mid_write``
(after each table is written, in ``consumers.snapshotter``), ``snapshot.after_publish``
(the backup is visible, PUBLISHED not yet sent).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, Producer, TopicPartition

from backups.catalog import Backup, backup_dir_name, has_backup, read_backup, source_dir
from backups.storage.local.durable import remove_stale_temps
from backups.storage.local.lock import WriterLock
from consumers.alignment import Alignment, Cut, CutStatus
from consumers.digest_proof import DigestBook, DigestWaitStopped
from consumers.prepin import PrePins
from consumers.snapshotter import CutPlan, SnapshotError, pin_cut, write_backup
from cutline import failpoints
from cutline.digest_options import DEFAULT_DIGEST_TIMEOUT_S
from cutline.errors import BrokerError, CutlineError, DeadlineExceeded
from cutline.kafka_clients import make_consumer
from cutline.kafka_errors import NotAuthorized, describe, is_authorization, write_refusals
from cutline.metrics import NO_METRICS, Metrics
from cutline.settings import Topics
from schemas.codec import CodecError, decode, encode
from schemas.records import ConsistencyMarker, ControlEvent, ControlKind, MarkerDigest

if TYPE_CHECKING:
    from backups.retention import RetentionPolicy

log = logging.getLogger("cutline.coordinator")

CONTROL_FETCH_WAIT_MS = 10
SEND_DEADLINE_S = 15.0  # for the broker to acknowledge one control event
_DIED_AFTER_PIN = (
    "writer died after releasing the partitions: its pinned snapshots died with it and the "
    "shards have moved past the cut, so this cut cannot be written; the next one will be"
)


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class CutReport:
    """What happened to one cut, for status lines, benchmarks and tests."""

    marker_id: int
    status: CutStatus
    alignment_s: float | None = None
    snapshot_s: float | None = None
    written_here: bool = False
    detail: str | None = None


@dataclass
class CoordinatorStats:
    published: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    reports: dict[int, CutReport] = field(default_factory=dict)


class CutCoordinator:
    def __init__(
        self,
        *,
        bootstrap: str,
        source: str,
        member: str,
        replica_dir: Path,
        backups_dir: Path,
        producer: Producer,
        alignment_timeout_s: float = 120.0,
        snapshot_deadline_s: float = 600.0,
        full_every: int = 1,
        digest_timeout_s: float = DEFAULT_DIGEST_TIMEOUT_S,
        retention: RetentionPolicy | None = None,
        progress: Callable[[str], None] | None = None,
        metrics: Metrics = NO_METRICS,
    ):
        self.bootstrap = bootstrap
        self.source = source
        self.topics = Topics(source)
        self.member = member
        self.replica_dir = Path(replica_dir)
        self.backups_dir = Path(backups_dir)
        self.producer = producer
        self.alignment = Alignment(alignment_timeout_s)
        self.snapshot_deadline_s = snapshot_deadline_s
        self.full_every = full_every  # passed to write_backup: a full backup every N
        self.digests = DigestBook(source)  # the primary's digests, from the control topic
        self.digest_timeout_s = digest_timeout_s
        self.retention = retention  # applied after each backup this process publishes
        self.progress = progress or log.info
        self.metrics = metrics
        self._newest_published = 0  # marker id, for the last-backup gauges
        self._counted: set[int] = set()  # cuts whose outcome was counted (the first one)
        self._open: set[int] = set()  # cuts seen and not resolved: the in-flight gauge
        self.stats = CoordinatorStats()
        self._lock = threading.Lock()
        self._abandon_sent: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: CutlineError | None = None  # why the control loop ended on its own
        self._snapshots: queue.SimpleQueue[CutPlan | None] = queue.SimpleQueue()
        self._snapshotter: threading.Thread | None = None
        self._caught_up = threading.Event()
        self._replayed_ready: dict[int, CutPlan] = {}  # READY during the start-up replay
        # cuts this process pinned and whose PINNED the broker acknowledged: its own threads
        # release on that, without waiting for PINNED to come back from the control topic
        self._pinned_here: set[int] = set()
        # read transactions begun on this process's shards as each is held: the pin at
        # READY only checks them (consumers.prepin)
        self.prepins = PrePins(self.replica_dir, source)
        # set by the replicator: wakes its threads when a cut releases held partitions
        self.on_release: Callable[[], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="coordinator", daemon=True)
        self._thread.start()

    def is_dead(self) -> bool:
        """True if the control loop ended without being stopped: cuts no longer resolve."""
        return self._thread is not None and not self._thread.is_alive() and not self._stop.is_set()

    def wait_caught_up(self, deadline_s: float = 30.0) -> bool:
        """True once the control topic has been read up to its end at start-up."""
        return self._caught_up.wait(deadline_s)

    def stop(self, deadline_s: float = 60.0) -> None:
        """Stop reading and let a running snapshot finish, both within ``deadline_s``.

        Queued snapshots are dropped (their cuts stay READY on the control topic, and the
        next start takes them over). A snapshot still running at the deadline is left to
        its daemon thread: if the process exits first, its temp directory is never
        visible and the next writer sweeps it.
        """
        end = time.monotonic() + deadline_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(deadline_s)
        self._snapshots.put(None)
        if self._snapshotter is not None:
            self._snapshotter.join(max(0.0, end - time.monotonic()))
            if self._snapshotter.is_alive():
                log.warning(
                    "a snapshot was still being written %.0f s after stop; leaving it",
                    deadline_s,
                )
        self.prepins.close()

    # -- called by replication threads ----------------------------------------------------

    def reached(self, marker: ConsistencyMarker, partition: int, offset: int) -> None:
        self._send(
            self._event(
                ControlKind.REACHED,
                marker.marker_id,
                marker.partitions,
                partition=partition,
                offset=offset,
                t1_us=marker.t1_us,
                tables=tuple(marker.tables),
            )
        )
        self.prepins.open(marker.marker_id, partition)

    def failed(self, marker: ConsistencyMarker, partition: int, offset: int, detail: str) -> None:
        self.progress(f"cut {marker.marker_id} failed: {detail}")
        self._send(
            self._event(
                ControlKind.FAILED,
                marker.marker_id,
                marker.partitions,
                partition=partition,
                offset=offset,
                detail=detail,
            )
        )

    def resolution(self, marker_id: int) -> CutStatus | None:
        """The status that releases partitions held at the cut (PINNED or final), or None
        while they must stay held. Never blocks."""
        with self._lock:
            status = self.alignment.status(marker_id)
            pinned_here = marker_id in self._pinned_here
        if status is not None and status.releases:
            return status
        if pinned_here:  # PINNED is durable on the control topic: the same as reading it back
            return CutStatus.PINNED
        if has_backup(self.backups_dir, self.source, marker_id):
            return CutStatus.PUBLISHED
        return None

    # -- the control loop -----------------------------------------------------------------

    def _send(self, event: ControlEvent) -> None:
        refused: list = []
        done = threading.Event()

        def delivered(err, _msg) -> None:
            if err is not None:
                refused.append(err)
            done.set()

        with write_refusals(self.topics.control, f"writing to {self.topics.control}"):
            self.producer.produce(
                self.topics.control,
                encode(event),
                str(event.marker_id).encode(),
                on_delivery=delivered,
            )
        # wait for this event's acknowledgement only, not a flush of everything queued: the
        # replication threads and the writer send at once, and each is on the pause's path.
        # Whichever thread polls serves the callback, so the short poll is checked in a loop
        end = time.monotonic() + SEND_DEADLINE_S
        while not done.is_set():
            if time.monotonic() > end:
                raise DeadlineExceeded(
                    f"control event for marker {event.marker_id} not acknowledged within "
                    f"{SEND_DEADLINE_S:.0f} s"
                )
            self.producer.poll(0.001)
        if refused and is_authorization(refused[0]):  # no Write ACL: cuts could never resolve
            reason = describe(refused[0], resource=self.topics.control, operation="Write")
            raise NotAuthorized(f"writing to {self.topics.control}: {reason}")
        if refused:  # not acknowledged (e.g. message.timeout.ms ran out): the caller retries
            raise DeadlineExceeded(
                f"control event for marker {event.marker_id} not acknowledged: {refused[0].str()}"
            )

    def _run(self) -> None:
        consumer = make_consumer(
            self.bootstrap,
            f"{self.topics.control}.{self.member}",
            **{
                "enable.partition.eof": True,
                # REACHED/PINNED are on the pause's path: a fetch held at the broker answers
                # within 10 ms, not 500 (one small partition: the extra fetches cost nothing).
                # Only this consumer: the ops consumers keep their defaults
                "fetch.wait.max.ms": CONTROL_FETCH_WAIT_MS,
            },
        )
        consumer.assign([TopicPartition(self.topics.control, 0, OFFSET_BEGINNING)])
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.2)
                now = time.monotonic()
                if message is not None:
                    if message.error():
                        if message.error().code() == message.error()._PARTITION_EOF:
                            if not self._caught_up.is_set():
                                self._finish_replay()
                        elif is_authorization(message.error()):
                            raise BrokerError(
                                f"reading {self.topics.control}: "
                                + describe(
                                    message.error(), resource=self.topics.control, operation="Read"
                                )
                            )
                        else:
                            log.warning("control topic: %s", message.error().str())
                    else:
                        self._on_event(message.value(), now)
                if self._caught_up.is_set():
                    self._expire(now)
        except CutlineError as exc:  # e.g. a missing ACL: the replicator reports it, one line
            self.error = exc
        except Exception:  # the coordinator must say why it stopped, not die silently
            log.exception("coordinator stopped")
            raise
        finally:
            consumer.close()

    def _finish_replay(self) -> None:
        """The start-up replay reached the end: write every cut that is still READY."""
        now = time.monotonic()
        with self._lock:
            for cut in self.alignment.cuts.values():
                if cut.status is CutStatus.ALIGNING:
                    cut.first_seen = now  # the timeout counts from when we can act on it
            pending = [
                plan
                for plan in self._replayed_ready.values()
                if self.alignment.status(plan.marker_id) in (CutStatus.READY, CutStatus.PINNED)
            ]
        self._replayed_ready.clear()
        self._caught_up.set()
        self._note_published(self._newest_published)
        self.metrics.cuts_in_flight(len(self._open))
        for plan in pending:
            self.progress(
                f"cut {plan.marker_id} is {self._status(plan.marker_id)} but "
                "unpublished: taking it over"
            )
            self._submit(plan)

    def _on_event(self, value: bytes, now: float) -> None:
        try:
            event = decode(value)
        except CodecError as exc:
            log.warning("ignoring a control record that is not a cutline event: %s", exc)
            return
        if isinstance(event, MarkerDigest):
            self.digests.add(event)
            return
        if not isinstance(event, ControlEvent) or event.source != self.source:
            return
        with self._lock:
            transition = self.alignment.apply(event, now)
            resolved = transition is not None and transition.status.resolved
            if resolved:
                self._open.discard(event.marker_id)
                self._pinned_here.discard(event.marker_id)
            elif not self.alignment.cuts[event.marker_id].status.resolved:
                self._open.add(event.marker_id)
        if transition is not None and transition.status.releases:
            self.prepins.discard(event.marker_id)  # pinned (by the writer, wherever) or over
        if self._caught_up.is_set():
            self.metrics.cuts_in_flight(len(self._open))
        if transition is None:
            return
        if transition.status.releases and self.on_release is not None:
            self.on_release()
        cut = transition.cut
        if transition.status is CutStatus.READY:
            plan = CutPlan(
                source=self.source,
                marker_id=cut.marker_id,
                t1_us=event.t1_us or 0,
                partitions=cut.partitions,
                offsets=dict(cut.reached),
                tables=tuple(event.tables or ()),
                alignment_s=cut.alignment_s,
            )
            if self._caught_up.is_set():
                self.metrics.cut_alignment(cut.alignment_s or 0.0)
                self._submit(plan)
            else:
                self._replayed_ready[cut.marker_id] = plan
        elif transition.status in (CutStatus.ABANDONED, CutStatus.FAILED):
            self._report(cut, transition.status)
        elif transition.status is CutStatus.PUBLISHED:
            self._report(cut, CutStatus.PUBLISHED)

    def _report(self, cut: Cut, status: CutStatus) -> None:
        """Record a cut's fate. Other threads read ``stats``: a report appears, or takes
        its new status, only once its detail is filled in and its message was said."""
        # history replayed at start-up is not counted again; a cut counts once, by the
        # outcome it had first (a cut abandoned, then failed, is one cut)
        if self._caught_up.is_set() and cut.marker_id not in self._counted:
            self._counted.add(cut.marker_id)
            self.metrics.cut_outcome(status.value)
        if status is CutStatus.PUBLISHED:
            if cut.marker_id not in self.stats.published:
                self.stats.published.append(cut.marker_id)
            if cut.marker_id > self._newest_published:
                self._newest_published = cut.marker_id
                if self._caught_up.is_set():  # at start-up, only the newest is read
                    self._note_published(cut.marker_id)
        elif cut.marker_id not in self.stats.failed:
            self.stats.failed.append(cut.marker_id)
            if self._caught_up.is_set():  # history replayed at start-up was reported then
                self.progress(f"cut {cut.marker_id} {status.value}: {cut.detail or 'no detail'}")
        report = self.stats.reports.get(cut.marker_id) or CutReport(cut.marker_id, status)
        report.alignment_s = cut.alignment_s
        report.detail = cut.detail
        report.status = status
        self.stats.reports[cut.marker_id] = report

    def _expire(self, now: float) -> None:
        with self._lock:
            expired = [
                c for c in self.alignment.expired(now) if c.marker_id not in self._abandon_sent
            ]
        for cut in expired:
            detail = (
                f"partitions {cut.missing} did not reach marker {cut.marker_id} within "
                f"{self.alignment.timeout_s:.0f} s (alignment timeout)"
            )
            try:
                self._send(
                    self._event(ControlKind.ABANDONED, cut.marker_id, cut.partitions, detail=detail)
                )
            except (DeadlineExceeded, KafkaException, BufferError) as exc:
                # the broker is away: the control loop goes on and sends it again next time
                log.warning("cannot abandon cut %s yet: %s", cut.marker_id, exc)
                return
            self._abandon_sent.add(cut.marker_id)

    def _submit(self, plan: CutPlan) -> None:
        """Queue a snapshot for the one snapshot thread (started on first use)."""
        if self._snapshotter is None:
            self._snapshotter = threading.Thread(
                target=self._snapshot_loop, name="snapshotter", daemon=True
            )
            self._snapshotter.start()
        self._snapshots.put(plan)

    def _snapshot_loop(self) -> None:
        """Write queued snapshots in order until stopped; a failure is logged, not lost."""
        while (plan := self._snapshots.get()) is not None:
            if self._stop.is_set():
                continue  # dropped: the cut stays READY and the next start takes it over
            try:
                self._snapshot(plan)
            except Exception:
                log.exception("snapshot of marker %s stopped", plan.marker_id)

    def _snapshot(self, plan: CutPlan) -> None:
        """Runs on the snapshot thread for every READY cut; writes it unless written.

        Under the writer lock: pin the cut (:func:`pin_cut`), say PINNED (held partitions
        resume), write the backup from the pinned snapshots, publish it, say PUBLISHED or
        FAILED, and only then let the lock go, so whoever takes the lock next knows the
        outcome is on its way to the control topic, or that the writer died.
        """
        lock = WriterLock(source_dir(self.backups_dir, self.source))
        started = time.monotonic()
        try:
            lock.acquire(self.snapshot_deadline_s, self._stop)
        except DeadlineExceeded as exc:
            log.warning("%s", exc)
            if not self._stop.is_set() and self._still_open(plan.marker_id):
                # held partitions must not wait forever on a writer that is stuck
                self._send(self._plan_event(ControlKind.FAILED, plan, f"no backup: {exc}"))
            return
        try:
            if has_backup(self.backups_dir, self.source, plan.marker_id):
                if self._still_open(plan.marker_id):  # its writer died before saying so
                    self._send(self._plan_event(ControlKind.PUBLISHED, plan, "found published"))
                return
            status = self._status(plan.marker_id)
            if status is CutStatus.PINNED:  # pinned by a writer that died (it had the lock)
                self._send(self._plan_event(ControlKind.ABANDONED, plan, _DIED_AFTER_PIN))
                return
            if status is not CutStatus.READY:
                return
            backup = self._write(plan, started)
            if backup is not None and self.retention is not None:
                self._apply_retention(plan)  # still under the writer lock: chains stay whole
        finally:
            lock.release()
        if backup is None:
            return
        elapsed = time.monotonic() - started
        report = self.stats.reports.setdefault(
            plan.marker_id, CutReport(plan.marker_id, CutStatus.PUBLISHED)
        )
        report.written_here, report.snapshot_s, report.alignment_s = True, elapsed, plan.alignment_s
        rows = sum(t["rows"] for t in backup.tables.values())
        size = sum(int(f.get("bytes", 0)) for f in backup.manifest.get("files", []))
        self.metrics.cut_snapshot(elapsed, rows, size)
        self.progress(
            f"backup {plan.marker_id} published: primary as of T1 {backup.t1}, {rows} rows in "
            f"{len(backup.tables)} tables, alignment "
            f"{(plan.alignment_s or 0) * 1000:.0f} ms, snapshot {elapsed * 1000:.0f} ms"
        )

    def _apply_retention(self, plan: CutPlan) -> None:
        """Prune after publishing backup M; M is published whatever happens here."""
        from backups.retention import apply_retention  # retention imports WriterLock

        assert self.retention is not None
        try:
            apply_retention(self.backups_dir, self.source, self.retention, self.progress)
        except Exception as exc:  # M stands; retention runs again after the next backup
            log.exception("retention after backup %s failed", plan.marker_id)
            self.progress(f"retention after backup {plan.marker_id} failed: {exc}")

    def _write(self, plan: CutPlan, started: float) -> Backup | None:
        """Pin, release, write, publish; return the backup, or None once FAILED was sent.

        Called under the writer lock. The write has the snapshot deadline: past it the
        pinned reads are interrupted, FAILED is sent, and nothing is published after it.
        """
        failpoints.hit("snapshot.before_pin")  # the lock is held, the partitions too
        try:
            pinned = pin_cut(self.replica_dir, plan, self.prepins.take(plan.marker_id))
        except SnapshotError as exc:
            self._send(self._plan_event(ControlKind.FAILED, plan, str(exc)))
            return None
        deadline = started + self.snapshot_deadline_s
        late = threading.Event()

        def too_late() -> None:
            late.set()
            pinned.interrupt()
            detail = (
                f"backup {plan.marker_id} was not written within the snapshot deadline of "
                f"{self.snapshot_deadline_s:.0f} s"
            )
            try:
                self._send(self._plan_event(ControlKind.FAILED, plan, detail))
            except (CutlineError, KafkaException, BufferError) as exc:
                log.warning("cannot report cut %s failed: %s", plan.marker_id, exc)

        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), too_late)
        watchdog.daemon = True
        watchdog.start()
        try:
            self._announce_pinned(plan)
            failpoints.hit("snapshot.after_pin")  # partitions released, nothing written
            # half-written backups of dead writers; only under the lock, never a live one's.
            # After PINNED: sweeping is no part of the pause
            remove_stale_temps(source_dir(self.backups_dir, self.source))
            backup = write_backup(
                self.replica_dir,
                self.backups_dir,
                plan,
                writer=self.member,
                full_every=self.full_every,
                pinned=pinned,
                deadline=deadline,
                proof=self.digests.source_for(self.digest_timeout_s, self._stop),
            )
            failpoints.hit("snapshot.after_publish")
        except DigestWaitStopped:  # stopping: the cut is PINNED, a restart reports it abandoned
            return None
        except Exception as exc:  # any failure of the writer fails this cut loudly
            if not isinstance(exc, SnapshotError):
                log.exception("snapshot of marker %s failed", plan.marker_id)
            if not late.is_set():
                detail = str(exc) if isinstance(exc, SnapshotError) else f"snapshot failed: {exc}"
                self._send(self._plan_event(ControlKind.FAILED, plan, detail))
            return None
        finally:
            watchdog.cancel()
            pinned.close()
        self._send(self._plan_event(ControlKind.PUBLISHED, plan, str(backup.path)))
        return backup

    def _announce_pinned(self, plan: CutPlan) -> None:
        """Say PINNED(M); once the broker has acknowledged it, release this process's own
        held partitions at once.

        Acknowledged means durable on the control topic, so a crash from here on has the
        same meaning as if the threads had read PINNED back from Kafka (whoever takes the
        lock next finds M PINNED and unpublished, and abandons it). Other processes still
        release on the control topic. If PINNED cannot be said, nothing is released: the
        partitions stay held until the outcome, and the backup is written as before pinning.
        """
        try:
            self._send(self._plan_event(ControlKind.PINNED, plan, "snapshots pinned"))
        except (CutlineError, KafkaException, BufferError) as exc:
            log.warning("cannot announce cut %s pinned: %s", plan.marker_id, exc)
            return
        with self._lock:
            status = self.alignment.status(plan.marker_id)
            if status is not None and not status.resolved:
                self._pinned_here.add(plan.marker_id)
        if self.on_release is not None:
            self.on_release()

    def _note_published(self, marker_id: int) -> None:
        """Set the last-backup gauges from the manifest (on this host's backups dir)."""
        if marker_id <= 0 or self.metrics is NO_METRICS:
            return
        backup = read_backup(source_dir(self.backups_dir, self.source) / backup_dir_name(marker_id))
        if backup is not None:
            t2_us = int(backup.manifest.get("t2_us", backup.t1_us))
            self.metrics.backup_published(backup.t1_us, t2_us)

    def _status(self, marker_id: int) -> CutStatus | None:
        with self._lock:
            return self.alignment.status(marker_id)

    def _still_open(self, marker_id: int) -> bool:
        """READY or PINNED: a backup is due and no outcome was said yet."""
        return self._status(marker_id) in (CutStatus.READY, CutStatus.PINNED)

    def _event(
        self, kind: ControlKind, marker_id: int, partitions: int, **fields: Any
    ) -> ControlEvent:
        """A control event from this process, stamped now."""
        return ControlEvent(
            kind=kind,
            source=self.source,
            marker_id=marker_id,
            partitions=partitions,
            member=self.member,
            at_us=_now_us(),
            **fields,
        )

    def _plan_event(self, kind: ControlKind, plan: CutPlan, detail: str) -> ControlEvent:
        return self._event(kind, plan.marker_id, plan.partitions, detail=detail)
