"""Bulk shard writes give exactly the per-operation result: rows, failures, counts."""

from __future__ import annotations

import random
from pathlib import Path

from consumers.bulk_apply import groups
from consumers.replica import ApplyError, Shard
from schemas.records import Column, Operation, OpType, TableDefinition

SOURCE = "shop"
ACCOUNTS = TableDefinition(
    SOURCE,
    "accounts",
    "CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance REAL)",
    (Column("id", "INTEGER"), Column("owner", "TEXT", True), Column("balance", "REAL")),
    ("id",),
)
LINES = TableDefinition(
    SOURCE,
    "lines",
    "CREATE TABLE lines(order_id TEXT, line INTEGER, item, PRIMARY KEY (line, order_id))",
    (Column("order_id", "TEXT"), Column("line", "INTEGER"), Column("item", "")),
    ("line", "order_id"),
)
NOTES = TableDefinition(  # keyed by rowid: no declared key
    SOURCE,
    "notes",
    "CREATE TABLE notes(body TEXT)",
    (Column("body", "TEXT"),),
    ("rowid",),
)
# A definition whose key is not the replica table's PRIMARY KEY: never updated in bulk.
LOOSE = TableDefinition(
    SOURCE,
    "loose",
    "CREATE TABLE loose(k INTEGER, v INTEGER)",
    (Column("k", "INTEGER"), Column("v", "INTEGER")),
    ("k",),
)
DEFINITIONS = (ACCOUNTS, LINES, NOTES, LOOSE)


def _op(kind: OpType, table: str, key: dict, after: dict | None) -> Operation:
    before = None if kind is OpType.INSERT else dict(key)
    return Operation(SOURCE, 1, table, kind, key, before, after, 1)


def random_ops(rng: random.Random, n: int) -> list[Operation]:
    """Runs of one table and kind, valid and not (duplicate keys, missing rows, missing
    columns, NOT NULL violations, an undefined table), mixed at random."""
    ops: list[Operation] = []
    while len(ops) < n:
        kind = rng.choice(list(OpType))
        table = rng.choice(["accounts", "lines", "notes", "loose", "nowhere"])
        for _ in range(rng.choice([1, 2, 5, 30])):
            k = rng.randrange(40)
            if table in ("accounts", "nowhere"):
                key = {"id": k}
                after = {"id": k, "owner": rng.choice(["a", "b", None]), "balance": k * 1.5}
            elif table == "lines":
                key = {"line": k % 7, "order_id": f"o{k % 5}"}
                after = {**key, "item": rng.choice([k, "x", b"\x00", None])}
            elif table == "notes":
                key = {"rowid": k}
                after = {"body": f"n{k}", "rowid": k}
            else:
                key = {"k": k % 3}
                after = {"k": k % 3, "v": k}
            if rng.random() < 0.03:
                after = {c: v for c, v in after.items() if c not in key}  # lacks a column
            if rng.random() < 0.02:
                after = None
            ops.append(_op(kind, table, key, None if kind is OpType.DELETE else after))
    return ops


def _shard(path: Path) -> Shard:
    shard = Shard(path, 0)
    shard.begin()
    for definition in DEFINITIONS:
        shard.define(definition)
    shard.commit(0)
    return shard


def _contents(shard: Shard) -> dict[str, list[tuple]]:
    return {
        d.table: shard.conn.execute(f"SELECT rowid, * FROM {d.table} ORDER BY rowid").fetchall()
        for d in DEFINITIONS
    }


def one_by_one(shard: Shard, ops: list[Operation]) -> list[tuple[int, str]]:
    failed = []
    for i, op in enumerate(ops):
        try:
            shard.apply(op)
        except ApplyError as exc:
            failed.append((i, str(exc)))
    return failed


def test_bulk_equals_one_by_one_on_random_runs(tmp_path: Path):
    rng = random.Random(5)
    bulk, single = _shard(tmp_path / "bulk.sqlite"), _shard(tmp_path / "single.sqlite")
    statements: list[str] = []
    bulk.conn.set_trace_callback(statements.append)
    for batch in range(1, 30):
        ops = random_ops(rng, 60)
        bulk.begin()
        single.begin()
        failed = [(i, str(exc)) for i, exc in bulk.apply_all(ops)]
        assert failed == one_by_one(single, ops)
        bulk.commit(batch)
        single.commit(batch)
        assert _contents(bulk) == _contents(single)
        assert bulk.state() == single.state()  # the offset and the operation count agree
    kept = statements.count("SAVEPOINT cutline_bulk") - statements.count("ROLLBACK TO cutline_bulk")
    assert kept >= 10, "groups went the bulk way"
    assert statements.count("ROLLBACK TO cutline_bulk") > 5, "failing groups were redone"
    assert sum(len(rows) for rows in _contents(bulk).values()) > 50
    bulk.close()
    single.close()


def test_an_update_that_matches_no_row_fails_alone(tmp_path: Path):
    shard = _shard(tmp_path / "s.sqlite")
    shard.begin()
    rows = [{"id": i, "owner": "o", "balance": 0.0} for i in range(5)]
    assert shard.apply_all([_op(OpType.INSERT, "accounts", {"id": r["id"]}, r) for r in rows]) == []
    updates = [
        _op(OpType.UPDATE, "accounts", {"id": i}, {"id": i, "owner": "p", "balance": 1.0})
        for i in (0, 1, 99, 3, 4)
    ]
    failed = shard.apply_all(updates)
    assert [(i, "matched 0 rows" in str(exc)) for i, exc in failed] == [(2, True)]
    shard.commit(1)
    assert shard.conn.execute("SELECT id, owner FROM accounts ORDER BY id").fetchall() == [
        (0, "p"),
        (1, "p"),
        (2, "o"),
        (3, "p"),
        (4, "p"),
    ]
    assert shard.state().since_marker == 9
    shard.close()


def test_a_loose_key_is_never_updated_in_bulk(tmp_path: Path):
    """An UPDATE by a key that is not the table's PRIMARY KEY may match two rows."""
    shard = _shard(tmp_path / "s.sqlite")
    shard.begin()
    inserts = [_op(OpType.INSERT, "loose", {"k": 1}, {"k": 1, "v": v}) for v in (1, 2)]
    assert shard.apply_all(inserts) == []
    updates = [_op(OpType.UPDATE, "loose", {"k": k}, {"k": k, "v": 9}) for k in (1, 7)]
    failed = shard.apply_all(updates)
    assert [(i, "matched 2 rows" in str(e)) for i, e in failed] == [(0, True), (1, False)]
    shard.rollback()
    shard.close()


def test_groups_are_maximal_runs_of_one_table_and_kind():
    ops = [
        _op(OpType.INSERT, "a", {}, {}),
        _op(OpType.INSERT, "a", {}, {}),
        _op(OpType.INSERT, "b", {}, {}),
        _op(OpType.UPDATE, "b", {}, {}),
        _op(OpType.UPDATE, "b", {}, {}),
        _op(OpType.INSERT, "a", {}, {}),
    ]
    assert list(groups(ops)) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert list(groups([])) == []
