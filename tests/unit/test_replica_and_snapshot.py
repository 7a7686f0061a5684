"""Replica shards, the snapshotter (DuckDB + Avro + manifest), the catalog and read-only SQL."""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

import duckdb
import fastavro
import pytest

from backups.catalog import (
    MANIFEST,
    CatalogError,
    backup_dir_name,
    has_backup,
    list_backups,
    parse_instant,
    select_backup,
)
from backups.readers.query import QueryError, run_query
from backups.storage.local.durable import TEMP_PREFIX
from consumers import snapshotter
from consumers.replica import ApplyError, Shard, ShardState, shard_path
from consumers.snapshotter import CutPlan, SnapshotError, column_type, write_backup
from producers.markers import format_time
from producers.operations import message_key, partition_for
from producers.sqlite_changelog import quote_identifier
from schemas.records import Column, ConsistencyMarker, Operation, OpType, TableDefinition

SOURCE = "shop"
ODD = 'x"; DROP TABLE y; --'

ACCOUNTS = TableDefinition(
    SOURCE,
    "accounts",
    "CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT, balance REAL)",
    (Column("id", "INTEGER"), Column("owner", "TEXT"), Column("balance", "REAL")),
    ("id",),
)
LINES = TableDefinition(
    SOURCE,
    "lines",
    "CREATE TABLE lines(order_id TEXT, line INTEGER, item, PRIMARY KEY (line, order_id))",
    (Column("order_id", "TEXT"), Column("line", "INTEGER"), Column("item", "")),
    ("line", "order_id"),
)
ODD_TABLE = TableDefinition(
    SOURCE,
    ODD,
    'CREATE TABLE "x""; DROP TABLE y; --"("first name" TEXT NOT NULL, v BLOB)',
    (Column("first name", "TEXT", True), Column("v", "BLOB")),
    ("rowid",),
)
MISC = TableDefinition(
    SOURCE,
    "misc",
    "CREATE TABLE misc(id INTEGER PRIMARY KEY, qty INTEGER, price NUMERIC)",
    (Column("id", "INTEGER"), Column("qty", "INTEGER"), Column("price", "NUMERIC")),
    ("id",),
)


def insert(table: str, key: dict, after: dict, seq: int = 1) -> Operation:
    return Operation(SOURCE, seq, table, OpType.INSERT, key, None, after, 1)


def update(table: str, key: dict, before: dict, after: dict, seq: int = 1) -> Operation:
    return Operation(SOURCE, seq, table, OpType.UPDATE, key, before, after, 1)


def delete(table: str, key: dict, before: dict, seq: int = 1) -> Operation:
    return Operation(SOURCE, seq, table, OpType.DELETE, key, before, None, 1)


def marker(marker_id: int = 5, partitions: int = 3, tables=("accounts",)) -> ConsistencyMarker:
    return ConsistencyMarker(
        SOURCE, marker_id, 1_764_065_700_123_456, 77, partitions, (0,) * 3, tables
    )


@pytest.fixture
def shard(tmp_path: Path):
    s = Shard(shard_path(tmp_path / "replica", SOURCE, 0), 0)
    s.define(ACCOUNTS)
    yield s
    s.close()


def rows(conn, table: str) -> list[tuple]:
    return conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()


# -- shards ----------------------------------------------------------------------------------


def test_shard_path_layout(tmp_path):
    assert shard_path(tmp_path, "shop", 7) == tmp_path / "shop" / "partition-0007.sqlite"


def test_fresh_shard_state(shard):
    assert shard.state() == ShardState(-1, 0, 0, -1, False)


def test_apply_insert_update_delete_and_offset_commit_together(shard):
    shard.begin()
    shard.apply(insert("accounts", {"id": 1}, {"id": 1, "owner": "ann", "balance": 1.5}))
    shard.apply(insert("accounts", {"id": 2}, {"id": 2, "owner": "bob", "balance": 2.0}))
    shard.commit(10)
    assert rows(shard.conn, "accounts") == [(1, "ann", 1.5), (2, "bob", 2.0)]
    assert (shard.state().offset, shard.state().since_marker) == (10, 2)

    shard.begin()
    shard.apply(
        update(
            "accounts",
            {"id": 1},
            {"id": 1, "owner": "ann", "balance": 1.5},
            {"id": 1, "owner": "ann", "balance": 9.0},
        )
    )
    shard.apply(delete("accounts", {"id": 2}, {"id": 2, "owner": "bob", "balance": 2.0}))
    shard.commit(12)
    assert rows(shard.conn, "accounts") == [(1, "ann", 9.0)]
    assert (shard.state().offset, shard.state().since_marker) == (12, 4)


