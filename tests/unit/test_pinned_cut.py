"""Pinning a cut (real SQLite shards, no broker): the backup is the cut even though the
shards move on after PINNED, and the coordinator's decisions around a pinned cut."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from backups.catalog import has_backup
from consumers.alignment import CutStatus
from consumers.coordinator import CutCoordinator
from consumers.snapshotter import pin_cut, write_backup
from cutline import failpoints
from schemas.codec import decode
from schemas.records import ControlEvent, ControlKind, MarkerDigest
from tests.unit.test_replica_and_snapshot import ACCOUNT_ROWS, SOURCE, build_replica, insert
from tests.unit.test_replication_faults import FlakyProducer


def _accounts(backup) -> list[tuple]:
    db = duckdb.connect(str(backup.duckdb_path), read_only=True)
    try:
        return db.execute("SELECT id, owner, balance FROM accounts ORDER BY id").fetchall()
    finally:
        db.close()


def test_a_pinned_cut_is_written_as_pinned_while_the_shards_move_on(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    plan, shards = build_replica(replica)
    try:
        pinned = pin_cut(replica, plan)
        for p, shard in enumerate(shards):  # released: replication goes on past the marker
            shard.release()
            shard.begin()
            shard.apply(
                insert(
                    "accounts", {"id": 900 + p}, {"id": 900 + p, "owner": "late", "balance": 1.0}
                )
            )
            shard.commit(plan.offsets[p] + 1)
            shard.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # cannot pass the pin
        backup = write_backup(replica, tmp_path / "backups", plan, writer="t", pinned=pinned)
        assert pinned.connections == [], "the pin is closed once the backup is written"
        assert _accounts(backup) == sorted((r[0], r[1], r[2]) for r in ACCOUNT_ROWS)
        assert backup.manifest["t2_us"] == pinned.t2_us
    finally:
        for shard in shards:
            shard.close()


def _coordinator(tmp_path: Path, producer: FlakyProducer, **kw) -> CutCoordinator:
    return CutCoordinator(
        bootstrap="127.0.0.1:1",
        source=SOURCE,
        member="me",
        replica_dir=tmp_path / "replica",
        backups_dir=tmp_path / "backups",
        producer=producer,  # type: ignore[arg-type]
        **kw,
    )


def _ready(coordinator: CutCoordinator, plan, *also: ControlKind) -> None:
    for p, offset in plan.offsets.items():
        coordinator.alignment.apply(
            ControlEvent(
                ControlKind.REACHED, SOURCE, plan.marker_id, plan.partitions, "m", 0, p, offset
            ),
            0.0,
        )
    # the primary's digest arrives; these tests are about the pin, not the proof (see
    # test_digest_proof), so the primary says it skipped it
    coordinator.digests.add(MarkerDigest(SOURCE, plan.marker_id, True, (), 0, "not proved here"))
    for kind in also:
        coordinator.alignment.apply(
            ControlEvent(kind, SOURCE, plan.marker_id, plan.partitions, "m", 0), 0.0
        )


def _sent(producer: FlakyProducer) -> list[tuple[ControlKind, str | None]]:
    return [(e.kind, e.detail) for e in map(decode, producer.produced)]  # type: ignore[union-attr]


def test_the_writer_says_pinned_before_it_writes_then_published(tmp_path: Path) -> None:
    plan, shards = build_replica(tmp_path / "replica")
    producer = FlakyProducer(fail=0)
    coordinator = _coordinator(tmp_path, producer)
    _ready(coordinator, plan)
    try:
        coordinator._snapshot(plan)
    finally:
        for shard in shards:
            shard.close()
    kinds = [kind for kind, _ in _sent(producer)]
    assert kinds == [ControlKind.PINNED, ControlKind.PUBLISHED]
    assert has_backup(tmp_path / "backups", SOURCE, plan.marker_id)


def test_a_pinned_cut_without_a_backup_is_abandoned_by_whoever_takes_the_lock_next(
    tmp_path: Path,
) -> None:
    """Its writer died after PINNED: the shards may have moved, so M is never written."""
    plan, shards = build_replica(tmp_path / "replica")  # even shards still held: no write
    producer = FlakyProducer(fail=0)
    coordinator = _coordinator(tmp_path, producer)
    _ready(coordinator, plan, ControlKind.PINNED)
    try:
        coordinator._snapshot(plan)
    finally:
        for shard in shards:
            shard.close()
    [(kind, detail)] = _sent(producer)
    assert kind is ControlKind.ABANDONED
    assert detail is not None and "writer died after releasing the partitions" in detail
    assert not has_backup(tmp_path / "backups", SOURCE, plan.marker_id)


def test_a_pinned_cut_found_published_gets_its_published_event(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    plan, shards = build_replica(replica)
    try:
        write_backup(replica, tmp_path / "backups", plan, writer="dead")
    finally:
        for shard in shards:
            shard.close()
    producer = FlakyProducer(fail=0)
    coordinator = _coordinator(tmp_path, producer)
    _ready(coordinator, plan, ControlKind.PINNED)
    coordinator._snapshot(plan)
    assert _sent(producer) == [(ControlKind.PUBLISHED, "found published")]


def test_a_write_past_the_snapshot_deadline_fails_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failpoints, "_ACTIONS", failpoints.parse("snapshot.mid_write=stall:1"))
    plan, shards = build_replica(tmp_path / "replica")
    producer = FlakyProducer(fail=0)
    coordinator = _coordinator(tmp_path, producer, snapshot_deadline_s=0.5)
    _ready(coordinator, plan)
    try:
        coordinator._snapshot(plan)
    finally:
        for shard in shards:
            shard.close()
    sent = _sent(producer)
    assert [kind for kind, _ in sent] == [ControlKind.PINNED, ControlKind.FAILED], sent
    assert "snapshot deadline" in (sent[1][1] or "")
    assert not has_backup(tmp_path / "backups", SOURCE, plan.marker_id)
    assert coordinator.alignment.status(plan.marker_id) is CutStatus.READY  # log not read here
