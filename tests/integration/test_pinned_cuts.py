"""Pinned cuts on a real broker: the pause is the time to pin the cut, not to copy it.

The writer pins cut M (a read transaction on every shard, each taken while held at M),
says PINNED(M), and writes the backup while replication goes on. These tests prove that
a partition released at a pinned marker applies records while backup M is still being
written, that the backup is still exactly the primary at M (DuckDB, Avro, ``restore``),
and what happens to M when the writer is SIGKILLed after pinning.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from pathlib import Path

import pytest

from backups.catalog import has_backup
from consumers.alignment import CutStatus
from cutline.failpoints import ENV as FAILPOINTS_ENV
from schemas.records import ControlEvent, ControlKind
from tests.faults.checker import control_events, final_statuses, shard_state
from tests.faults.runner import FaultPipeline
from tests.integration.pipeline import (
    TABLES,
    Pipeline,
    Process,
    avro_rows,
    backup_rows,
    table_rows,
    wait_until,
)

PARTITIONS = 3


def _pipeline(kafka: str, root: Path) -> FaultPipeline:
    return FaultPipeline(kafka, f"it-pin-{uuid.uuid4().hex[:10]}", root)


def _replicate(p: FaultPipeline, failpoints: str | None = None) -> Process:
    return p.start(
        "replicate",
        "replicate",
        "--replica",
        str(p.replica),
        "--backups",
        str(p.backups),
        "--source",
        p.source,
        "--bootstrap-servers",
        p.bootstrap,
        env={FAILPOINTS_ENV: failpoints} if failpoints else None,
    )


def _transaction(conn: sqlite3.Connection, rng: random.Random) -> None:
    """A few updates on random accounts: over a dozen of them, every partition gets some."""
    conn.execute("BEGIN IMMEDIATE")
    for account in rng.sample(range(40), 4):
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = ?", (account,))
    conn.execute("INSERT INTO events (kind, payload) VALUES ('tick', x'01')")
    conn.execute("COMMIT")


def _events(p: Pipeline, marker_id: int) -> list[ControlEvent]:
    return [e for e in control_events(p.bootstrap, p.source) if e.marker_id == marker_id]


def _assert_exact(p: Pipeline, marker_id: int) -> None:
    """Backup M equals the primary at M: its DuckDB file, its Avro files and a restore."""
    backup = p.published()[marker_id]
    expected = p.oracle[marker_id]
    assert backup_rows(backup) == expected, f"DuckDB of backup {marker_id}"
    assert avro_rows(backup)[0] == expected, f"Avro of backup {marker_id}"
    target = p.root / f"restored-{marker_id}.sqlite"
    restore = p.cli(
        "restore",
        "--backups",
        str(p.backups),
        "--source",
        p.source,
        "--marker",
        str(marker_id),
        "--to",
        str(target),
    )
    assert restore.returncode == 0, restore.stdout + restore.stderr
    conn = sqlite3.connect(target)
    try:
        for table in TABLES:
            columns = [c["name"] for c in backup.tables[table]["columns"]]
            assert table_rows(conn, table, columns) == expected[table], (marker_id, table)
    finally:
        conn.close()


def test_partitions_apply_records_while_the_pinned_backup_is_written(
    kafka: str, tmp_path: Path
) -> None:
    """The writer stalls 3 s after each table it writes. After PINNED(M), every partition
    applies records past M's marker while backup M is not yet published; then M is
    published and is exactly the primary at M."""
    rng = random.Random(9)
    with _pipeline(kafka, tmp_path) as p:
        p.create_primary()
        p.start_capture(partitions=PARTITIONS)
        _replicate(p, "snapshot.mid_write=stall:3")
        conn = p.connect()
        try:
            for _ in range(5):
                _transaction(conn, rng)
            marker = p.cut(conn).marker_id

            def pinned() -> list[ControlEvent]:
                p.check_alive()
                return [e for e in _events(p, marker) if e.kind is ControlKind.PINNED]

            wait_until(pinned, 90, f"PINNED for marker {marker}")
            reached = [e for e in _events(p, marker) if e.kind is ControlKind.REACHED]
            at = {e.partition: e.offset for e in reached}
            assert sorted(at) == list(range(PARTITIONS))

            def moved_on() -> bool:
                _transaction(conn, rng)
                states = [shard_state(p.replica, p.source, q) for q in range(PARTITIONS)]
                return all(
                    s is not None and not s.held and s.offset > at[q] for q, s in enumerate(states)
                )

            wait_until(moved_on, 8, "every partition to apply records past the pinned marker")
            assert not has_backup(p.backups, p.source, marker), (
                "the backup was published before the partitions moved on: nothing was proven"
            )
        finally:
            conn.close()
        p.wait_for_backups([marker], deadline_s=120)
        assert final_statuses(control_events(p.bootstrap, p.source))[marker] is (
            CutStatus.PUBLISHED
        )
        _assert_exact(p, marker)


@pytest.mark.parametrize("failpoint", ["snapshot.after_pin", "snapshot.mid_write"])
def test_a_writer_killed_after_pinning_abandons_its_cut_and_the_next_one_is_exact(
    kafka: str, tmp_path: Path, failpoint: str
) -> None:
    """SIGKILL of the only writer after PINNED: its pinned snapshots die with it and the
    shards move on, so after the restart cut M is ABANDONED with the reason, never written
    from shards past M; the next cut is published and exact."""
    rng = random.Random(10)
    with _pipeline(kafka, tmp_path) as p:
        p.create_primary()
        p.start_capture(partitions=PARTITIONS)
        first = _replicate(p, f"{failpoint}=kill")
        conn = p.connect()
        try:
            _transaction(conn, rng)
            lost = p.cut(conn).marker_id
            wait_until(lambda: first.popen.poll() is not None, 90, f"{failpoint} to kill")
            assert first.popen.returncode == -9, first.tail()
            p.processes.remove(first)  # its death was the test's doing
            for _ in range(5):
                _transaction(conn, rng)
            _replicate(p)  # the restart, unarmed
            statuses: dict[int, CutStatus] = {}

            def resolved() -> bool:
                p.check_alive()
                statuses.update(final_statuses(control_events(p.bootstrap, p.source)))
                return statuses.get(lost, CutStatus.READY).resolved

            wait_until(resolved, 90, f"cut {lost} to be resolved after the restart")
            assert statuses[lost] is CutStatus.ABANDONED, statuses
            detail = [e.detail for e in _events(p, lost) if e.kind is ControlKind.ABANDONED]
            assert detail and "writer died after releasing the partitions" in detail[0]
            assert not has_backup(p.backups, p.source, lost)
            for _ in range(3):
                _transaction(conn, rng)
            following = p.cut(conn).marker_id
        finally:
            conn.close()
        p.wait_for_backups([following], deadline_s=120)
        _assert_exact(p, following)
        assert not has_backup(p.backups, p.source, lost)