def test_offset_is_written_in_the_same_transaction(shard):
    """A second connection never sees the rows without the offset (or vice versa)."""
    import sqlite3

    observer = sqlite3.connect(shard.path, isolation_level=None)
    try:
        shard.begin()
        shard.apply(insert("accounts", {"id": 1}, {"id": 1, "owner": "a", "balance": 0.0}))
        assert observer.execute("SELECT count(*) FROM accounts").fetchone()[0] == 0
        assert observer.execute("SELECT offset FROM _cutline_state").fetchone()[0] == -1
        shard.commit(3)
        assert observer.execute("SELECT count(*) FROM accounts").fetchone()[0] == 1
        assert observer.execute("SELECT offset FROM _cutline_state").fetchone()[0] == 3
    finally:
        observer.close()


def test_rollback_leaves_neither_rows_nor_offset(shard):
    shard.begin()
    shard.apply(insert("accounts", {"id": 1}, {"id": 1, "owner": "a", "balance": 0.0}))
    shard.define(LINES)
    shard.rollback()
    assert rows(shard.conn, "accounts") == []
    assert shard.state() == ShardState(-1, 0, 0, -1, False)
    assert [d.table for d in shard.definitions()] == ["accounts"]
    # The forgotten table can be defined again.
    shard.define(LINES)
    assert [d.table for d in shard.definitions()] == ["accounts", "lines"]


def test_update_of_missing_row_raises_and_is_not_counted(shard):
    shard.begin()
    shard.apply(insert("accounts", {"id": 1}, {"id": 1, "owner": "a", "balance": 0.0}))
    with pytest.raises(ApplyError, match="matched 0 rows"):
        shard.apply(
            update("accounts", {"id": 42}, {"id": 42}, {"id": 42, "owner": "x", "balance": 1.0})
        )
    shard.commit(5)
    assert shard.state().since_marker == 1
    assert rows(shard.conn, "accounts") == [(1, "a", 0.0)]


def test_other_apply_errors(shard):
    shard.begin()
    shard.apply(insert("accounts", {"id": 1}, {"id": 1, "owner": "a", "balance": 0.0}))
    with pytest.raises(ApplyError, match="matched 0 rows"):
        shard.apply(delete("accounts", {"id": 9}, {"id": 9}))
    with pytest.raises(ApplyError, match="failed"):
        shard.apply(insert("accounts", {"id": 1}, {"id": 1, "owner": "dup", "balance": 0.0}))
    with pytest.raises(ApplyError, match="never defined"):
        shard.apply(insert("nope", {"id": 1}, {"id": 1}))
    with pytest.raises(ApplyError, match="lacks column 'balance'"):
        shard.apply(insert("accounts", {"id": 2}, {"id": 2, "owner": "x"}))
    with pytest.raises(ApplyError, match="without a row image"):
        shard.apply(Operation(SOURCE, 1, "accounts", OpType.INSERT, {"id": 3}, None, None, 1))
    shard.commit(1)
    assert shard.state().since_marker == 1


def test_rowid_and_composite_key_tables(tmp_path):
    s = Shard(tmp_path / "s.sqlite", 0)
    try:
        s.define(ODD_TABLE)
        s.define(LINES)
        s.begin()
        s.apply(insert(ODD, {"rowid": 7}, {"first name": "zoë", "v": b"\x00", "rowid": 7}))
        s.apply(
            insert("lines", {"line": 1, "order_id": "o"}, {"order_id": "o", "line": 1, "item": 1})
        )
        s.apply(
            update(
                "lines",
                {"line": 1, "order_id": "o"},
                {},
                {"order_id": "o", "line": 1, "item": "two"},
            )
        )
        s.apply(update(ODD, {"rowid": 7}, {}, {"first name": "zoe", "v": None, "rowid": 7}))
        s.commit(4)
        assert s.conn.execute(f"SELECT rowid, * FROM {quote_identifier(ODD)}").fetchall() == [
            (7, "zoe", None)
        ]
        assert rows(s.conn, "lines") == [("o", 1, "two")]
        assert s.state().since_marker == 4
    finally:
        s.close()


