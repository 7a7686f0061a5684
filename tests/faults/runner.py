"""One fault run: a primary, capture, several replication processes, faults, a drain, a check.

:class:`FaultRun` drives the processes of :class:`tests.integration.pipeline.Pipeline`
(reused, not copied) with what fault injection adds: per-process failpoints
(``CUTLINE_FAILPOINTS``), SIGKILL and restart, processes that join and leave, a watch on
the group's committed offsets (they may only move forward), and a drain that waits,
bounded, until every cut is resolved and every shard has passed the last marker.

A supervisor restarts (unarmed) any replication process a failpoint killed, so a run
always ends with every partition served.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
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
from tests.faults.statements import kinds_named
from tests.faults.workload import Workload
from tests.integration.pipeline import CUTLINE, TABLES, Pipeline, Process, primary_columns

KILLED = -signal.SIGKILL

STATEMENTS_ENV = "FAULTS_STATEMENTS"  # comma-separated extra statement kinds for every run


class FaultPipeline(Pipeline):
    """The integration pipeline, with per-process environments and expected deaths."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.killed: set[int] = set()  # pids that died on purpose

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        log = self.root / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if env is None or FAILPOINTS_ENV not in env:
            full_env.pop(FAILPOINTS_ENV, None)
        handle = open(log, "ab")  # noqa: SIM115 - the child owns it; restarts append
        popen = subprocess.Popen(
            [*CUTLINE, *args], stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=self.root
        )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def check_alive(self) -> None:
        for process in self.processes:
            code = process.popen.poll()
            if code is not None and code != 0 and process.popen.pid not in self.killed:
                if code == KILLED:  # a failpoint kill: expected, the supervisor restarts it
                    continue
                raise AssertionError(f"{process.name} exited with {code}:\n{process.tail()}")


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

    def line(self) -> str:
        v = self.verdict
        return (
            f"{self.name} seed={self.seed}: {self.transactions} transactions, {self.cuts} cuts, "
            f"{self.kills} kills, {v.backups_verified} backups verified, {v.mismatches} "
            f"mismatches, {v.lost} lost, {v.duplicated} duplicated"
        )


class FaultRun:
    """One seeded run. Use as a context manager: every process is killed on exit."""

    def __init__(self, bootstrap: str, root: Path, name: str, config: RunConfig):
        self.name = name
        self.config = config
        self.rng = random.Random(config.seed)
        source = f"faults-{name}-{config.seed}-{time.monotonic_ns() % 10**8}"[:90]
        self.pipeline = FaultPipeline(bootstrap, source, root)
        self.replicators: dict[str, Process] = {}
        self.kills = 0
        self.workload: Workload | None = None
        self.watch: OffsetWatch | None = None

    def __enter__(self) -> FaultRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.workload is not None:
            self.workload.close()
        self.pipeline.__exit__(*exc)

    # -- processes ------------------------------------------------------------------------

    def start(self, *, accounts: int = 40) -> None:
        """Primary, capture and the replication processes; wait until all partitions are served."""
        self.pipeline.create_primary(accounts)
        self.pipeline.start_capture(self.config.partitions)
        for i in range(self.config.processes):
            name = f"replicate-{i}"
            self.start_replicator(name, self.config.arms.get(name))
        self.workload = Workload(
            self.pipeline, self.config.seed, kinds_named(self.config.statements)
        )
        self.watch = OffsetWatch(
            self.pipeline.bootstrap, self.pipeline.source, self.config.partitions
        )
        self.watch.start()

    def start_replicator(self, name: str, arms: str | None = None) -> Process:
        cfg = self.config
        process = self.pipeline.start(
            name,
            "replicate",
            "--replica",
            str(self.pipeline.replica),
            "--backups",
            str(self.pipeline.backups),
            "--source",
            self.pipeline.source,
            "--bootstrap-servers",
            self.pipeline.bootstrap,
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
            self.pipeline.killed.add(process.popen.pid)
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
            if process.popen.pid not in self.pipeline.killed:
                if code != KILLED:
                    raise AssertionError(f"{name} exited with {code}:\n{process.tail()}")
                self.pipeline.killed.add(process.popen.pid)
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
            self.pipeline.check_alive()
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
                self.pipeline.check_alive()
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
        """Cut a final marker with no writes after it and wait until it is behind everyone."""
        assert self.workload is not None
        final = self.workload.cut()
        end = time.monotonic() + deadline_s
        while True:
            self.supervise()
            self.pipeline.check_alive()
            statuses = final_statuses(control_events(self.pipeline.bootstrap, self.pipeline.source))
            resolved = all(
                statuses.get(m) is not None and statuses[m].resolved for m in self.pipeline.oracle
            )
            if resolved and shards_settled(
                self.pipeline.replica, self.pipeline.source, self.config.partitions, final
            ):
                return final
            if time.monotonic() > end:
                raise AssertionError(
                    f"run {self.name} did not drain within {deadline_s:.0f} s (statuses "
                    f"{ {m: s.value for m, s in sorted(statuses.items())} })\n"
                    f"{self.pipeline.logs()}"
                )
            time.sleep(0.5)

    # -- the verdict ----------------------------------------------------------------------

    def verify(self) -> RunReport:
        p = self.pipeline
        conn = p.connect()
        try:
            now = p.state(conn)
            columns = {t: primary_columns(conn, t) for t in TABLES}
        finally:
            conn.close()
        verdict = verify_run(
            bootstrap=p.bootstrap,
            source=p.source,
            partitions=self.config.partitions,
            backups=p.backups,
            replica=p.replica,
            oracle=p.oracle,
            primary_now=now,
            primary_columns=columns,
        )
        if self.watch is not None:
            for text in self.watch.backwards:
                verdict.problem(text)
        stats = self.workload.stats if self.workload else None
        return RunReport(
            self.name,
            self.config.seed,
            self.kills,
            verdict,
            transactions=stats.transactions if stats else 0,
            cuts=stats.cuts if stats else 0,
        )

    def shutdown(self) -> None:
        """Stop every process cleanly (SIGTERM); a clean exit is part of the contract."""
        for name in list(self.replicators):
            self.stop(name)
        for process in self.pipeline.processes:
            if process.popen.poll() is None:
                process.stop()
