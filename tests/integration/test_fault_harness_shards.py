"""The fault harness reads shards while replication creates them: a half-made shard is
"no state yet", never an error (under load this race failed `make test` once)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from consumers.replica import Shard, shard_path
from tests.faults.checker import shard_state, shards_settled

SOURCE = "harness"


def test_a_missing_or_half_created_shard_has_no_state_yet(tmp_path: Path) -> None:
    assert shard_state(tmp_path, SOURCE, 0) is None
    path = shard_path(tmp_path, SOURCE, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # the file exists, nothing in it yet
    assert shard_state(tmp_path, SOURCE, 0) is None
    conn = sqlite3.connect(path)  # as Shard does first: the file, WAL, then the tables
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE unrelated (x)")
    conn.commit()
    try:
        assert shard_state(tmp_path, SOURCE, 0) is None
        assert not shards_settled(tmp_path, SOURCE, 1, marker_id=1)
    finally:
        conn.close()


def test_a_created_shard_reports_its_state(tmp_path: Path) -> None:
    shard = Shard(shard_path(tmp_path, SOURCE, 0), 0)
    try:
        state = shard_state(tmp_path, SOURCE, 0)
        assert state is not None and state.offset == -1 and not state.held
    finally:
        shard.close()


def test_a_damaged_shard_is_still_an_error(tmp_path: Path) -> None:
    path = shard_path(tmp_path, SOURCE, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        shard_state(tmp_path, SOURCE, 0)