def test_define_again_is_a_no_op_and_a_new_layout_recreates_the_table(shard):
    shard.begin()
    shard.define(ACCOUNTS)
    shard.apply(insert("accounts", {"id": 1}, {"id": 1, "owner": "a", "balance": 0.5}))
    shard.commit(0)
    # capture sends every definition at each start (any source name): nothing changes
    shard.begin()
    shard.define(ACCOUNTS)
    shard.define(dataclasses.replace(ACCOUNTS, source="other"))
    shard.commit(1)
    assert shard.conn.execute("SELECT * FROM accounts").fetchall() == [(1, "a", 0.5)]
    # a re-installed table (schema change on the primary): dropped and created anew;
    # its content follows as INSERTs, which use the new layout
    changed = TableDefinition(
        SOURCE,
        "accounts",
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT, email TEXT)",
        (Column("id", "INTEGER"), Column("owner", "TEXT"), Column("email", "TEXT")),
        ("id",),
    )
    with pytest.raises(ApplyError, match="not marked as re-installed"):
        shard.define(changed)  # never silently: only capture's re-install changes a layout
    shard.begin()
    shard.define(dataclasses.replace(changed, reinstalled=True))
    shard.apply(insert("accounts", {"id": 1}, {"id": 1, "owner": "a", "email": "a@x"}))
    shard.commit(2)
    assert shard.conn.execute("SELECT * FROM accounts").fetchall() == [(1, "a", "a@x")]
    assert shard.definitions() == [dataclasses.replace(changed, source="")]
    # a rolled-back re-definition leaves the old layout and its statements in place
    shard.begin()
    shard.define(dataclasses.replace(ACCOUNTS, reinstalled=True))
    shard.rollback()
    shard.begin()
    shard.apply(insert("accounts", {"id": 2}, {"id": 2, "owner": "b", "email": None}))
    shard.commit(3)
    assert len(shard.conn.execute("SELECT * FROM accounts").fetchall()) == 2
    with pytest.raises(ApplyError, match="cannot create table"):
        shard.define(TableDefinition(SOURCE, "bad", "CREATE TABLE (", (), ("rowid",)))


def test_reach_marker_release_and_skip(shard):
    shard.begin()
    shard.apply(insert("accounts", {"id": 1}, {"id": 1, "owner": "a", "balance": 0.0}))
    shard.commit(3)
    m = marker(tables=("accounts", ODD))
    shard.reach_marker(m, 4, hold=True)
    state = shard.state()
    assert state == ShardState(
        offset=4,
        since_marker=0,
        marker_id=5,
        marker_offset=4,
        held=True,
        marker_t1_us=m.t1_us,
        marker_partitions=3,
        marker_tables=("accounts", ODD),
    )
    shard.release()
    assert not shard.state().held
    assert shard.state().marker_id == 5
    shard.skip(9)
    assert shard.state().offset == 9
    shard.skip(2)  # never moves backwards
    assert shard.state().offset == 9


def test_reopening_a_shard_keeps_state_and_definitions(tmp_path):
    path = shard_path(tmp_path, SOURCE, 2)
    s = Shard(path, 2)
    s.define(ACCOUNTS)
    s.define(ODD_TABLE)
    s.begin()
    s.apply(insert("accounts", {"id": 1}, {"id": 1, "owner": "a", "balance": 0.5}))
    s.commit(8)
    s.reach_marker(marker(), 9, hold=True)
    before = s.state()
    s.close()

    again = Shard(path, 2)
    try:
        assert again.state() == before
        defs = {d.table: d for d in again.definitions()}
        assert set(defs) == {"accounts", ODD}
        for original in (ACCOUNTS, ODD_TABLE):
            got = defs[original.table]
            assert (got.ddl, got.columns, got.key_columns) == (
                original.ddl,
                original.columns,
                original.key_columns,
            )
        assert rows(again.conn, "accounts") == [(1, "a", 0.5)]
        # Definitions are usable straight away.
        again.begin()
        again.apply(insert(ODD, {"rowid": 1}, {"first name": "n", "v": None, "rowid": 1}))
        again.commit(10)
        assert again.state().since_marker == 1
    finally:
        again.close()


# -- snapshotter -----------------------------------------------------------------------------

N = 3
ACCOUNT_ROWS = [(i, f"owner {i}", i * 1.5) for i in range(1, 31)]
ODD_ROWS = [(f"name, {i} '", bytes([i, 255 - i]), i) for i in range(1, 8)]  # + rowid
MISC_ROWS = [(1, 5, 2), (2, "n/a", 2.5), (3, None, None), (4, -7, "cheap")]


def _key_literal(value) -> str:
    return repr(value) if not isinstance(value, str) else "'" + value.replace("'", "''") + "'"


def build_replica(replica: Path, *, hold=True, marker_id=5) -> tuple[CutPlan, list[Shard]]:
    shards = [Shard(shard_path(replica, SOURCE, p), p) for p in range(N)]
    ops: dict[int, list[Operation]] = {p: [] for p in range(N)}
    for r in ACCOUNT_ROWS:
        op = insert("accounts", {"id": r[0]}, dict(zip(ACCOUNTS.column_names, r, strict=True)))
        ops[partition_for(message_key("accounts", [str(r[0])]), N)].append(op)
    for name, blob, rowid in ODD_ROWS:
        after = {"first name": name, "v": blob, "rowid": rowid}
        ops[partition_for(message_key(ODD, [str(rowid)]), N)].append(
            insert(ODD, {"rowid": rowid}, after)
        )
    for r in MISC_ROWS:
        op = insert("misc", {"id": r[0]}, dict(zip(MISC.column_names, r, strict=True)))
        ops[partition_for(message_key("misc", [str(r[0])]), N)].append(op)
    assert all(ops[p] for p in range(N)), "every shard should hold some rows"
    offsets = {}
    m = ConsistencyMarker(
        SOURCE, marker_id, 1_764_065_700_123_456, 99, N, (0,) * N, ("accounts", ODD, "misc")
    )
    for p, s in enumerate(shards):
        for d in (ACCOUNTS, ODD_TABLE, MISC):
            s.define(d)
        s.begin()
        for op in ops[p]:
            s.apply(op)
        s.commit(len(ops[p]) - 1)
        offsets[p] = len(ops[p])
        s.reach_marker(m, offsets[p], hold=hold)
    plan = CutPlan(SOURCE, marker_id, m.t1_us, N, offsets, m.tables, alignment_s=0.25)
    return plan, shards


