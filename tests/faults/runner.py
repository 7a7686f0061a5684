"""One fault run: a primary, capture, several replication processes, faults, a drain, a check.

:class:`FaultRun` drives the processes of :class:`tests.integration.pipeline.Pipeline`
(reused, not copied) with what fault injection adds: per-process failpoints
(``CUTLINE_FAILPOINTS``), SIGKILL and restart, processes that join and leave, a watch on
the group's committed offsets (they may only move forward), and a drain that waits,
bounded, until every cut is resolved and every shard has passed the last marker.

A supervisor restarts (unarmed) any replication process a failpoint killed, so a run
always ends with every partition served.

A run may have a second source capturing the same database (``RunConfig.second_source``;
:data:`SECOND_TABLES`, its own topics, replica, backups and replication process
``second-0``, which chaos may kill too); the drain waits for both, and every published
backup of both is checked against the primary recorded at its cut.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException

from cutline.failpoints import ENV as FAILPOINTS_ENV
from cutline.kafka_clients import make_admin, make_consumer
from cutline.settings import Topics
from tests.faults.checker import (
    Verdict,
    control_events,
    final_statuses,
    shards_settled,
    verify_run,
)
from tests.faults.primary import (
    ALL_TABLES,
    KILLED,
    MARK_WAITING,
    FaultPipeline,
    wait_installed,
)
from tests.faults.statements import kinds_named
from tests.faults.workload import Workload
from tests.integration.pipeline import Process

# the second source on the same primary: a subset of the tables, so it sees schema changes
# (events), a REPLACE through UNIQUE (handles) and cascades (accounts -> cards) of its own
SECOND_TABLES = ["accounts", "events", "handles", "cards"]
SECOND_PARTITIONS = 3
SECOND_PREFIX = "second-"  # its replication processes' names

STATEMENTS_ENV = "FAULTS_STATEMENTS"  # comma-separated extra statement kinds for every run
SECOND_SOURCE_ENV = "FAULTS_SECOND_SOURCE"  # 1: every run has the second source


class OffsetWatch(threading.Thread):
    """Polls the replication group's committed offsets; records any that moved backwards."""

    def __init__(self, bootstrap: str, source: str, partitions: int, every_s: float = 0.5):
        super().__init__(name="offset-watch", daemon=True)
        self.topics = Topics(source)
        self.consumer = make_consumer(bootstrap, self.topics.replication_group)
        self.partitions = partitions
        self.every_s = every_s
        self.stop_event = threading.Event()
        self.seen: dict[int, int] = {}
        self.backwards: list[str] = []

    def run(self) -> None:
        from confluent_kafka import TopicPartition

        tps = [TopicPartition(self.topics.ops, p) for p in range(self.partitions)]
        try:
            while not self.stop_event.wait(self.every_s):
                try:
                    committed = self.consumer.committed(tps, timeout=5)
                except KafkaException:
                    continue
                for tp in committed:
                    if tp.offset < 0:
                        continue
                    before = self.seen.get(tp.partition, -1)
                    if tp.offset < before:
                        self.backwards.append(
                            f"partition {tp.partition}: committed offset went {before} -> "
                            f"{tp.offset}"
                        )
                    self.seen[tp.partition] = max(before, tp.offset)
        finally:
            self.consumer.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(15)


@dataclass
class RunConfig:
    seed: int
    partitions: int = 8
    processes: int = 3
    alignment_timeout_s: float = 6.0
    session_timeout_s: float = 6.0
    arms: dict[str, str] = field(default_factory=dict)  # process name -> failpoint spec
    # a second source on the same database, checked too. It about doubles a run's work, so
    # `make test` has it where it matters (its process is never armed: where chaos may kill
    # it, and as a baseline); FAULTS_SECOND_SOURCE=1 (set by the soak) puts it everywhere.
    second_source: bool = field(
        default_factory=lambda: os.environ.get(SECOND_SOURCE_ENV, "") not in ("", "0")
    )
    restores: int = 1  # per source, backups also restored (the newest of each layout)
    # extra statement kinds (tests/faults/statements.py EXTRA_KINDS) beside the default mix
    statements: tuple[str, ...] = field(
        default_factory=lambda: tuple(n for n in os.environ.get(STATEMENTS_ENV, "").split(",") if n)
    )


