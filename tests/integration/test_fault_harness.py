"""The fault harness itself, without a broker: it reads shards while replication creates
them (a half-made shard is "no state yet", never an error: under load this race failed
`make test` once), its workload draws statement kinds from a catalogue, each REPLACE and
cascade kind does on a real SQLite primary what its name says, schema changes come in an
order that keeps every statement valid, and the checker reports a backup's wrong layout."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from backups.catalog import Backup
from consumers.replica import Shard, shard_path
from tests.faults.checker import (
    layout_differences,
    restores_to_check,
    shard_state,
    shards_settled,
)
from tests.faults.primary import ALL_TABLES, FaultPipeline
from tests.faults.statements import (
    DEFAULT_KINDS,
    Change,
    StatementKind,
    kinds_named,
    pick_and_run,
)
from tests.faults.workload import Workload

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
        (0.35, 5, "new-account"),
        (0.46, 5, "account-key-change"),
        (0.46, 0, "tag-key-change"),
        (0.55, 5, "insert-event"),
        (0.67, 5, "bulk-update"),
        (0.72, 5, "update-account"),
        (0.78, 5, "replace-on-key"),
        (0.78, 0, "update-or-replace"),  # the kinds between need an account
        (0.83, 5, "replace-through-unique"),
        (0.87, 5, "update-or-replace"),
        (0.90, 5, "on-conflict-replace-ddl"),
        (0.95, 5, "new-card"),
        (0.99, 5, "delete-account-cascade"),
        (0.99, 0, None),
    ],
)
def test_the_default_mix_draws_each_kind_by_its_weight(draw, accounts, expected):
    """One draw, scaled to the weights in catalogue order (the weights total 1.0)."""
    assert sum(k.weight for k in DEFAULT_KINDS) == pytest.approx(1.0)
    ran: list[str] = []
    change = Change(None, FixedDraw(draw), list(range(accounts)), lambda: 0)  # type: ignore[arg-type]
    assert pick_and_run(recording_kinds(ran), change) == expected
    assert ran == ([expected] if expected else [])


# -- the REPLACE and cascade kinds on a real primary -----------------------------------------


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[FaultPipeline]:
    pipeline = FaultPipeline("unused:9092", "harness", tmp_path, tables=ALL_TABLES)
    pipeline.create_primary(accounts=12)
    yield pipeline


def run_kind(workload: Workload, name: str, rng_seed: int = 3) -> None:
    """Run one named default kind in a transaction of the workload's connection."""
    (kind,) = [k for k in DEFAULT_KINDS if k.name == name]
    conn = workload.conn
    ids = [r[0] for r in conn.execute("SELECT id FROM accounts")]
    conn.execute("BEGIN IMMEDIATE")
    kind.run(Change(conn, random.Random(rng_seed), ids, workload._new_id))
    conn.execute("COMMIT")


def rows(conn: sqlite3.Connection, sql: str) -> list[tuple]:
    return conn.execute(sql).fetchall()


def test_replace_kinds_remove_the_rows_they_conflict_with(primary: FaultPipeline) -> None:
    workload = Workload(primary, seed=1)
    conn = workload.conn
    try:
        handles = dict(rows(conn, "SELECT id, handle FROM handles"))
        run_kind(workload, "replace-through-unique")
        after = dict(rows(conn, "SELECT id, handle FROM handles"))
        assert len(after) == len(handles), "one row removed through UNIQUE, one inserted"
        (new_id,) = set(after) - set(handles)
        (gone,) = set(handles) - set(after)
        assert after[new_id] == handles[gone]

        run_kind(workload, "update-or-replace")
        final = dict(rows(conn, "SELECT id, handle FROM handles"))
        (victim,) = set(after) - set(final)  # UPDATE OR REPLACE removed the other row
        (kept,) = [i for i in final if final[i] != after[i]]
        assert final[kept] == after[victim]

        before = rows(conn, "SELECT account, key FROM settings")
        for _ in range(2):
            run_kind(workload, "on-conflict-replace-ddl", rng_seed=5)  # same key twice
        settings = rows(conn, "SELECT account, key FROM settings")
        assert len(settings) == len(before) + 1, "the DDL's ON CONFLICT REPLACE kept one row"
    finally:
        workload.close()