@pytest.fixture
def replica(tmp_path):
    plan, shards = build_replica(tmp_path / "replica")
    yield tmp_path / "replica", plan, shards
    for s in shards:
        s.close()


@pytest.fixture
def backup(replica, tmp_path):
    replica_dir, plan, _ = replica
    return write_backup(replica_dir, tmp_path / "backups", plan, writer="unit-test")


def test_backup_is_published_under_the_catalog_name(backup, tmp_path):
    assert backup.path == tmp_path / "backups" / SOURCE / backup_dir_name(5)
    assert backup.path.name == "marker-0000000005"
    assert (backup.path / MANIFEST).is_file()
    assert has_backup(tmp_path / "backups", SOURCE, 5)
    leftovers = [p.name for p in (tmp_path / "backups" / SOURCE).iterdir()]
    assert leftovers == ["marker-0000000005"]
    assert not any(p.name.startswith(TEMP_PREFIX) for p in backup.path.rglob("*"))


def test_duckdb_holds_the_union_of_shard_rows(backup):
    db = duckdb.connect(str(backup.duckdb_path), read_only=True)
    try:
        got = db.execute("SELECT * FROM accounts ORDER BY id").fetchall()
        assert got == ACCOUNT_ROWS
        cols = [d[0] for d in db.execute("SELECT * FROM accounts LIMIT 0").description]
        assert cols == ["id", "owner", "balance"]
        odd = db.execute(f"SELECT * FROM {quote_identifier(ODD)}").fetchall()
        assert sorted(odd) == sorted((n, b) for n, b, _ in ODD_ROWS)
        types = dict(
            db.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'accounts'"
            ).fetchall()
        )
        assert types == {"id": "BIGINT", "owner": "VARCHAR", "balance": "DOUBLE"}
    finally:
        db.close()


def test_mixed_column_is_kept_as_text_with_nothing_dropped(backup):
    db = duckdb.connect(str(backup.duckdb_path), read_only=True)
    try:
        got = db.execute("SELECT id, qty, price FROM misc ORDER BY id").fetchall()
        types = dict(
            db.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'misc'"
            ).fetchall()
        )
    finally:
        db.close()
    assert types["qty"] == "VARCHAR"
    assert [r[1] for r in got] == ["5", "n/a", None, "-7"]
    assert types["price"] == "VARCHAR"
    assert [r[2] for r in got] == ["2", "2.5", None, "cheap"]


def test_duckdb_metadata_tables(backup, replica):
    _, plan, _ = replica
    db = duckdb.connect(str(backup.duckdb_path), read_only=True)
    try:
        meta = db.execute(
            "SELECT source, marker_id, epoch_us(t1), partitions, offsets, writer "
            "FROM _cutline_backup"
        ).fetchall()
        tables = db.execute(
            "SELECT table_name, ddl, key_columns, row_count, avro_file FROM _cutline_tables "
            "ORDER BY table_name"
        ).fetchall()
    finally:
        db.close()
    assert len(meta) == 1
    source, marker_id, t1_us, partitions, offsets, writer = meta[0]
    assert (source, marker_id, t1_us, partitions, writer) == (SOURCE, 5, plan.t1_us, N, "unit-test")
    assert json.loads(offsets) == {str(p): o for p, o in plan.offsets.items()}
    by_name = {t[0]: t for t in tables}
    assert by_name["accounts"][1:4] == (ACCOUNTS.ddl, "id", len(ACCOUNT_ROWS))
    assert by_name[ODD][1:4] == (ODD_TABLE.ddl, "rowid", len(ODD_ROWS))
    assert by_name["misc"][3] == len(MISC_ROWS)
    for name, *_rest, avro in tables:
        assert (backup.path / avro).is_file()
        assert avro == backup.manifest["tables"][name]["avro"]


def _read_avro(backup, table):
    with open(backup.avro_path(table), "rb") as f:
        reader = fastavro.reader(f)
        records = list(reader)
        return reader.metadata, reader.writer_schema, records


