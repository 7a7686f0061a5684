"""The fault scenarios. Each is a function of (bootstrap, root, seed) that runs and checks.

Every scenario ends the same way: the workload stops, a final marker is cut, the run
drains (every cut resolved, every shard past the final marker) and the checker compares
every backup with the oracle and the replica with the primary. Scenarios that expect a
specific outcome (a cut abandoned, every idle cut published) record it in
``RunReport.verdict.problems`` when it does not happen, so the soak counts it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from backups.catalog import has_backup
from consumers.alignment import CutStatus
from tests.faults.checker import shard_state
from tests.faults.runner import FaultRun, RunConfig, RunReport
from tests.faults.statements import EXTRA_KINDS
from tests.faults.workload import MID_RUN_EVENTS

Scenario = Callable[[str, Path, int], RunReport]


def _finish(run: FaultRun) -> RunReport:
    run.drain()
    report = run.verify()
    run.shutdown()
    return report


def _any_held(run: FaultRun) -> bool:
    """Whether a shard is seen held at a marker; a shard still being created is not."""
    p = run.pipeline
    return any(
        (state := shard_state(p.replica, p.source, partition)) is not None and state.held
        for partition in range(run.config.partitions)
    )


def kill_mid_apply(bootstrap: str, root: Path, seed: int) -> RunReport:
    """SIGKILL inside a shard batch (changes applied, not committed), then a restart; a
    second source on the same database goes on meanwhile."""
    config = RunConfig(seed, processes=2, second_source=True)
    nth = 3 + seed % 20
    config.arms = {"replicate-0": f"apply.batch=kill@{nth}", "replicate-1": "apply.batch=kill@40"}
    with FaultRun(bootstrap, root, "kill-mid-apply", config) as run:
        run.start()
        run.write_for(7)
        return _finish(run)


def kill_while_held(bootstrap: str, root: Path, seed: int) -> RunReport:
    """SIGKILL while partitions are held at a marker (REACHED sent, cut open)."""
    config = RunConfig(seed, processes=2)
    config.arms = {"replicate-0": f"marker.held=kill@{2 + seed % 6}"}
    with FaultRun(bootstrap, root, "kill-while-held", config) as run:
        run.start()
        run.write_for(10)
        return _finish(run)


def kill_while_snapshotting(bootstrap: str, root: Path, seed: int) -> RunReport:
    """SIGKILL of the backup writer holding the lock, before it pinned the cut.

    Armed in every process, so whoever writes first dies; another process (or the
    restarted one) must take the READY cut over, from the same shards, still held.
    """
    config = RunConfig(seed, processes=2)
    spec = f"snapshot.before_pin=kill@{1 + seed % 3}"
    config.arms = {"replicate-0": spec, "replicate-1": spec}
    with FaultRun(bootstrap, root, "kill-while-snapshotting", config) as run:
        run.start()
        run.write_for(7)
        return _finish(run)


def kill_after_pin(bootstrap: str, root: Path, seed: int) -> RunReport:
    """SIGKILL of the backup writer after PINNED: the partitions have moved on.

    One process dies right after saying PINNED, the other in the middle of the write (after
    a table) or with every file written but not visible. Its cut can no longer be written
    from the shards: it must end ABANDONED (or, if another process pinned it while every
    shard was still held at M, PUBLISHED and exact), never as a wrong backup; later cuts
    are published.
    """
    config = RunConfig(seed, processes=2)
    late = "snapshot.mid_write" if seed % 2 else "snapshot.before_publish"
    config.arms = {
        "replicate-0": f"snapshot.after_pin=kill@{1 + seed % 3}",
        "replicate-1": f"{late}=kill@{2 + seed % 4}",
    }
    with FaultRun(bootstrap, root, "kill-after-pin", config) as run:
        run.start()
        run.write_for(8)
        report = _finish(run)
        statuses = report.verdict.statuses
        killed_cuts = [m for m, s in statuses.items() if s is not CutStatus.PUBLISHED]
        later = [m for m in run.pipeline.oracle if m > max(killed_cuts, default=0)]
        _require_published(report, later, "cuts after the last writer died")
        return report


def kill_after_publish(bootstrap: str, root: Path, seed: int) -> RunReport:
    """SIGKILL after the backup is visible: before PUBLISHED is sent, and before the commit."""
    config = RunConfig(seed, processes=2)
    config.arms = {
        "replicate-0": f"snapshot.after_publish=kill@{1 + seed % 2}",
        "replicate-1": f"commit.before=kill@{2 + seed % 5}",
    }
    with FaultRun(bootstrap, root, "kill-after-publish", config) as run:
        run.start()
        run.write_for(7)
        return _finish(run)


def rebalance_while_held(bootstrap: str, root: Path, seed: int) -> RunReport:
    """A process joins, then one leaves, while every partition is held at a marker.

    Every backup writer sleeps 2 s before pinning the cut, so each cut holds its
    partitions for that long; the join and the leave are started while a shard is seen held.
    """
    config = RunConfig(seed, processes=2)
    slow = "snapshot.before_pin=sleep:2"
    config.arms = {"replicate-0": slow, "replicate-1": slow}
    with FaultRun(bootstrap, root, "rebalance-while-held", config) as run:
        run.start()
        run.write_for(3, cut_every_s=(1.5, 2.5))
        _wait_held(run)
        run.start_replicator("replicate-2", slow)  # joins while held
        run.write_for(5, cut_every_s=(1.5, 2.5))
        _wait_held(run)
        run.stop("replicate-1")  # leaves while held (clean SIGTERM)
        run.write_for(5, cut_every_s=(1.5, 2.5))
        return _finish(run)


def _wait_held(run: FaultRun, deadline_s: float = 30.0) -> None:
    assert run.workload is not None
    end = time.monotonic() + deadline_s
    run.workload.cut()
    while not _any_held(run):
        if time.monotonic() > end:
            raise AssertionError("no partition was ever seen held at a marker")
        run.workload.transaction()
        time.sleep(0.02)


def stalled_partition(bootstrap: str, root: Path, seed: int) -> RunReport:
    """One partition's thread is stuck: the cut is abandoned, then later cuts succeed.

    The stuck process is restarted (unarmed) after the abandon; the abandoned cut must
    have no backup and be reported ABANDONED, and every later cut must be published.
    """
    config = RunConfig(seed, partitions=4, processes=1, alignment_timeout_s=5.0)
    config.arms = {"replicate-0": f"apply.batch[{seed % 4}]=stall:600"}
    with FaultRun(bootstrap, root, "stalled-partition", config) as run:
        run.start()
        assert run.workload is not None
        run.write_for(2, cut_every_s=(60, 60))
        stuck = run.workload.cut()
        statuses = run.wait_statuses([stuck], deadline_s=45)
        run.kill("replicate-0")
        run.supervise()  # restarted without the stall
        run.write_for(4, cut_every_s=(0.8, 1.5))
        report = _finish(run)
        later = [m for m in run.pipeline.oracle if m > stuck]
        if statuses[stuck] is not CutStatus.ABANDONED:
            report.verdict.problem(f"stuck cut {stuck} ended {statuses[stuck]}, not abandoned")
        if has_backup(run.pipeline.backups, run.pipeline.source, stuck):
            report.verdict.problem(f"a backup is labelled with abandoned cut {stuck}")
        _require_published(report, later, "cuts after the stall")
        return report


def _require_published(report: RunReport, marker_ids: Iterable[int], which: str) -> None:
    """A problem on ``report`` for each of these cuts whose fate was not PUBLISHED."""
    unpublished = [
        m for m in marker_ids if report.verdict.statuses.get(m) is not CutStatus.PUBLISHED
    ]
    if unpublished:
        report.verdict.problem(f"{which} were not published: {unpublished}")


def idle_partitions(bootstrap: str, root: Path, seed: int) -> RunReport:
    """Cuts with no operation at all, or one row's, since the previous: none may wait."""
    config = RunConfig(seed, processes=2, alignment_timeout_s=20.0)
    with FaultRun(bootstrap, root, "idle-partitions", config) as run:
        run.start()
        assert run.workload is not None
        run.write_for(2, cut_every_s=(60, 60))
        for _ in range(3):
            run.workload.cut()  # back to back: every partition idle
        for _ in range(3):
            run.workload.transaction()  # one transaction: most partitions idle
            run.workload.cut()
        report = _finish(run)
        _require_published(report, run.pipeline.oracle, "cuts with idle partitions")
        return report


