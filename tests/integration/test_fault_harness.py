"""The fault harness itself, without a broker: it reads shards while replication creates
them (a half-made shard is "no state yet", never an error: under load this race failed
`make test` once), and its workload draws statement kinds from a catalogue."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from consumers.replica import Shard, shard_path
from tests.faults.checker import shard_state, shards_settled
from tests.faults.statements import (
    DEFAULT_KINDS,
    Change,
    StatementKind,
    kinds_named,
    pick_and_run,
)

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


# -- the workload's statement kinds ---------------------------------------------------------


class FixedDraw(random.Random):
    """An rng whose draw for the kind is ``value`` (the kinds' own draws stay seeded)."""

    def __init__(self, value: float):
        super().__init__(1)
        self.first: float | None = value

    def random(self) -> float:
        if self.first is not None:
            value, self.first = self.first, None
            return value
        return super().random()


def recording_kinds(ran: list[str]) -> tuple[StatementKind, ...]:
    return tuple(
        StatementKind(k.name, k.weight, lambda c, n=k.name: ran.append(n), k.min_accounts)
        for k in DEFAULT_KINDS
    )


@pytest.mark.parametrize(
    ("draw", "accounts", "expected"),
    [
        (0.10, 5, "transfer"),
        (0.10, 1, "new-account"),  # a transfer needs two accounts: the next kind runs
        (0.45, 5, "new-account"),
        (0.60, 5, "account-key-change"),
        (0.60, 0, "tag-key-change"),
        (0.75, 5, "insert-event"),
        (0.90, 5, "bulk-update"),
        (0.99, 5, "update-account"),
        (0.99, 0, None),
    ],
)
def test_the_default_mix_draws_as_the_workload_always_did(draw, accounts, expected):
    """Same thresholds as before the catalogue, so a seed still replays the same run."""
    ran: list[str] = []
    change = Change(None, FixedDraw(draw), list(range(accounts)), lambda: 0)  # type: ignore[arg-type]
    assert pick_and_run(recording_kinds(ran), change) == expected
    assert ran == ([expected] if expected else [])


def test_extra_kinds_are_chosen_by_name() -> None:
    assert kinds_named([]) == DEFAULT_KINDS
    assert [k.name for k in kinds_named(["upsert-tag"])][-1] == "upsert-tag"
    with pytest.raises(ValueError, match="unknown statement kinds \\['replace'\\]"):
        kinds_named(["replace"])