def test_avro_files_hold_the_same_rows_and_header_metadata(backup, replica):
    _, plan, _ = replica
    meta, schema, records = _read_avro(backup, "accounts")
    assert sorted((r["id"], r["owner"], r["balance"]) for r in records) == ACCOUNT_ROWS
    assert meta["cutline.marker_id"] == "5"
    assert meta["cutline.source"] == SOURCE
    assert meta["cutline.t1"] == format_time(plan.t1_us)
    assert datetime.fromisoformat(meta["cutline.t2"]) >= datetime.fromisoformat(meta["cutline.t1"])
    assert meta["cutline.table"] == "accounts"
    assert json.loads(meta["cutline.columns"]) == ["id", "owner", "balance"]

    meta, schema, records = _read_avro(backup, ODD)
    fields = {f["cutline.column"]: f["name"] for f in schema["fields"]}
    assert set(fields) == {"first name", "v"}
    assert fields["first name"] == "first_name"
    got = sorted((r[fields["first name"]], r[fields["v"]]) for r in records)
    assert got == sorted((n, b) for n, b, _ in ODD_ROWS)
    assert meta["cutline.table"] == ODD

    _, _, records = _read_avro(backup, "misc")
    assert sorted((r["id"], r["qty"]) for r in records) == [
        (1, "5"),
        (2, "n/a"),
        (3, None),
        (4, "-7"),
    ]


def test_avro_header_t2_is_the_backups_t2(backup):
    meta, _, _ = _read_avro(backup, "accounts")
    assert meta["cutline.t2"] == backup.manifest["t2"]


def test_manifest_lists_files_with_matching_sha256_and_size(backup, replica):
    _, plan, _ = replica
    manifest = json.loads((backup.path / MANIFEST).read_text())
    assert manifest == backup.manifest
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {
        str(p.relative_to(backup.path))
        for p in backup.path.rglob("*")
        if p.is_file() and p.name != MANIFEST
    }
    assert set(listed) == on_disk
    assert "backup.duckdb" in listed
    for rel, entry in listed.items():
        data = (backup.path / rel).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["marker_id"] == 5
    assert manifest["source"] == SOURCE
    assert manifest["t1_us"] == plan.t1_us
    assert manifest["t1"] == format_time(plan.t1_us)
    assert manifest["t2_us"] >= plan.t1_us
    assert manifest["partitions"] == N
    assert manifest["offsets"] == {str(p): o for p, o in plan.offsets.items()}
    assert manifest["alignment_ms"] == 250.0
    assert {t: m["rows"] for t, m in manifest["tables"].items()} == {
        "accounts": len(ACCOUNT_ROWS),
        ODD: len(ODD_ROWS),
        "misc": len(MISC_ROWS),
    }
    assert backup.summary()["tables"] == {
        "accounts": len(ACCOUNT_ROWS),
        ODD: len(ODD_ROWS),
        "misc": len(MISC_ROWS),
    }


def _assert_nothing_published(backups: Path):
    parent = backups / SOURCE
    children = list(parent.iterdir()) if parent.exists() else []
    assert children == [], children
    assert list_backups(backups) == []


def test_shard_not_held_is_snapshot_error(replica, tmp_path):
    replica_dir, plan, shards = replica
    shards[1].release()
    with pytest.raises(SnapshotError, match="partition 1 is not held at marker 5"):
        write_backup(replica_dir, tmp_path / "backups", plan, writer="t")
    _assert_nothing_published(tmp_path / "backups")


def test_shard_at_another_offset_is_snapshot_error(replica, tmp_path):
    replica_dir, plan, _ = replica
    wrong = CutPlan(
        plan.source,
        plan.marker_id,
        plan.t1_us,
        plan.partitions,
        {**plan.offsets, 2: plan.offsets[2] + 1},
        plan.tables,
    )
    with pytest.raises(SnapshotError, match="partition 2"):
        write_backup(replica_dir, tmp_path / "backups", wrong, writer="t")
    _assert_nothing_published(tmp_path / "backups")


def test_shard_at_another_marker_is_snapshot_error(replica, tmp_path):
    replica_dir, plan, shards = replica
    shards[0].reach_marker(marker(marker_id=6), plan.offsets[0], hold=True)
    with pytest.raises(SnapshotError, match="partition 0"):
        write_backup(replica_dir, tmp_path / "backups", plan, writer="t")
    _assert_nothing_published(tmp_path / "backups")


def test_missing_shard_is_snapshot_error(replica, tmp_path):
    replica_dir, plan, _ = replica
    bigger = CutPlan(
        plan.source, plan.marker_id, plan.t1_us, N + 1, {**plan.offsets, N: 0}, plan.tables
    )
    with pytest.raises(SnapshotError, match="missing"):
        write_backup(replica_dir, tmp_path / "backups", bigger, writer="t")
    _assert_nothing_published(tmp_path / "backups")


def test_undefined_table_is_snapshot_error(replica, tmp_path):
    replica_dir, plan, _ = replica
    more = CutPlan(
        plan.source, plan.marker_id, plan.t1_us, N, plan.offsets, (*plan.tables, "ghost")
    )
    with pytest.raises(SnapshotError, match="ghost"):
        write_backup(replica_dir, tmp_path / "backups", more, writer="t")
    _assert_nothing_published(tmp_path / "backups")