@dataclass
class RunReport:
    name: str
    seed: int
    kills: int
    verdict: Verdict
    transactions: int = 0
    cuts: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # statement kind -> times run
    events: Counter[str] = field(default_factory=Counter)  # mid-run event -> times run
    second_source_backups: int = 0  # of backups_verified, the second source's

    def line(self) -> str:
        v = self.verdict
        return (
            f"{self.name} seed={self.seed}: {self.transactions} transactions, {self.cuts} cuts, "
            f"{self.kills} kills, {v.backups_verified} backups verified "
            f"({self.second_source_backups} of the second source, {v.restores_verified} "
            f"also restored), {v.mismatches} "
            f"mismatches, {v.lost} lost, {v.duplicated} duplicated"
        )


class FaultRun:
    """One seeded run. Use as a context manager: every process is killed on exit."""

    def __init__(self, bootstrap: str, root: Path, name: str, config: RunConfig):
        self.name = name
        self.config = config
        self.rng = random.Random(config.seed)
        source = f"faults-{name}-{config.seed}-{time.monotonic_ns() % 10**8}"[:90]
        self.pipeline = FaultPipeline(bootstrap, source, root, tables=ALL_TABLES)
        self.second: FaultPipeline | None = None
        if config.second_source:
            (root / "second").mkdir(exist_ok=True)
            self.second = FaultPipeline(
                bootstrap, f"{source[:80]}-second", root / "second", tables=SECOND_TABLES
            )
            self.second.db = self.pipeline.db
        self.replicators: dict[str, Process] = {}
        self.kills = 0
        self.workload: Workload | None = None
        self.watches: list[OffsetWatch] = []

    def __enter__(self) -> FaultRun:
        return self

    def __exit__(self, *exc: object) -> None:
        for watch in self.watches:
            watch.stop()
        if self.workload is not None:
            self.workload.close()
        if self.second is not None:
            self.second.__exit__(*exc)
        self.pipeline.__exit__(*exc)

    # -- processes ------------------------------------------------------------------------

    def start(self, *, accounts: int = 40) -> None:
        """Primary, capture and the replication processes; wait until all partitions are served."""
        self.pipeline.create_primary(accounts)
        self.pipeline.start_capture(self.config.partitions)
        for i in range(self.config.processes):
            name = f"replicate-{i}"
            self.start_replicator(name, self.config.arms.get(name))
        if self.second is not None:  # installs on the database the first source captures
            self.second._start_capture(SECOND_PARTITIONS)
            wait_installed(self.second)
            self.start_replicator(f"{SECOND_PREFIX}0")
        self.workload = Workload(
            self.pipeline, self.config.seed, kinds_named(self.config.statements)
        )
        for pipeline, partitions in self.sources():
            watch = OffsetWatch(pipeline.bootstrap, pipeline.source, partitions)
            watch.start()
            self.watches.append(watch)

    def sources(self) -> list[tuple[FaultPipeline, int]]:
        """Each source of the run with its partition count, the first source first."""
        out = [(self.pipeline, self.config.partitions)]
        if self.second is not None:
            out.append((self.second, SECOND_PARTITIONS))
        return out

    def _pipeline_of(self, name: str) -> FaultPipeline:
        if name.startswith(SECOND_PREFIX) and self.second is not None:
            return self.second
        return self.pipeline

    def check_alive(self) -> None:
        for pipeline, _ in self.sources():
            pipeline.check_alive()

    def start_replicator(self, name: str, arms: str | None = None) -> Process:
        cfg = self.config
        pipeline = self._pipeline_of(name)
        process = pipeline.start(
            name,
            "replicate",
            "--replica",
            str(pipeline.replica),
            "--backups",
            str(pipeline.backups),
            "--source",
            pipeline.source,
            "--bootstrap-servers",
            pipeline.bootstrap,
            "--alignment-timeout",
            str(cfg.alignment_timeout_s),
            "--session-timeout",
            str(cfg.session_timeout_s),
            env={FAILPOINTS_ENV: arms} if arms else None,
        )
        self.replicators[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL a replication process (it is restarted by :meth:`supervise`)."""
        process = self.replicators[name]
        if process.popen.poll() is None:
            self._pipeline_of(name).killed.add(process.popen.pid)
            process.popen.send_signal(signal.SIGKILL)
            process.popen.wait(10)
            self.kills += 1

    def freeze(self, name: str) -> None:
        """SIGSTOP a replication process: it becomes a zombie once its session expires."""
        self.replicators[name].popen.send_signal(signal.SIGSTOP)

    def wait_left_group(self, name: str, deadline_s: float = 90.0) -> None:
        """Wait until the group has dropped ``name`` (frozen) and settled without it.

        Its member id (``client.id``) holds its pid. Waiting for this, not for a fixed
        time, makes the zombie real on a slow machine too: its partitions have moved.
        """
        from confluent_kafka import ConsumerGroupState

        pid = self.replicators[name].popen.pid
        group = Topics(self.pipeline.source).replication_group
        admin = make_admin(self.pipeline.bootstrap)
        end = time.monotonic() + deadline_s
        seen = None
        while time.monotonic() < end:
            try:
                seen = admin.describe_consumer_groups([group])[group].result(timeout=10)
            except KafkaException:
                seen = None
            if (
                seen is not None
                and seen.state == ConsumerGroupState.STABLE
                and seen.members
                and not any(f"-{pid}-" in m.client_id for m in seen.members)
            ):
                return
            time.sleep(0.5)
        members = [m.client_id for m in seen.members] if seen is not None else None
        raise AssertionError(
            f"{name} (pid {pid}) still in group {group} after {deadline_s:.0f} s: {members}"
        )

    def thaw(self, name: str) -> None:
        """SIGCONT: the zombie wakes with stale partitions, queues and a stale generation."""
        self.replicators[name].popen.send_signal(signal.SIGCONT)

    def stop(self, name: str) -> None:
        """A clean leave (SIGTERM): the process must exit 0 within its deadline."""
        process = self.replicators.pop(name)
        code = process.stop()
        if code != 0:
            raise AssertionError(f"{name} exited with {code} on SIGTERM:\n{process.tail()}")

    def supervise(self) -> list[str]:
        """Restart, unarmed, every replication process that died; return their names."""
        restarted = []
        for name, process in list(self.replicators.items()):
            code = process.popen.poll()
            if code is None:
                continue
            killed = self._pipeline_of(name).killed
            if process.popen.pid not in killed:
                if code != KILLED:
                    raise AssertionError(f"{name} exited with {code}:\n{process.tail()}")
                killed.add(process.popen.pid)
                self.kills += 1  # a failpoint killed it
            self.start_replicator(name)
            restarted.append(name)
        return restarted

    def wait_killed(self, name: str, deadline_s: float) -> bool:
        """True once a failpoint has killed ``name`` (without restarting it)."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.replicators[name].popen.poll() is not None:
                return True
            self.check_alive()
            time.sleep(0.1)
        return False

    # -- workload -------------------------------------------------------------------------

    def write_for(
        self,
        seconds: float,
        *,
        cut_every_s: tuple[float, float] = (0.4, 1.2),
        chaos: float = 0.0,
        supervise: bool = True,
    ) -> None:
        """Run the workload for ``seconds``; ``chaos`` is SIGKILLs per second (random victim).

        The kills are scheduled in time (seeded), not drawn per loop turn, so a slow
        machine, whose loop turns fewer times, kills as often as a fast one.
        """
        assert self.workload is not None
        kills_at = self._chaos_schedule(seconds, chaos)
        stop = threading.Event()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self.workload.run(stop, cut_every_s=cut_every_s)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        writer = threading.Thread(target=work, name="workload")
        writer.start()
        started = time.monotonic()
        end = started + seconds
        try:
            while time.monotonic() < end and writer.is_alive():
                time.sleep(0.2)
                while kills_at and time.monotonic() - started >= kills_at[0]:
                    kills_at.pop(0)
                    self.kill(self.rng.choice(sorted(self.replicators)))
                if supervise:
                    self.supervise()
                self.check_alive()
        finally:
            stop.set()
            writer.join(30)
        if errors:
            raise errors[0]

    def _chaos_schedule(self, seconds: float, chaos: float) -> list[float]:
        """Seeded kill times within ``seconds``: ``chaos`` per second, at least one if any."""
        if not chaos:
            return []
        count = max(1, round(chaos * seconds))
        return sorted(self.rng.uniform(0.1 * seconds, 0.9 * seconds) for _ in range(count))

    def wait_statuses(self, marker_ids: list[int], deadline_s: float) -> dict:
        """Wait until the control topic resolves every cut in ``marker_ids``."""
        end = time.monotonic() + deadline_s
        while True:
            statuses = final_statuses(control_events(self.pipeline.bootstrap, self.pipeline.source))
            if all(statuses.get(m) is not None and statuses[m].resolved for m in marker_ids):
                return statuses
            if time.monotonic() > end:
                raise AssertionError(
                    f"cuts {marker_ids} not resolved within {deadline_s:.0f} s: "
                    f"{ {m: statuses.get(m) for m in marker_ids} }\n{self.pipeline.logs()}"
                )
            self.supervise()
            time.sleep(0.5)

    def drain(self, deadline_s: float = 120.0) -> int:
        """Cut a final marker with no writes after it and wait until it is behind everyone,
        in every source."""
        assert self.workload is not None
        final = self.workload.cut()
        end = time.monotonic() + deadline_s
        while True:
            self.supervise()
            self.check_alive()
            waiting = []
            for pipeline, partitions in self.sources():
                statuses = self._statuses(pipeline)
                if not self._drained(pipeline, partitions, final, statuses):
                    waiting.append((pipeline, statuses))
            if not waiting:
                return final
            if time.monotonic() > end:
                pipeline, statuses = waiting[0]
                raise AssertionError(
                    f"run {self.name} did not drain within {deadline_s:.0f} s (source "
                    f"{pipeline.source} statuses "
                    f"{ {m: s.value for m, s in sorted(statuses.items())} })\n"
                    f"{pipeline.logs()}"
                )
            time.sleep(0.5)

    @staticmethod
    def _statuses(pipeline: FaultPipeline) -> dict:
        return final_statuses(control_events(pipeline.bootstrap, pipeline.source))

    def _drained(self, pipeline: FaultPipeline, partitions: int, final: int, statuses) -> bool:
        resolved = all(
            statuses.get(m) is not None and statuses[m].resolved for m in self.pipeline.oracle
        )
        return resolved and shards_settled(pipeline.replica, pipeline.source, partitions, final)

    # -- the verdict ----------------------------------------------------------------------

    def verify(self) -> RunReport:
        """Every source's backups and drained replica against the primary (see checker)."""
        first = self.pipeline
        conn = first.connect()
        try:
            now = first.state(conn)
            columns = first.layout(conn)
        finally:
            conn.close()
        verdict, second_backups = Verdict(), 0
        for pipeline, partitions in self.sources():
            tables = pipeline.tables
            one = verify_run(
                bootstrap=pipeline.bootstrap,
                source=pipeline.source,
                partitions=partitions,
                backups=pipeline.backups,
                replica=pipeline.replica,
                oracle={m: {t: rows[t] for t in tables} for m, rows in first.oracle.items()},
                layouts={m: {t: lay[t] for t in tables} for m, lay in first.layouts.items()},
                primary_now={t: now[t] for t in tables},
                primary_columns={t: columns[t] for t in tables},
                restore_into=pipeline.root,
                restores=self.config.restores,
            )
            if pipeline is not first:
                one.problems = [f"[second source] {text}" for text in one.problems]
                second_backups = one.backups_verified
            verdict.merge(one)
            verdict.statuses = verdict.statuses or one.statuses  # the first source's fates
        for watch in self.watches:
            for text in watch.backwards:
                verdict.problem(text)
        stats = self.workload.stats if self.workload else None
        events = Counter(stats.events) if stats else Counter()
        events["capture-waited"] = self._capture_waits()
        return RunReport(
            self.name,
            self.config.seed,
            self.kills,
            verdict,
            transactions=stats.transactions if stats else 0,
            cuts=stats.cuts if stats else 0,
            kinds=Counter(stats.kinds) if stats else Counter(),
            events=events,
            second_source_backups=second_backups,
        )

    def _capture_waits(self) -> int:
        """How often the captures logged waiting for the primary's write lock (a long
        transaction held it when they had to write)."""
        return sum(
            process.log.read_text(errors="replace").count(MARK_WAITING)
            for pipeline, _ in self.sources()
            for process in pipeline.processes
            if process.name == "capture"
        )

    def shutdown(self) -> None:
        """Stop every process cleanly (SIGTERM); a clean exit is part of the contract."""
        for name in list(self.replicators):
            self.stop(name)
        for pipeline, _ in self.sources():
            for process in pipeline.processes:
                if process.popen.poll() is None:
                    process.stop()
