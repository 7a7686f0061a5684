"""Replication under faults, on a real broker: each test is one seeded fault scenario.

Each scenario (``tests/faults/scenarios.py``) runs a random workload with cuts against a
SQLite primary, injects its fault, drains, and checks every published backup (DuckDB and
Avro) against the primary's exact rows at its cut, every cut's fate on the control
topic, the group's offsets, and the drained replica against the primary.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from consumers.alignment import CutStatus
from tests.faults.runner import RunReport
from tests.faults.scenarios import (
    idle_partitions,
    kill_after_pin,
    kill_after_publish,
    kill_mid_apply,
    kill_while_held,
    kill_while_snapshotting,
    rebalance_while_held,
    stalled_partition,
    three_processes,
    zombie_process,
)


def _assert_clean(report: RunReport) -> None:
    problems = "\n".join(report.verdict.problems)
    assert report.verdict.ok, f"{report.line()}\n{problems}"
    assert report.verdict.backups_verified >= 2, report.line()


def test_sigkill_mid_apply_loses_and_doubles_nothing(kafka: str, tmp_path: Path) -> None:
    report = kill_mid_apply(kafka, tmp_path, seed=11)
    assert report.kills >= 1, "the apply.batch failpoint should have killed a process"
    _assert_clean(report)


def test_sigkill_while_held_at_a_marker(kafka: str, tmp_path: Path) -> None:
    report = kill_while_held(kafka, tmp_path, seed=12)
    assert report.kills >= 1, "the marker.held failpoint should have killed a process"
    _assert_clean(report)


def test_sigkill_while_the_backup_is_written_is_taken_over(kafka: str, tmp_path: Path) -> None:
    report = kill_while_snapshotting(kafka, tmp_path, seed=13)
    assert report.kills >= 1, "the snapshot.before_pin failpoint should have killed a writer"
    _assert_clean(report)


def test_sigkill_after_pinning_never_publishes_a_wrong_backup(kafka: str, tmp_path: Path) -> None:
    report = kill_after_pin(kafka, tmp_path, seed=19)
    assert report.kills >= 1, "a failpoint after PINNED should have killed a writer"
    _assert_clean(report)


def test_sigkill_after_publish_before_commit(kafka: str, tmp_path: Path) -> None:
    report = kill_after_publish(kafka, tmp_path, seed=14)
    assert report.kills >= 1, "a post-publish failpoint should have killed a process"
    _assert_clean(report)


def test_rebalance_while_partitions_are_held(kafka: str, tmp_path: Path) -> None:
    _assert_clean(rebalance_while_held(kafka, tmp_path, seed=15))


def test_zombie_process_is_fenced(kafka: str, tmp_path: Path) -> None:
    _assert_clean(zombie_process(kafka, tmp_path, seed=16))


def test_stalled_partition_abandons_the_cut_and_later_cuts_succeed(
    kafka: str, tmp_path: Path
) -> None:
    report = stalled_partition(kafka, tmp_path, seed=17)
    statuses = report.verdict.statuses
    assert CutStatus.ABANDONED in statuses.values(), statuses
    _assert_clean(report)  # includes: no backup of the abandoned cut, later cuts published


def test_idle_partitions_never_hold_up_a_cut(kafka: str, tmp_path: Path) -> None:
    report = idle_partitions(kafka, tmp_path, seed=18)
    assert set(report.verdict.statuses.values()) == {CutStatus.PUBLISHED}, report.verdict.statuses
    _assert_clean(report)


def test_three_processes_on_eight_partitions_under_random_sigkill(
    kafka: str, tmp_path: Path
) -> None:
    report = three_processes(kafka, tmp_path, seed=19)
    assert report.kills >= 1, "the chaos loop should have killed at least one process"
    _assert_clean(report)


def test_make_faults_short_run_prints_one_clean_summary_line(kafka: str, tmp_path: Path) -> None:
    """What ``make faults`` runs (and ``make test`` includes): its own seeds, one line."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka, "SOAK": "", "FAULTS_SEED": "101"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.faults"],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    found = re.fullmatch(
        r"faults: (\d+) runs, (\d+) kills, (\d+) backups verified, 0 mismatches, 0 lost, "
        r"0 duplicated",
        lines[0],
    )
    assert found, lines[0]
    runs, kills, verified = map(int, found.groups())
    assert runs >= 2 and kills >= 1 and verified >= 4, lines[0]