def test_unreadable_shard_table_is_snapshot_error_and_leaves_nothing(replica, tmp_path):
    replica_dir, plan, shards = replica
    shards[2].conn.execute("DROP TABLE misc")
    raised: BaseException | None = None
    try:
        write_backup(replica_dir, tmp_path / "backups", plan, writer="t")
    except Exception as exc:
        raised = exc
    leftovers = [p.name for p in (tmp_path / "backups" / SOURCE).iterdir()]
    assert isinstance(raised, SnapshotError), repr(raised)
    assert leftovers == []


def test_failure_while_writing_discards_the_temp_dir(replica, tmp_path, monkeypatch):
    replica_dir, plan, _ = replica

    def boom(temp, final):
        raise OSError("disk full")

    monkeypatch.setattr(snapshotter, "publish_directory", boom)
    with pytest.raises(SnapshotError, match="disk full"):
        write_backup(replica_dir, tmp_path / "backups", plan, writer="t")
    _assert_nothing_published(tmp_path / "backups")


def test_backup_of_empty_tables(tmp_path):
    s = Shard(shard_path(tmp_path / "r", SOURCE, 0), 0)
    try:
        s.define(ACCOUNTS)
        s.reach_marker(marker(marker_id=1, partitions=1), 0, hold=True)
        plan = CutPlan(SOURCE, 1, 10, 1, {0: 0}, ("accounts",))
        b = write_backup(tmp_path / "r", tmp_path / "b", plan, writer="t")
    finally:
        s.close()
    assert b.manifest["tables"]["accounts"]["rows"] == 0
    columns, result = run_query(b, "SELECT count(*) AS n FROM accounts")
    assert (columns, result) == (["n"], [(0,)])
    _, _, records = _read_avro(b, "accounts")
    assert records == []


def test_backup_keeps_integers_beyond_2_53_exact(tmp_path):
    """A NUMERIC (or untyped) column mixing a big int with floats is backed up as text, not
    rounded to a DOUBLE; a REAL column holding only small ints and floats stays DOUBLE.
    (A REAL column cannot hold 2**53 + 1 at all: SQLite itself stores it as a float.)"""
    big = 2**53 + 1
    table = TableDefinition(
        SOURCE,
        "prices",
        "CREATE TABLE prices(id INTEGER PRIMARY KEY, exact NUMERIC, loose, small REAL)",
        (
            Column("id", "INTEGER"),
            Column("exact", "NUMERIC"),
            Column("loose", ""),
            Column("small", "REAL"),
        ),
        ("id",),
    )
    data = [(1, big, -big, 1), (2, 0.5, 0.25, 2.5), (3, None, None, None)]
    s = Shard(shard_path(tmp_path / "r", SOURCE, 0), 0)
    try:
        s.define(table)
        s.begin()
        for r in data:
            s.apply(insert("prices", {"id": r[0]}, dict(zip(table.column_names, r, strict=True))))
        s.commit(len(data) - 1)
        s.reach_marker(marker(marker_id=1, partitions=1), len(data), hold=True)
        plan = CutPlan(SOURCE, 1, 10, 1, {0: len(data)}, ("prices",))
        b = write_backup(tmp_path / "r", tmp_path / "b", plan, writer="t")
    finally:
        s.close()
    db = duckdb.connect(str(b.duckdb_path), read_only=True)
    try:
        got = db.execute("SELECT id, exact, loose, small FROM prices ORDER BY id").fetchall()
        types = dict(
            db.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'prices'"
            ).fetchall()
        )
    finally:
        db.close()
    assert types == {"id": "BIGINT", "exact": "VARCHAR", "loose": "VARCHAR", "small": "DOUBLE"}
    assert [r[1] for r in got] == [str(big), "0.5", None]
    assert [r[2] for r in got] == [str(-big), "0.25", None]
    assert int(got[0][1]) == big and int(got[0][2]) == -big
    assert [r[3] for r in got] == [1.0, 2.5, None]
    _, _, records = _read_avro(b, "prices")
    assert sorted((r["id"], r["exact"]) for r in records if r["exact"] is not None) == [
        (1, str(big)),
        (2, "0.5"),
    ]


# -- column types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "values", "expected"),
    [
        ("INTEGER", [], "BIGINT"),
        ("BIGINT", [1, None, 2], "BIGINT"),
        ("REAL", [], "DOUBLE"),
        ("DOUBLE PRECISION", [1, 2], "DOUBLE"),
        ("FLOAT", [1.5], "DOUBLE"),
        ("NUMERIC", [], "DOUBLE"),
        ("DECIMAL(10,2)", [1, 2.5], "DOUBLE"),
        ("TEXT", [], "VARCHAR"),
        ("VARCHAR(20)", ["a", None], "VARCHAR"),
        ("CLOB", ["a"], "VARCHAR"),
        ("BLOB", [], "BLOB"),
        ("BLOB", [b"\x00"], "BLOB"),
        ("", [], "VARCHAR"),
        ("", [b"\x01"], "BLOB"),
        ("", [None, None], "VARCHAR"),
        ("INTEGER", ["n/a", 5], "VARCHAR"),
        ("INTEGER", [1.5, 5], "DOUBLE"),
    ],
)
def test_column_type(declared, values, expected):
    assert column_type(declared, values).duckdb == expected


