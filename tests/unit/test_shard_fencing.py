"""Shard ownership: a claimed shard refuses writes from every earlier owner."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.replica import Shard, ShardFenced
from schemas.records import Column, ConsistencyMarker, Operation, OpType, TableDefinition

DEF = TableDefinition(
    "s",
    "t",
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
    (Column("id", "INTEGER"), Column("v", "TEXT")),
    ("id",),
)


def _insert(key: int) -> Operation:
    return Operation("s", key, "t", OpType.INSERT, {"id": key}, None, {"id": key, "v": "x"}, 0)


def _rows(shard: Shard) -> list[tuple]:
    return shard.conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "p0.sqlite"


def test_a_replaced_writer_can_no_longer_apply(path: Path) -> None:
    old = Shard(path, 0)
    old.claim("old")
    old.begin()
    old.define(DEF)
    old.apply(_insert(1))
    old.commit(1)

    new = Shard(path, 0)
    assert new.claim("new") == old.epoch + 1
    with pytest.raises(ShardFenced, match="claimed by 'new'"):
        old.begin()
    assert not old._in_batch  # the failed begin left no transaction open
    new.begin()
    new.apply(_insert(2))
    new.commit(2)
    assert _rows(new) == [(1, "x"), (2, "x")]
    assert new.state().offset == 2


def test_a_replaced_writer_cannot_hold_release_or_skip(path: Path) -> None:
    old = Shard(path, 0)
    old.claim("old")
    marker = ConsistencyMarker("s", 3, 1, 0, 1, (0,), ("t",))
    old.reach_marker(marker, 5, hold=True)
    new = Shard(path, 0)
    new.claim("new")
    for stale_write in (
        old.release,
        lambda: old.skip(9),
        lambda: old.reach_marker(marker, 7, hold=False),
    ):
        with pytest.raises(ShardFenced):
            stale_write()
    state = new.state()
    assert (state.held, state.marker_id, state.offset) == (True, 3, 5)
    new.release()
    assert not new.state().held


def test_begin_reports_the_recorded_offset_so_apply_is_idempotent(path: Path) -> None:
    first = Shard(path, 0)
    first.claim("a")
    assert first.begin() == -1
    first.define(DEF)
    first.apply(_insert(1))
    first.commit(41)
    second = Shard(path, 0)
    second.claim("b")
    assert second.begin() == 41  # a replacement skips everything up to offset 41
    second.rollback()


def test_unclaimed_shards_are_not_fenced_and_old_files_gain_owner_columns(path: Path) -> None:
    legacy = Shard(path, 0)
    legacy.conn.execute("ALTER TABLE _cutline_state DROP COLUMN owner")
    legacy.conn.execute("ALTER TABLE _cutline_state DROP COLUMN owner_epoch")
    legacy.close()
    reopened = Shard(path, 0)  # migrates the old layout
    assert reopened.claim("x") == 1
    plain = Shard(path, 0)  # never claimed: tools and tests that own the file outright
    plain.begin()
    plain.commit(3)
    assert plain.state().offset == 3
