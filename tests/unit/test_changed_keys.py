"""Changed-key bookkeeping in the shards, and incrementals built from it.

Every incremental here is compared, resolved through its chain, with a full backup of the
same cut (types and rows): the bookkeeping may only make an incremental cheaper, never
different.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from backups.catalog import Backup
from backups.chain import resolved_database
from backups.verify import verify_backup
from consumers import changed_keys
from consumers.replica import Shard, shard_path
from consumers.snapshotter import CutPlan, write_backup
from producers.operations import message_key, partition_for
from producers.sqlite_changelog import quote_identifier
from schemas.records import Column, ConsistencyMarker, Operation, OpType, TableDefinition

SOURCE = "keys"
PARTITIONS = 2
ACCOUNTS = TableDefinition(
    SOURCE,
    "accounts",
    "CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT, balance REAL)",
    (Column("id", "INTEGER"), Column("owner", "TEXT"), Column("balance", "REAL")),
    ("id",),
)
LINES = TableDefinition(  # composite key, a name to quote
    SOURCE,
    "order lines",
    'CREATE TABLE "order lines"(order_id TEXT NOT NULL, line INTEGER NOT NULL, item TEXT, '
    "PRIMARY KEY (order_id, line))",
    (Column("order_id", "TEXT", True), Column("line", "INTEGER", True), Column("item", "TEXT")),
    ("order_id", "line"),
)
LOG = TableDefinition(  # rowid key: whole rows, multiset semantics
    SOURCE,
    "log",
    "CREATE TABLE log(level TEXT, msg TEXT)",
    (Column("level", "TEXT"), Column("msg", "TEXT")),
    ("rowid",),
)
CODES = TableDefinition(  # SQLite allows NULLs in this PRIMARY KEY
    SOURCE,
    "codes",
    "CREATE TABLE codes(code TEXT PRIMARY KEY, label TEXT)",
    (Column("code", "TEXT"), Column("label", "TEXT")),
    ("code",),
)
ALL = (ACCOUNTS, LINES, LOG, CODES)


class Replica:
    """Shards written through ``Shard.apply``, cut by markers, as replication does."""

    def __init__(self, root: Path):
        self.root = root
        self.shards = [Shard(shard_path(root, SOURCE, p), p) for p in range(PARTITIONS)]
        for s in self.shards:
            for d in ALL:
                s.define(d)
        self.offsets = dict.fromkeys(range(PARTITIONS), 0)
        self.seq = 0

    def apply(self, ops: list[Operation]) -> None:
        by_partition: dict[int, list[Operation]] = {p: [] for p in range(PARTITIONS)}
        for op in ops:
            key = [str(op.key[k]) for k in sorted(op.key)]
            by_partition[partition_for(message_key(op.table, key), PARTITIONS)].append(op)
        for p, s in enumerate(self.shards):
            if not by_partition[p]:
                continue
            s.release()
            s.begin()
            for op in by_partition[p]:
                s.apply(op)
            self.offsets[p] += len(by_partition[p])
            s.commit(self.offsets[p] - 1)

    def cut(self, marker_id: int) -> CutPlan:
        tables = tuple(d.table for d in ALL)
        marker = ConsistencyMarker(
            SOURCE, marker_id, 1_700_000_000_000_000 + marker_id, 1, PARTITIONS, (0,) * 2, tables
        )
        for p, s in enumerate(self.shards):
            s.reach_marker(marker, self.offsets[p], hold=True)
        return CutPlan(SOURCE, marker_id, marker.t1_us, PARTITIONS, dict(self.offsets), tables)

    def close(self) -> None:
        for s in self.shards:
            s.close()


def op(kind: OpType, table: TableDefinition, key: dict, after: dict | None = None) -> Operation:
    return Operation(SOURCE, 0, table.table, kind, key, None, after, 1)


def ins(table: TableDefinition, row: dict) -> Operation:
    key = {k: row[k] for k in table.key_columns}
    return op(OpType.INSERT, table, key, row)


def upd(table: TableDefinition, key: dict, row: dict) -> Operation:
    return op(OpType.UPDATE, table, key, row)


def dele(table: TableDefinition, key: dict) -> Operation:
    return op(OpType.DELETE, table, key)


def acc(i: int, owner: str = "", balance: float = 0.0) -> dict:
    return {"id": i, "owner": owner or f"owner {i}", "balance": balance or i * 1.5}


@pytest.fixture
def replica(tmp_path):
    r = Replica(tmp_path / "replica")
    yield r
    r.close()


def rows_of(path: Path, table: str) -> list[tuple]:
    db = duckdb.connect(str(path), read_only=True)
    try:
        return sorted(db.execute(f"SELECT * FROM {quote_identifier(table)}").fetchall(), key=repr)
    finally:
        db.close()


def assert_same_as_full(incremental: Backup, full: Backup) -> None:
    with resolved_database(incremental) as resolved:
        for table in full.tables:
            assert rows_of(resolved, table) == rows_of(full.duckdb_path, table), table
    assert [c["type"] for t in incremental.tables.values() for c in t["columns"]] == [
        c["type"] for t in full.tables.values() for c in t["columns"]
    ]
    assert {t: i["rows"] for t, i in incremental.tables.items()} == {
        t: i["rows"] for t, i in full.tables.items()
    }
    # a digest derived from the parent's is the full pass's digest of the same cut
    assert {t: i["digest"] for t, i in incremental.tables.items()} == {
        t: i["digest"] for t, i in full.tables.items()
    }
    assert verify_backup(incremental) == []


def both(replica: Replica, tmp_path: Path, marker_id: int) -> tuple[Backup, Backup]:
    """The cut as an incremental (the replica's own backups), then as a full, to compare.

    Incremental first: publishing a backup prunes the record, as the replica's one
    backups directory would; the full copy elsewhere is only the oracle.
    """
    plan = replica.cut(marker_id)
    inc = write_backup(replica.root, tmp_path / "inc", plan, writer="t", full_every=100)
    full = write_backup(replica.root, tmp_path / "full", plan, writer="t")
    return full, inc


def changed_entries(shard: Shard, table: str) -> list[tuple]:
    return shard.conn.execute(
        f"SELECT * FROM {changed_keys.changed_table(table)} ORDER BY 1, 2"
    ).fetchall()


def test_apply_records_changed_keys_tagged_with_the_last_marker(tmp_path):
    shard = Shard(shard_path(tmp_path, SOURCE, 0), 0)
    shard.define(ACCOUNTS)
    shard.begin()
    shard.apply(ins(ACCOUNTS, acc(1)))
    shard.apply(ins(ACCOUNTS, acc(2)))
    shard.commit(1)
    m = ConsistencyMarker(SOURCE, 4, 1, 1, 1, (0,), ("accounts",))
    shard.reach_marker(m, 2, hold=False)
    shard.begin()
    shard.apply(upd(ACCOUNTS, {"id": 2}, acc(2, "x")))
    shard.apply(dele(ACCOUNTS, {"id": 1}))
    shard.rollback()  # not committed: recorded nowhere
    assert changed_entries(shard, "accounts") == []
    shard.begin()
    shard.apply(upd(ACCOUNTS, {"id": 2}, acc(2, "x")))
    shard.apply(dele(ACCOUNTS, {"id": 1}))
    shard.apply(ins(ACCOUNTS, acc(9)))
    shard.commit(3)
    assert changed_entries(shard, "accounts") == [(1, 4), (2, 4), (9, 4)]
    tracked = shard.conn.execute(f"SELECT * FROM {changed_keys.TRACKED}").fetchall()
    assert tracked == [("accounts", 4, 0)]  # recording began at marker 4: it covers parent 4
    shard.close()


def test_nothing_is_recorded_before_the_first_marker_and_everything_after_it(tmp_path):
    """The initial load needs no record (no incremental has a parent before marker 1);
    the transaction that reaches the first marker starts it, so that marker is covered."""
    shard = Shard(shard_path(tmp_path, SOURCE, 0), 0)
    shard.define(ACCOUNTS)
    shard.begin()
    assert shard.apply_all([ins(ACCOUNTS, acc(i)) for i in range(1, 50)]) == []
    shard.commit(49)
    assert changed_entries(shard, "accounts") == []
    problem = changed_keys.coverage_problem(shard.conn, ACCOUNTS, 1)
    assert problem == "the shard had reached no marker since the table was defined"
    m = ConsistencyMarker(SOURCE, 1, 1, 1, 1, (49,), ("accounts",))
    shard.reach_marker(m, 50, hold=True)
    assert changed_keys.coverage_problem(shard.conn, ACCOUNTS, 1) is None
    shard.release()
    shard.begin()
    assert shard.apply_all([upd(ACCOUNTS, {"id": 7}, acc(7, "after"))]) == []
    shard.commit(51)
    assert changed_entries(shard, "accounts") == [(7, 1)]
    shard.close()


def test_incrementals_from_recorded_keys_equal_full_backups(replica, tmp_path):
    replica.apply(
        [ins(ACCOUNTS, acc(i)) for i in range(1, 41)]
        + [ins(LINES, {"order_id": f"o{i}", "line": i % 3, "item": f"i{i}"}) for i in range(20)]
        + [ins(LOG, {"level": "info", "msg": "start", "rowid": 1})]
        + [ins(CODES, {"code": "a", "label": "alpha"})]
    )
    _, first = both(replica, tmp_path, 1)
    assert first.kind == "full"

    # updates, a key change (capture sends it as delete + insert), deletes, a delete then
    # a re-insert of the same key
    replica.apply(
        [upd(ACCOUNTS, {"id": 3}, acc(3, "renamed"))]
        + [dele(ACCOUNTS, {"id": 4}), ins(ACCOUNTS, acc(104, "moved", 4 * 1.5))]
        + [dele(ACCOUNTS, {"id": i}) for i in (5, 6)]
        + [ins(ACCOUNTS, acc(6, "back again", 6.25))]
        + [
            upd(
                LINES,
                {"order_id": "o1", "line": 1},
                {"order_id": "o1", "line": 1, "item": "hundred"},
            )
        ]
        + [dele(LINES, {"order_id": "o2", "line": 2})]
        + [ins(LOG, {"level": "warn", "msg": "slow", "rowid": 2})]
        + [ins(CODES, {"code": None, "label": "unknown"})]
    )
    full, second = both(replica, tmp_path, 2)
    assert second.kind == "incremental"
    assert_same_as_full(second, full)
    tables = second.tables
    # changed: 3, 104, 6 (back with other values); deleted: 4, 5 (6 came back)
    assert (tables["accounts"]["changed"], tables["accounts"]["deleted"]) == (3, 2)
    assert tables["accounts"]["changes_from"] == "the keys the replica recorded as changed"
    assert tables["order lines"]["changes_from"].startswith("the keys")
    # rowid and NULL keys keep today's whole-table diff, and say so
    assert "rowid" in tables["log"]["changes_from"] and tables["log"]["match"] == "row"
    assert "NULL" in tables["codes"]["changes_from"]


def test_a_failed_cut_between_two_backups_loses_no_change(replica, tmp_path):
    replica.apply([ins(ACCOUNTS, acc(i)) for i in range(1, 21)])
    both(replica, tmp_path, 1)
    replica.apply([upd(ACCOUNTS, {"id": 2}, acc(2, "before the failed cut"))])
    replica.apply([dele(ACCOUNTS, {"id": 3})])
    replica.cut(2)  # reached, never backed up (a cut that failed)
    replica.apply([upd(ACCOUNTS, {"id": 4}, acc(4, "after it"))])
    full, third = both(replica, tmp_path, 3)
    assert third.parent_marker_id == 1
    assert third.tables["accounts"]["changes_from"].startswith("the keys")
    assert_same_as_full(third, full)
    assert third.tables["accounts"]["changed"] == 2 and third.tables["accounts"]["deleted"] == 1


def test_published_backups_prune_the_record_and_an_older_parent_falls_back(replica, tmp_path):
    replica.apply([ins(ACCOUNTS, acc(i)) for i in range(1, 11)])
    both(replica, tmp_path, 1)
    replica.apply([upd(ACCOUNTS, {"id": 1}, acc(1, "one"))])
    both(replica, tmp_path, 2)
    # backup 2 is published: the entry tagged 1 (before 2) is gone
    assert all(changed_entries(s, "accounts") == [] for s in replica.shards)
    replica.apply([upd(ACCOUNTS, {"id": 2}, acc(2, "two"))])
    # backup 2 removed from the incremental chain's directory: 3 builds on 1, older than
    # the record covers, so it diffs the whole table, and is still exact
    shutil.rmtree((tmp_path / "inc" / SOURCE / "marker-00000000000000000002"), ignore_errors=True)
    for path in (tmp_path / "inc").rglob("marker-*2"):
        shutil.rmtree(path)
    full, third = both(replica, tmp_path, 3)
    assert third.parent_marker_id == 1
    assert "recorded only since marker" in third.tables["accounts"]["changes_from"]
    assert_same_as_full(third, full)


def test_a_column_whose_type_might_change_falls_back_to_the_full_diff(replica, tmp_path):
    replica.apply([ins(ACCOUNTS, acc(i)) for i in range(1, 4)])
    replica.apply([ins(ACCOUNTS, {"id": 4, "owner": 12345, "balance": 1.0})])  # TEXT: '12345'
    replica.apply([ins(ACCOUNTS, {"id": 5, "owner": b"\x00", "balance": 1.0})])  # a blob
    both(replica, tmp_path, 1)  # owner: text and a blob, kept as text (fallback)
    replica.apply([upd(ACCOUNTS, {"id": 1}, acc(1, "changed"))])
    full, second = both(replica, tmp_path, 2)
    owner = second.tables["accounts"]
    assert "might not keep its type" in owner["changes_from"]  # P's VARCHAR was a fallback
    assert_same_as_full(second, full)
    replica.apply([dele(ACCOUNTS, {"id": 5})])  # no blob left: VARCHAR, no fallback
    full, third = both(replica, tmp_path, 3)
    assert_same_as_full(third, full)


def bulk_mix(inserted: range, updated: tuple[int, ...], deleted: int) -> list:
    """Inserts, then updates, then one delete: three executemany groups."""
    return (
        [ins(ACCOUNTS, acc(i)) for i in inserted]
        + [upd(ACCOUNTS, {"id": i}, acc(i, "bulk")) for i in updated]
        + [dele(ACCOUNTS, {"id": deleted})]
    )


def test_bulk_applied_writes_are_recorded_too(tmp_path):
    """``apply_all`` writes with executemany: the triggers record those rows the same."""
    shard = Shard(shard_path(tmp_path, SOURCE, 0), 0)
    shard.define(ACCOUNTS)
    shard.begin()
    errors = shard.apply_all(bulk_mix(inserted=range(1, 6), updated=(2, 3), deleted=4))
    shard.commit(7)
    assert errors == []
    m = ConsistencyMarker(SOURCE, 3, 1, 1, 1, (0,), ("accounts",))
    shard.reach_marker(m, 8, hold=False)
    shard.begin()
    errors = shard.apply_all(bulk_mix(inserted=range(6, 9), updated=(2, 3), deleted=5))
    shard.commit(14)
    assert errors == []
    assert changed_entries(shard, "accounts") == [(i, 3) for i in (2, 3, 5, 6, 7, 8)]
    shard.close()


@pytest.mark.parametrize("memory", ["1MB", "64MB"])
def test_the_parents_rows_are_looked_up_in_bounded_memory_or_again_without_a_bound(
    replica, tmp_path, monkeypatch, memory
):
    """A bound too small for the touched rows (1MB here, for ~3,000 rows of text) makes
    DuckDB refuse the lookup: it is done again unbounded, and the incremental is the same."""
    from backups.writer import keyed_changes

    bounds: list[str | None] = []
    within = keyed_changes._previous_rows_within

    def spy(parent, table, keys, touched, bound):
        bounds.append(bound)
        return within(parent, table, keys, touched, bound)

    monkeypatch.setattr(keyed_changes, "SCRATCH_MEMORY", memory)
    monkeypatch.setattr(keyed_changes, "_previous_rows_within", spy)
    filler = "x" * 400
    replica.apply([ins(ACCOUNTS, acc(i, f"{filler}{i}")) for i in range(1, 4001)])
    both(replica, tmp_path, 1)
    replica.apply([upd(ACCOUNTS, {"id": i}, acc(i, f"changed {i}")) for i in range(1, 3001)])
    full, second = both(replica, tmp_path, 2)
    assert second.kind == "incremental"
    assert second.tables["accounts"]["changes_from"] == "the keys the replica recorded as changed"
    assert_same_as_full(second, full)
    assert second.tables["accounts"]["changed"] == 3000
    assert bounds == ([memory, None] if memory == "1MB" else [memory])


def test_touched_keys_and_rows_read_in_many_slices_make_the_same_incremental(
    replica, tmp_path, monkeypatch
):
    """Slices of 3: every slice is checked, hashed and turned into Arrow on its own; the
    incremental, its counts and its derived digest are those of one slice."""
    slices: list[int] = []
    real = changed_keys._slices

    def counted(conn, sql, params):
        for rows in real(conn, sql, params):
            slices.append(len(rows))
            yield rows

    monkeypatch.setattr(changed_keys, "SLICE_ROWS", 3)
    monkeypatch.setattr(changed_keys, "_slices", counted)
    replica.apply([ins(ACCOUNTS, acc(i, f"owner {i}", i * 0.5)) for i in range(1, 61)])
    both(replica, tmp_path, 1)
    replica.apply(
        [upd(ACCOUNTS, {"id": i}, acc(i, f"renamed {i}", i * 2.0)) for i in range(1, 41, 2)]
        + [dele(ACCOUNTS, {"id": i}) for i in range(2, 20, 4)]
        + [ins(ACCOUNTS, acc(i, f"new {i}")) for i in range(61, 70)]
        + [ins(ACCOUNTS, acc(6, "back again", 6.25))]
    )
    slices.clear()
    full, second = both(replica, tmp_path, 2)
    assert second.tables["accounts"]["changes_from"] == "the keys the replica recorded as changed"
    assert_same_as_full(second, full)
    assert (second.tables["accounts"]["changed"], second.tables["accounts"]["deleted"]) == (30, 4)
    assert len(slices) > 2 * len(replica.shards) and max(slices) == 3


def test_a_type_change_in_any_slice_is_refused_by_the_keyed_path(replica, tmp_path, monkeypatch):
    """TEXT in the REAL column of one touched key only: its slice gives the column another
    type, so the keyed path refuses (the backup then finds the table's type changed and is
    written full), whichever slice holds that row."""
    from consumers import snapshotter

    answers: list[object] = []
    real = snapshotter.write_keyed_changes

    def spy(db, connections, definition, parent):
        answer = real(db, connections, definition, parent)
        if definition.table == "accounts":
            answers.append(answer)
        return answer

    monkeypatch.setattr(changed_keys, "SLICE_ROWS", 2)
    monkeypatch.setattr(snapshotter, "write_keyed_changes", spy)
    replica.apply([ins(ACCOUNTS, acc(i, f"owner {i}", float(i))) for i in range(1, 31)])
    both(replica, tmp_path, 1)
    replica.apply(
        [upd(ACCOUNTS, {"id": i}, acc(i, f"renamed {i}", i + 0.5)) for i in range(1, 30)]
        + [upd(ACCOUNTS, {"id": 30}, {"id": 30, "owner": "text", "balance": "not a number"})]
    )
    answers.clear()
    full, second = both(replica, tmp_path, 2)
    assert answers == ["column 'balance' might not keep its type DOUBLE"]
    assert second.kind == "full" and "column types" in second.manifest["kind_reason"]
    assert rows_of(second.duckdb_path, "accounts") == rows_of(full.duckdb_path, "accounts")
    assert verify_backup(second) == []


def test_a_whole_table_diff_staged_on_disk_in_renewed_connections_is_the_same_incremental(
    replica, tmp_path, monkeypatch
):
    """The whole-table diff (rowid keys, NULL keys, an old parent) stages the table in a
    scratch DuckDB file renewed every few rows, and diffs there under a memory bound; a
    diff that does not fit is run again unbounded. Either way: the full backup's result."""
    from backups.writer import staged_diff
    from backups.writer.duckdb_format import DuckDBFile
    from consumers import snapshotter

    replica.apply(
        [ins(ACCOUNTS, acc(i)) for i in range(1, 31)]
        + [ins(LOG, {"level": "info", "msg": f"m{i % 4}", "rowid": i}) for i in range(1, 41)]
        + [ins(CODES, {"code": f"c{i}", "label": "x"}) for i in range(10)]
    )
    both(replica, tmp_path, 1)
    renewed: list[Path] = []
    original_renew = DuckDBFile.renew

    def counted(self):
        renewed.append(self.path)
        return original_renew(self)

    monkeypatch.setattr(snapshotter, "BATCH_ROWS", 3)
    monkeypatch.setattr(DuckDBFile, "RENEW_ROWS", 5)
    monkeypatch.setattr(DuckDBFile, "renew", counted)
    # duplicates in a rowid table are whole-row multisets: one of two equal rows goes
    replica.apply(
        [ins(LOG, {"level": "info", "msg": "m1", "rowid": 41})]
        + [dele(LOG, {"rowid": i}) for i in (2, 3)]
        + [upd(LOG, {"rowid": 7}, {"level": "warn", "msg": "m3", "rowid": 7})]
        + [ins(CODES, {"code": None, "label": "unknown"}), dele(CODES, {"code": "c4"})]
    )
    full, second = both(replica, tmp_path, 2)
    assert second.kind == "incremental"
    assert_same_as_full(second, full)
    assert "rowid" in second.tables["log"]["changes_from"]
    assert "NULL" in second.tables["codes"]["changes_from"]
    assert (second.tables["log"]["changed"], second.tables["log"]["deleted"]) == (2, 3)
    staged = [p for p in renewed if p.name == "rows.duckdb"]
    assert len(staged) >= 8  # 41 + 10 rows staged in renewed connections, then one per diff
    assert not any(p.name == staged_diff.STAGED_DIR for p in second.path.rglob("*"))

    # a diff DuckDB cannot fit in DIFF_MEMORY runs again without the bound
    calls: list[str] = []
    real = staged_diff.write_changes

    def out_of_memory_once(conn, current, table, columns, keys):
        calls.append(table)
        if calls.count(table) == 1:
            conn.execute(f"CREATE TABLE {quote_identifier(table)} AS SELECT 1 AS partial")
            raise duckdb.OutOfMemoryException("failed to allocate data")
        return real(conn, current, table, columns, keys)

    monkeypatch.setattr(staged_diff, "write_changes", out_of_memory_once)
    replica.apply([dele(LOG, {"rowid": 9}), ins(CODES, {"code": "c99", "label": "new"})])
    full, third = both(replica, tmp_path, 3)
    assert third.kind == "incremental" and sorted(set(calls)) == ["codes", "log"]
    assert all(calls.count(t) == 2 for t in set(calls))
    assert_same_as_full(third, full)


@pytest.mark.parametrize("seed", range(6))
def test_the_sorted_uniqueness_check_agrees_with_distinct(seed):
    """``_unique`` (sort and compare neighbours, which spills) answers as DISTINCT does,
    NULLs equal, on one and two key columns, including a NULL key sorted first."""
    import random

    from backups.incremental import _unique

    rng = random.Random(seed)
    db = duckdb.connect()
    try:
        for _ in range(40):
            rows = [
                (rng.choice([None, *range(6)]), rng.choice([None, "a", "b"]))
                for _ in range(rng.randint(0, 7))
            ]
            db.execute("CREATE OR REPLACE TABLE k(a INTEGER, b VARCHAR)")
            if rows:
                db.executemany("INSERT INTO k VALUES (?, ?)", rows)
            for keys in (["a"], ["a", "b"]):
                cols = ", ".join(keys)
                distinct = db.execute(f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM k)")
                expected = distinct.fetchall()[0][0] == len(rows)
                assert _unique(db, "k", keys) is expected, (rows, keys)
        db.execute("CREATE OR REPLACE TABLE k(a INTEGER)")
        db.execute("INSERT INTO k VALUES (NULL)")  # the first row's lag() is NULL as well
        assert _unique(db, "k", ["a"]) is True
        db.execute("INSERT INTO k VALUES (NULL)")
        assert _unique(db, "k", ["a"]) is False
    finally:
        db.close()