def test_affinity_rules():
    assert snapshotter.affinity("INT") == "INTEGER"
    assert snapshotter.affinity("POINT") == "INTEGER"  # 'INT' wins, as in SQLite
    assert snapshotter.affinity("CHARINT") == "INTEGER"
    assert snapshotter.affinity("NVARCHAR(10)") == "TEXT"
    assert snapshotter.affinity("") == "BLOB"
    assert snapshotter.affinity("FLOATING POINT") == "INTEGER"
    assert snapshotter.affinity("DOUBLE") == "REAL"
    assert snapshotter.affinity("DATE") == "NUMERIC"


def test_text_value_in_integer_column_becomes_text_nothing_dropped():
    values = [1, "n/a", None, -(2**63), 2.5, b"\x00\xff"]
    ctype = column_type("INTEGER", values)
    assert ctype.duckdb == "VARCHAR" and ctype.avro == "string"
    converted = [ctype.convert(v) for v in values]
    assert len(converted) == len(values)
    assert converted == ["1", "n/a", None, str(-(2**63)), "2.5", "00ff"]
    # Every non-null value stays non-null and recoverable from its text.
    assert int(converted[3]) == values[3]
    assert float(converted[4]) == values[4]


def test_double_conversion_keeps_int_and_float_values():
    ctype = column_type("NUMERIC", [1, 2.5, None])
    assert [ctype.convert(v) for v in [1, 2.5, None]] == [1.0, 2.5, None]


def _converted(ctype, values):
    return [v if ctype.convert is None else ctype.convert(v) for v in values]


@pytest.mark.parametrize("declared", ["NUMERIC", "REAL", "DECIMAL(30,0)", "DOUBLE"])
@pytest.mark.parametrize("big", [2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63)])
def test_mixed_int_float_column_keeps_large_integers_exact_as_text(declared, big):
    values = [big, 0.5, None, 3]
    ctype = column_type(declared, values)
    assert (ctype.duckdb, ctype.avro) == ("VARCHAR", "string")
    data = _converted(ctype, values)
    # The integer is kept digit for digit (a DOUBLE would round it); nothing is dropped.
    assert data[0] == str(big) and int(data[0]) == big
    assert float(data[1]) == 0.5 and data[2] is None and int(data[3]) == 3


@pytest.mark.parametrize("big", [2**53 + 1, -(2**53) - 1])
def test_real_column_of_only_large_ints_keeps_them_exact_as_text(big):
    values = [big, 1]
    ctype = column_type("REAL", values)
    assert ctype.duckdb == "VARCHAR"
    assert _converted(ctype, values) == [str(big), "1"]


@pytest.mark.parametrize("declared", ["NUMERIC", "REAL"])
def test_mixed_int_float_column_of_small_ints_stays_double(declared):
    values = [2**53, -(2**53), 1, 0.5, None]
    ctype = column_type(declared, values)
    assert (ctype.duckdb, ctype.avro) == ("DOUBLE", "double")
    data = _converted(ctype, values)
    assert data == [float(2**53), float(-(2**53)), 1.0, 0.5, None]
    assert all(int(d) == v for d, v in zip(data[:3], values[:3], strict=True))


def test_integer_column_with_large_ints_stays_bigint():
    assert column_type("INTEGER", [2**63 - 1, -(2**63), 1]).duckdb == "BIGINT"


def test_avro_names_are_sanitized_and_unique():
    assert snapshotter.avro_names(["a b", "a_b", "1x", "", "é", "ok"]) == [
        "a_b",
        "a_b_2",
        "_1x",
        "_",
        "__2",
        "ok",
    ]


# -- catalog ---------------------------------------------------------------------------------


def fake_backup(root: Path, source: str, marker_id: int, t1: str) -> Path:
    path = root / source / backup_dir_name(marker_id)
    path.mkdir(parents=True)
    t1_us = parse_instant(t1)
    manifest = {
        "format": 1,
        "source": source,
        "marker_id": marker_id,
        "t1": format_time(t1_us),
        "t1_us": t1_us,
        "t2": format_time(t1_us + 1),
        "t2_us": t1_us + 1,
        "duckdb": "backup.duckdb",
        "tables": {"t": {"rows": marker_id, "avro": "avro/t.avro"}},
        "files": [],
    }
    (path / MANIFEST).write_text(json.dumps(manifest))
    return path