def three_processes(bootstrap: str, root: Path, seed: int) -> RunReport:
    """Three processes on eight partitions, SIGKILLed at random moments and restarted."""
    config = RunConfig(seed, partitions=8, processes=3)
    with FaultRun(bootstrap, root, "three-processes", config) as run:
        run.start()
        run.write_for(12, chaos=0.3)
        return _finish(run)


def zombie_process(bootstrap: str, root: Path, seed: int) -> RunReport:
    """A process frozen past its session timeout wakes up as a zombie.

    Its partitions have moved to the other process meanwhile; when it wakes, its threads
    still hold queued records and its shards' old connections. The shard claim fences
    them and Kafka refuses its stale generation's commits: nothing doubled, nothing lost.
    """
    config = RunConfig(seed, processes=2, alignment_timeout_s=20.0)
    with FaultRun(bootstrap, root, "zombie-process", config) as run:
        run.start()
        run.write_for(3)
        run.freeze("replicate-0")
        run.write_for(config.session_timeout_s + 4)
        run.wait_left_group("replicate-0")  # a fixed time is not enough on a slow machine
        run.thaw("replicate-0")
        run.write_for(3)
        return _finish(run)


def statement_forms(bootstrap: str, root: Path, seed: int) -> RunReport:
    """Every statement form and every mid-run event, with SIGKILLs, in one run.

    The default mix (REPLACE in its forms, cascades, key changes, ...) plus the extra kinds
    (upserts, INSERT OR IGNORE); between stretches of writing, at seeded points, four
    schema changes (each step ADD, RENAME, DROP COLUMN, the tags migration not yet run,
    while possible) and a long write transaction that a `cutline mark` waits out. A kind
    or an event that never ran is a problem.
    """
    config = RunConfig(
        seed, partitions=4, processes=2, statements=tuple(EXTRA_KINDS), second_source=True
    )  # chaos may kill the second source's process too
    config.restores = 2  # the oldest and the newest layout
    with FaultRun(bootstrap, root, "statement-forms", config) as run:
        run.start()
        assert run.workload is not None
        events = ["schema-change"] * 4
        events.insert(run.rng.randint(0, len(events)), "long-transaction")
        for event in events:
            run.write_for(run.rng.uniform(1.0, 2.0), chaos=0.15)
            if event == "long-transaction":
                run.workload.long_transaction()
            else:  # the workload makes some of its own: prefer a step not yet run
                stats, possible = run.workload.stats, run.workload.next_schema_changes()
                fresh = [step for step in possible if not stats.events[step]]
                run.workload.schema_change(run.rng.choice(fresh or possible))
        run.write_for(1.5, chaos=0.15)
        report = _finish(run)
        stats = run.workload.stats
        never = [k.name for k in run.workload.kinds if not stats.kinds[k.name]]
        never += [e for e in MID_RUN_EVENTS if not stats.events[e]]
        if never:
            report.verdict.problem(f"statement kinds or events never run: {never}", mismatch=False)
        if not stats.events["mark-waited"]:
            report.verdict.problem("no `cutline mark` was seen waiting out a long transaction")
        return report


SCENARIOS: dict[str, Scenario] = {
    "kill-mid-apply": kill_mid_apply,
    "kill-while-held": kill_while_held,
    "kill-while-snapshotting": kill_while_snapshotting,
    "kill-after-pin": kill_after_pin,
    "kill-after-publish": kill_after_publish,
    "rebalance-while-held": rebalance_while_held,
    "stalled-partition": stalled_partition,
    "idle-partitions": idle_partitions,
    "three-processes": three_processes,
    "zombie-process": zombie_process,
    "statement-forms": statement_forms,
}