def test_cascade_kinds_move_and_delete_the_accounts_cards(primary: FaultPipeline) -> None:
    workload = Workload(primary, seed=1)
    conn = workload.conn
    try:
        assert rows(conn, "PRAGMA foreign_keys") == [(1,)]
        cards = lambda: dict(rows(conn, "SELECT id, account FROM cards"))  # noqa: E731
        accounts = lambda: {r[0] for r in rows(conn, "SELECT id FROM accounts")}  # noqa: E731
        moved: list[int] = []
        for seed in range(40):  # until the account whose key changes is one with cards
            before_cards, before_accounts = cards(), accounts()
            run_kind(workload, "account-key-change", rng_seed=seed)
            (old,) = before_accounts - accounts()
            (new,) = accounts() - before_accounts
            moved = [c for c, a in before_cards.items() if a == old]
            assert all(cards()[c] == new for c in moved), "ON UPDATE CASCADE moved the cards"
            if moved:
                break
        assert moved, "no account with cards changed its key"

        with_cards = set(cards().values())
        for seed in range(40):  # until the deleted account is one with cards
            run_kind(workload, "delete-account-cascade", rng_seed=seed)
            if with_cards - set(cards().values()):
                break
        assert set(cards().values()) <= accounts(), "every card's account still exists"
        assert with_cards - set(cards().values()), "ON DELETE CASCADE deleted an account's cards"

        run_kind(workload, "new-card")
        target = max(set(cards().values()))
        conn.execute("REPLACE INTO accounts VALUES (?, 'r', 0, 0.5, NULL)", (target,))
        assert target not in set(cards().values()), "REPLACE's delete cascades to the cards"
    finally:
        workload.close()


def test_schema_changes_follow_add_rename_drop_and_the_migration(primary: FaultPipeline) -> None:
    workload = Workload(primary, seed=4)
    conn = workload.conn
    try:
        events = lambda: [r[1] for r in rows(conn, "PRAGMA table_info(events)")]  # noqa: E731
        assert workload.next_schema_changes() == ("add-column", "migration")
        with pytest.raises(ValueError, match="not possible now"):
            workload.schema_change("drop-column")
        workload.schema_change("add-column")
        assert events()[-1] == "note"
        workload.schema_change("migration")
        key = [r[1] for r in sorted(rows(conn, "PRAGMA table_info(tags)"), key=lambda r: r[5])]
        assert key == ["tag", "account"], "the migration flips the key's order"
        workload.schema_change("rename-column")
        assert events()[-1] == "remark"
        workload.schema_change("drop-column")
        assert "remark" not in events()
        assert dict(workload.stats.events) == {
            "add-column": 1,
            "migration": 1,
            "rename-column": 1,
            "drop-column": 1,
        }
    finally:
        workload.close()


def test_a_backup_whose_layout_is_not_the_primarys_at_its_cut_is_reported(tmp_path) -> None:
    columns = [{"name": "id"}, {"name": "kind"}]
    backup = Backup(tmp_path, {"marker_id": 7, "tables": {"events": {"columns": columns}}})
    assert layout_differences(backup, {"events": ["id", "kind"]}) == []
    (added,) = layout_differences(backup, {"events": ["id", "kind", "note"]})
    assert "events has columns ['id', 'kind']" in added and "'note'" in added
    (missing,) = layout_differences(backup, {"events": ["id", "kind"], "tags": ["a"]})
    assert "holds tables ['events']" in missing


def test_extra_kinds_are_chosen_by_name() -> None:
    assert kinds_named([]) == DEFAULT_KINDS
    assert [k.name for k in kinds_named(["upsert-tag"])][-1] == "upsert-tag"
    with pytest.raises(ValueError, match="unknown statement kinds \\['replace'\\]"):
        kinds_named(["replace"])


def test_restores_are_spread_over_the_layouts_the_backups_have() -> None:
    """The newest backup of each layout, at most ``at_most``: oldest and newest included."""
    layouts = {m: {"events": ["id", *(["note"] * (m // 3))]} for m in range(1, 11)}
    published = list(range(1, 11))  # four layouts: newest backups 2, 5, 8, 10
    assert restores_to_check(layouts, published, 1) == [10]
    assert restores_to_check(layouts, published, 3) == [2, 8, 10]
    assert restores_to_check(layouts, published, 9) == [2, 5, 8, 10]
    assert restores_to_check(layouts, [1, 2], 3) == [2]
    assert restores_to_check(layouts, published, 0) == []