@pytest.fixture
def catalog(tmp_path):
    root = tmp_path / "backups"
    fake_backup(root, "shop", 10, "2026-01-01T10:00:00Z")
    fake_backup(root, "shop", 2, "2026-01-01T08:00:00Z")
    fake_backup(root, "shop", 7, "2026-01-01T09:00:00Z")
    fake_backup(root, "bank", 3, "2026-01-01T07:00:00Z")
    (root / "shop" / f"{TEMP_PREFIX}marker-0000000011-abcd").mkdir()
    (root / "shop" / "marker-0000000012").mkdir()  # no manifest: not published
    (root / "shop" / "marker-0000000013").mkdir()
    (root / "shop" / "marker-0000000013" / MANIFEST).write_text("{not json")
    return root


def test_list_backups_orders_by_source_then_marker(catalog):
    got = [(b.source, b.marker_id) for b in list_backups(catalog)]
    assert got == [("bank", 3), ("shop", 2), ("shop", 7), ("shop", 10)]
    assert [b.marker_id for b in list_backups(catalog, "shop")] == [2, 7, 10]
    assert list_backups(catalog, "nobody") == []
    assert list_backups(catalog / "does-not-exist") == []


def test_list_backups_on_a_file_is_catalog_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CatalogError, match="not a directory"):
        list_backups(f)


def test_select_backup_by_marker(catalog):
    assert select_backup(catalog, "shop", marker_id=7).marker_id == 7
    with pytest.raises(CatalogError, match="no backup for marker 8") as info:
        select_backup(catalog, "shop", marker_id=8)
    assert "2, 7, 10" in str(info.value)


def test_select_backup_as_of_picks_newest_with_t1_at_or_before(catalog):
    assert select_backup(catalog, "shop", as_of="2026-01-01T09:00:00Z").marker_id == 7
    assert select_backup(catalog, "shop", as_of="2026-01-01T08:59:59.999999Z").marker_id == 2
    assert select_backup(catalog, "shop", as_of="2026-01-01T11:00:00+01:00").marker_id == 10
    assert select_backup(catalog, "shop", as_of="2030-01-01").marker_id == 10
    with pytest.raises(CatalogError, match="is as old as") as info:
        select_backup(catalog, "shop", as_of="2026-01-01T07:59:59Z")
    assert "marker 2" in str(info.value)


def test_select_backup_default_is_newest(catalog):
    assert select_backup(catalog, "shop").marker_id == 10
    assert select_backup(catalog, "bank").marker_id == 3


def test_select_backup_without_backups_says_what_to_do(tmp_path):
    with pytest.raises(CatalogError, match="no backups of source 'shop'") as info:
        select_backup(tmp_path, "shop")
    assert "cutline mark" in str(info.value)


def test_parse_instant_accepts_z_offsets_and_naive_utc():
    z = parse_instant("2026-11-25T10:15:00Z")
    assert z == calendar.timegm((2026, 11, 25, 10, 15, 0)) * 1_000_000
    assert parse_instant("2026-11-25T10:15:00") == z
    assert parse_instant("2026-11-25T11:15:00+01:00") == z
    assert parse_instant("2026-11-25T10:15:00.000001Z") == z + 1
    assert parse_instant("2026-11-25") == z - (10 * 3600 + 15 * 60) * 1_000_000


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01T00:00:00Z", "10:15"])
def test_parse_instant_rejects_garbage(text):
    with pytest.raises(CatalogError, match="ISO-8601"):
        parse_instant(text)


# -- query -----------------------------------------------------------------------------------


def test_run_query_returns_columns_and_rows(backup):
    columns, result = run_query(
        backup, "SELECT count(*) AS n, sum(balance) AS total FROM accounts WHERE id <= 4"
    )
    assert columns == ["n", "total"]
    assert result == [(4, 1.5 + 3.0 + 4.5 + 6.0)]
    columns, result = run_query(backup, "SELECT marker_id, source FROM _cutline_backup")
    assert (columns, result) == (["marker_id", "source"], [(5, SOURCE)])


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO accounts VALUES (999, 'x', 0)",
        "DELETE FROM accounts",
        "CREATE TABLE t(a INTEGER)",
    ],
)
def test_run_query_refuses_writes(backup, sql):
    digest = hashlib.sha256(backup.duckdb_path.read_bytes()).hexdigest()
    with pytest.raises(QueryError, match="backups are read-only"):
        run_query(backup, sql)
    assert hashlib.sha256(backup.duckdb_path.read_bytes()).hexdigest() == digest


def test_run_query_reports_sql_errors(backup):
    with pytest.raises(QueryError, match="SQL error on backup 5"):
        run_query(backup, "SELECT nope FROM accounts")


def test_run_query_on_missing_duckdb_file(backup):
    os.remove(backup.duckdb_path)
    with pytest.raises(QueryError):
        run_query(backup, "SELECT 1")
