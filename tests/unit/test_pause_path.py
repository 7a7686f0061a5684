"""The pause's short path (real SQLite shards, no broker): read transactions begun as each
shard is held, and the writer's own partitions released once PINNED is acknowledged."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.alignment import CutStatus
from consumers.coordinator import CutCoordinator
from consumers.prepin import PrePins
from consumers.snapshotter import SnapshotError, pin_cut, write_backup
from schemas.records import ControlKind
from tests.unit.test_pinned_cut import _accounts, _coordinator, _ready, _sent
from tests.unit.test_replica_and_snapshot import ACCOUNT_ROWS, SOURCE, build_replica, insert
from tests.unit.test_replication_faults import FlakyProducer


def test_read_transactions_begun_at_the_hold_pin_the_cut(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    plan, shards = build_replica(replica)
    prepins = PrePins(replica, SOURCE)
    try:
        for p in plan.offsets:
            prepins.open(plan.marker_id, p)
        early = prepins.take(plan.marker_id)
        assert sorted(early) == sorted(plan.offsets)
        pinned = pin_cut(replica, plan, early)
        assert [id(c) for c in pinned.connections] == [id(early[p]) for p in sorted(early)]
        for p, shard in enumerate(shards):  # released: the shards move past the marker
            shard.release()
            shard.begin()
            row = {"id": 800 + p, "owner": "late", "balance": 1.0}
            shard.apply(insert("accounts", {"id": 800 + p}, row))
            shard.commit(plan.offsets[p] + 1)
        backup = write_backup(replica, tmp_path / "backups", plan, writer="t", pinned=pinned)
        assert _accounts(backup) == sorted((r[0], r[1], r[2]) for r in ACCOUNT_ROWS)
    finally:
        prepins.close()
        for shard in shards:
            shard.close()


def test_an_early_read_that_does_not_see_the_cut_is_refused(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    plan, shards = build_replica(replica, hold=False)  # reached, but not held at the marker
    prepins = PrePins(replica, SOURCE)
    try:
        prepins.open(plan.marker_id, 0)
        with pytest.raises(SnapshotError, match="not held at marker"):
            pin_cut(replica, plan, prepins.take(plan.marker_id))
    finally:
        for shard in shards:
            shard.close()


def test_a_late_early_read_is_closed_at_once(tmp_path: Path) -> None:
    """Opened after the writer took the cut's reads: kept, it would hold back checkpoints."""
    replica = tmp_path / "replica"
    plan, shards = build_replica(replica)
    prepins = PrePins(replica, SOURCE)
    try:
        assert prepins.take(plan.marker_id) == {}
        prepins.open(plan.marker_id, 1)
        assert len(prepins) == 0
        prepins.open(plan.marker_id + 1, 1)  # the next cut's are kept until taken or discarded
        assert len(prepins) == 1
        prepins.discard(plan.marker_id + 1)
        assert len(prepins) == 0
    finally:
        for shard in shards:
            shard.close()


def _release_log(coordinator: CutCoordinator, marker_id: int) -> list[CutStatus | None]:
    """What the replication threads would see each time the coordinator wakes them."""
    seen: list[CutStatus | None] = []
    coordinator.on_release = lambda: seen.append(coordinator.resolution(marker_id))
    return seen


def test_the_writers_threads_are_released_once_pinned_is_acknowledged(tmp_path: Path) -> None:
    """PINNED is not read back here (no control topic): the release is in-process."""
    plan, shards = build_replica(tmp_path / "replica")
    producer = FlakyProducer(fail=0)
    coordinator = _coordinator(tmp_path, producer)
    _ready(coordinator, plan)
    seen = _release_log(coordinator, plan.marker_id)
    assert coordinator.resolution(plan.marker_id) is None  # READY: still held
    try:
        coordinator._snapshot(plan)
    finally:
        for shard in shards:
            shard.close()
    assert seen == [CutStatus.PINNED], "woken once, and told the cut is pinned"
    assert coordinator.alignment.status(plan.marker_id) is CutStatus.READY  # log not read
    assert [kind for kind, _ in _sent(producer)] == [ControlKind.PINNED, ControlKind.PUBLISHED]


def test_an_unacknowledged_pinned_releases_nothing(tmp_path: Path) -> None:
    """The partitions stay held until an outcome: the backup is written as before pinning."""
    plan, shards = build_replica(tmp_path / "replica")
    producer = FlakyProducer(fail=1)  # PINNED is not acknowledged
    coordinator = _coordinator(tmp_path, producer)
    _ready(coordinator, plan)
    seen = _release_log(coordinator, plan.marker_id)
    try:
        coordinator._snapshot(plan)
    finally:
        for shard in shards:
            shard.close()
    assert seen == []
    assert [kind for kind, _ in _sent(producer)] == [ControlKind.PINNED, ControlKind.PUBLISHED]
    # released by the outcome: the backup is in the catalog
    assert coordinator.resolution(plan.marker_id) is CutStatus.PUBLISHED
