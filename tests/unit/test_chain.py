"""Incremental backups and chains: the full/incremental choice, and that an incremental,
resolved through its chain, holds exactly what a full backup of the same cut holds."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import pytest

from backups.catalog import MANIFEST, Backup, backup_dir_name, list_backups
from backups.chain import (
    DELETED_SCHEMA,
    ChainError,
    chain_of,
    resolved_database,
)
from backups.verify import verify_backup
from consumers.replica import Shard, shard_path
from consumers.snapshotter import CutPlan, write_backup
from producers.sqlite_changelog import quote_identifier
from schemas.records import Column, ConsistencyMarker, TableDefinition

SOURCE = "chains"
PARTITIONS = 2

ACCOUNTS = TableDefinition(
    SOURCE,
    "accounts",
    "CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT, balance REAL)",
    (Column("id", "INTEGER"), Column("owner", "TEXT"), Column("balance", "REAL")),
    ("id",),
)
LINES = TableDefinition(  # composite key, no rowid
    SOURCE,
    "order lines",
    'CREATE TABLE "order lines"(order_id TEXT, line INTEGER, item BLOB, '
    "PRIMARY KEY (line, order_id)) WITHOUT ROWID",
    (Column("order_id", "TEXT"), Column("line", "INTEGER"), Column("item", "BLOB")),
    ("line", "order_id"),
)
EMPTY = TableDefinition(
    SOURCE,
    "empty",
    "CREATE TABLE empty(id INTEGER PRIMARY KEY, note TEXT)",
    (Column("id", "INTEGER"), Column("note", "TEXT")),
    ("id",),
)
LOG_NAME = 'log "x"; --'  # a name that needs quoting everywhere
LOG = TableDefinition(  # keyed by SQLite's hidden rowid: rows can repeat
    SOURCE,
    LOG_NAME,
    'CREATE TABLE "log ""x""; --"(level TEXT, message TEXT)',
    (Column("level", "TEXT"), Column("message", "TEXT")),
    ("rowid",),
)
CODES = TableDefinition(  # SQLite lets a rowid table's TEXT PRIMARY KEY hold several NULLs
    SOURCE,
    "codes",
    "CREATE TABLE codes(code TEXT PRIMARY KEY, label TEXT)",
    (Column("code", "TEXT"), Column("label", "TEXT")),
    ("code",),
)
ALL = (ACCOUNTS, LINES, EMPTY, LOG, CODES)

Contents = dict[str, list[tuple]]


class Replica:
    """Held shards whose content is set directly for each cut: no Kafka needed."""

    def __init__(self, root: Path, definitions: tuple[TableDefinition, ...] = ALL):
        self.root = root
        self.definitions = definitions
        self.offset = 0
        self.shards = [Shard(shard_path(root, SOURCE, p), p) for p in range(PARTITIONS)]
        for s in self.shards:
            for d in definitions:
                s.define(d)

    def cut(self, marker_id: int, contents: Contents) -> CutPlan:
        self.offset += 10
        tables = tuple(d.table for d in self.definitions)
        marker = ConsistencyMarker(
            SOURCE, marker_id, 1_700_000_000_000_000 + marker_id, 1, PARTITIONS, (0,) * 2, tables
        )
        for p, s in enumerate(self.shards):
            s.release()
            s.begin()
            for d in self.definitions:
                s.conn.execute(f"DELETE FROM {quote_identifier(d.table)}")
                names = ", ".join(quote_identifier(c) for c in d.column_names)
                marks = ", ".join("?" for _ in d.column_names)
                for i, row in enumerate(contents.get(d.table, [])):
                    if zlib.crc32(repr((i, row[0])).encode()) % PARTITIONS == p:
                        s.conn.execute(
                            f"INSERT INTO {quote_identifier(d.table)} ({names}) VALUES ({marks})",
                            row,
                        )
            s.commit(self.offset - 1)
            s.reach_marker(marker, self.offset, hold=True)
        offsets = dict.fromkeys(range(PARTITIONS), self.offset)
        return CutPlan(SOURCE, marker_id, marker.t1_us, PARTITIONS, offsets, tables)

    def close(self) -> None:
        for s in self.shards:
            s.close()


@pytest.fixture
def replica(tmp_path):
    r = Replica(tmp_path / "replica")
    yield r
    r.close()


def table_rows(path: Path, table: str) -> list[tuple]:
    db = duckdb.connect(str(path), read_only=True)
    try:
        rows = db.execute(f"SELECT * FROM {quote_identifier(table)}").fetchall()
    finally:
        db.close()
    return sorted(rows, key=repr)


def table_types(path: Path, table: str) -> list[tuple[str, str]]:
    db = duckdb.connect(str(path), read_only=True)
    try:
        return db.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
    finally:
        db.close()


def assert_same_as_full(incremental: Backup, full: Backup) -> None:
    """Every table of ``incremental``, resolved, equals the full backup of the same cut."""
    assert incremental.marker_id == full.marker_id
    assert full.kind == "full"
    with resolved_database(incremental) as resolved:
        for table in full.tables:
            assert table_types(resolved, table) == table_types(full.duckdb_path, table), table
            assert table_rows(resolved, table) == table_rows(full.duckdb_path, table), table
        db = duckdb.connect(str(resolved), read_only=True)
        try:
            names = {r[0] for r in db.execute("SHOW TABLES").fetchall()}
            meta = db.execute("SELECT marker_id FROM _cutline_backup").fetchall()
        finally:
            db.close()
    assert names == {*full.tables, "_cutline_backup", "_cutline_tables"}
    assert meta == [(incremental.marker_id,)]
    assert {t: i["rows"] for t, i in incremental.tables.items()} == {
        t: i["rows"] for t, i in full.tables.items()
    }


def accounts(*rows: tuple[int, str, float]) -> list[tuple]:
    return list(rows)


# A history of five cuts touching every kind of change.
HISTORY: list[Contents] = [
    {
        "accounts": [(i, f"owner {i}", i * 1.5) for i in range(1, 21)],
        "order lines": [("o1", 1, b"\x00a"), ("o1", 2, b"b"), ("o2", 1, None)],
        LOG_NAME: [("info", "start"), ("info", "start"), ("warn", "slow")],
        "codes": [(None, "unknown"), (None, "unset"), ("a", "alpha")],
    },
    {  # updates, deletes, inserts, a key change (3 -> 103); a duplicate log row goes
        "accounts": [(i, f"owner {i}", i * 1.5) for i in range(1, 21) if i not in (3, 5, 6)]
        + [(103, "owner 3", 4.5), (21, "new", 0.0)],
        "order lines": [("o1", 1, b"\x00A"), ("o2", 1, None), ("o3", 7, b"")],
        LOG_NAME: [("info", "start"), ("warn", "slow"), ("error", "boom")],
        "codes": [(None, "unknown"), (None, "renamed"), ("a", "alpha")],
    },
    {  # a table emptied; an account updated twice over the chain
        "accounts": [(i, f"owner {i}", i * 1.5) for i in range(1, 21) if i not in (3, 5, 6, 7)]
        + [(103, "owner 3", 99.0), (21, "new", 0.0), (5, "back again", 5.0)],
        "order lines": [],
        LOG_NAME: [("info", "start"), ("warn", "slow"), ("error", "boom"), ("error", "boom")],
        "codes": [("a", "alpha"), ("b", None)],
    },
    {
        "accounts": [(1, "only", 1.0)],
        "order lines": [("o9", 1, b"z")],
        LOG_NAME: [],
        "codes": [(None, "back")],
    },
    {
        "accounts": [(1, "only", 1.0), (2, "two", 2.0)],
        "order lines": [("o9", 1, b"zz")],
        LOG_NAME: [("info", "again")],
        "codes": [(None, "back"), (None, "back")],
    },
]


def test_incremental_chain_resolves_exactly_like_full_backups(replica, tmp_path):
    fulls: dict[int, Backup] = {}
    incrementals: dict[int, Backup] = {}
    for marker_id, contents in enumerate(HISTORY, start=1):
        plan = replica.cut(marker_id, contents)
        fulls[marker_id] = write_backup(replica.root, tmp_path / "full", plan, writer="t")
        incrementals[marker_id] = write_backup(
            replica.root, tmp_path / "inc", plan, writer="t", full_every=3
        )
    assert [incrementals[m].kind for m in range(1, 6)] == [
        "full",
        "incremental",
        "incremental",
        "full",
        "incremental",
    ]
    assert all(b.kind == "full" for b in fulls.values())
    for marker_id in fulls:
        assert_same_as_full(incrementals[marker_id], fulls[marker_id])
        assert verify_backup(incrementals[marker_id]) == []
    # The last incremental resolves from full backup 4 only.
    assert [b.marker_id for b in chain_of(incrementals[5])] == [4, 5]
    assert [b.marker_id for b in chain_of(incrementals[3])] == [1, 2, 3]


def test_incremental_holds_only_the_changes_and_keyed_deletes(replica, tmp_path):
    backups = tmp_path / "b"
    write_backup(replica.root, backups, replica.cut(1, HISTORY[0]), writer="t", full_every=2)
    second = write_backup(
        replica.root, backups, replica.cut(2, HISTORY[1]), writer="t", full_every=2
    )
    manifest = second.manifest
    assert (manifest["kind"], manifest["parent_marker_id"], manifest["base_marker_id"]) == (
        "incremental",
        1,
        1,
    )
    acc = manifest["tables"]["accounts"]
    # 103 and 21 are new; 3 (moved to 103), 5 and 6 are gone; the 17 others are unchanged.
    assert (acc["rows"], acc["changed"], acc["deleted"], acc["match"]) == (19, 2, 3, "key")
    assert set(table_rows(second.duckdb_path, "accounts")) == {
        (21, "new", 0.0),
        (103, "owner 3", 4.5),
    }
    db = duckdb.connect(str(second.duckdb_path), read_only=True)
    try:
        deleted = sorted(db.execute(f'SELECT * FROM {DELETED_SCHEMA}."accounts"').fetchall())
        deleted_lines = sorted(
            db.execute(f'SELECT * FROM {DELETED_SCHEMA}."order lines"').fetchall()
        )
        deleted_log = db.execute(
            f"SELECT * FROM {DELETED_SCHEMA}.{quote_identifier(LOG_NAME)}"
        ).fetchall()
    finally:
        db.close()
    assert deleted == [(3,), (5,), (6,)]
    assert deleted_lines == [(2, "o1")]  # key columns in key order
    lines = manifest["tables"]["order lines"]
    assert (lines["changed"], lines["deleted"], lines["match"]) == (2, 1, "key")
    # The rowid-keyed table cannot be matched by key: whole rows, with repeats.
    log = manifest["tables"][LOG_NAME]
    assert (log["match"], log["changed"], log["deleted"]) == ("row", 1, 1)
    assert deleted_log == [("info", "start")]
    # NULLs repeat in this PRIMARY KEY, so it does not identify rows either.
    assert manifest["tables"]["codes"]["match"] == "row"
    assert (manifest["tables"]["empty"]["changed"], manifest["tables"]["empty"]["deleted"]) == (
        0,
        0,
    )
    # Each Avro file holds the same rows as its DuckDB table.
    with open(second.path / acc["avro"], "rb") as f:
        assert sorted((r["id"], r["owner"], r["balance"]) for r in fastavro.reader(f)) == [
            (21, "new", 0.0),
            (103, "owner 3", 4.5),
        ]
    with open(second.path / acc["deleted_avro"], "rb") as f:
        assert sorted(r["id"] for r in fastavro.reader(f)) == [3, 5, 6]
    listed = {f["path"] for f in manifest["files"]}
    assert {acc["avro"], acc["deleted_avro"], "backup.duckdb"} <= listed


def test_full_every_one_keeps_every_backup_full(replica, tmp_path):
    for marker_id, contents in enumerate(HISTORY[:3], start=1):
        b = write_backup(replica.root, tmp_path / "b", replica.cut(marker_id, contents), writer="t")
        assert b.manifest["kind"] == "full"
        assert b.manifest["parent_marker_id"] is None
        assert b.manifest["base_marker_id"] == marker_id
        assert "changed" not in b.manifest["tables"]["accounts"]


def test_choice_full_then_incrementals_then_full(replica, tmp_path):
    kinds = []
    for marker_id in range(1, 8):
        contents = HISTORY[(marker_id - 1) % len(HISTORY)]
        b = write_backup(
            replica.root, tmp_path / "b", replica.cut(marker_id, contents), writer="t", full_every=3
        )
        m = b.manifest
        kinds.append((m["kind"], m["parent_marker_id"], m["base_marker_id"]))
    assert kinds == [
        ("full", None, 1),
        ("incremental", 1, 1),
        ("incremental", 2, 1),
        ("full", None, 4),
        ("incremental", 4, 4),
        ("incremental", 5, 4),
        ("full", None, 7),
    ]


def test_first_backup_is_full_and_says_why(replica, tmp_path):
    b = write_backup(
        replica.root, tmp_path / "b", replica.cut(1, HISTORY[0]), writer="t", full_every=5
    )
    assert b.manifest["kind"] == "full"
    assert "no earlier backup" in b.manifest["kind_reason"]


def test_changed_column_types_make_a_full_backup(tmp_path):
    loose = TableDefinition(
        SOURCE,
        "loose",
        "CREATE TABLE loose(id INTEGER PRIMARY KEY, v)",
        (Column("id", "INTEGER"), Column("v", "")),
        ("id",),
    )
    r = Replica(tmp_path / "replica", (loose,))
    try:
        write_backup(
            r.root, tmp_path / "b", r.cut(1, {"loose": [(1, 5)]}), writer="t", full_every=4
        )
        b = write_backup(
            r.root, tmp_path / "b", r.cut(2, {"loose": [(1, "five")]}), writer="t", full_every=4
        )
    finally:
        r.close()
    assert b.manifest["kind"] == "full"
    assert "column types of table 'loose' changed" in b.manifest["kind_reason"]
    assert table_rows(b.duckdb_path, "loose") == [(1, "five")]
    assert verify_backup(b) == []


def test_changed_tables_make_a_full_backup(tmp_path):
    first = Replica(tmp_path / "r1", (ACCOUNTS,))
    try:
        write_backup(first.root, tmp_path / "b", first.cut(1, HISTORY[0]), writer="t", full_every=4)
    finally:
        first.close()
    second = Replica(tmp_path / "r2", (ACCOUNTS, EMPTY))
    try:
        b = write_backup(
            second.root, tmp_path / "b", second.cut(2, HISTORY[0]), writer="t", full_every=4
        )
    finally:
        second.close()
    assert b.manifest["kind"] == "full"
    assert "tables differ" in b.manifest["kind_reason"]


def test_damaged_parent_makes_a_full_backup(replica, tmp_path):
    first = write_backup(
        replica.root, tmp_path / "b", replica.cut(1, HISTORY[0]), writer="t", full_every=4
    )
    with open(first.duckdb_path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    b = write_backup(
        replica.root, tmp_path / "b", replica.cut(2, HISTORY[1]), writer="t", full_every=4
    )
    assert b.manifest["kind"] == "full"
    assert "damaged" in b.manifest["kind_reason"]


def test_missing_parent_is_a_clear_chain_error(replica, tmp_path):
    backups = tmp_path / "b"
    for marker_id, contents in enumerate(HISTORY[:3], start=1):
        write_backup(
            replica.root, backups, replica.cut(marker_id, contents), writer="t", full_every=5
        )
    shutil.rmtree(backups / SOURCE / backup_dir_name(2))
    third = next(b for b in list_backups(backups, SOURCE) if b.marker_id == 3)
    with pytest.raises(ChainError, match="needs backup 2") as info, resolved_database(third):
        pass
    assert "missing" in str(info.value)
    problems = verify_backup(third)
    assert problems and "needs backup 2" in problems[0]


def test_failing_parent_is_a_clear_chain_error(replica, tmp_path):
    backups = tmp_path / "b"
    for marker_id, contents in enumerate(HISTORY[:2], start=1):
        write_backup(
            replica.root, backups, replica.cut(marker_id, contents), writer="t", full_every=5
        )
    (backups / SOURCE / backup_dir_name(1) / "backup.duckdb").write_bytes(b"not a database")
    second = next(b for b in list_backups(backups, SOURCE) if b.marker_id == 2)
    with pytest.raises(ChainError, match="cannot resolve backup 2"), resolved_database(second):
        pass


def test_resolved_file_is_removed_afterwards_and_full_resolves_to_itself(replica, tmp_path):
    backups = tmp_path / "b"
    first = write_backup(
        replica.root, backups, replica.cut(1, HISTORY[0]), writer="t", full_every=2
    )
    second = write_backup(
        replica.root, backups, replica.cut(2, HISTORY[1]), writer="t", full_every=2
    )
    with resolved_database(first) as path:
        assert path == first.duckdb_path
    with resolved_database(second, tmp_dir=tmp_path) as path:
        assert path.is_file() and path.parent.parent == tmp_path
    assert not path.exists() and not path.parent.exists()
    assert first.duckdb_path.is_file()


def test_manifest_without_kind_is_a_full_backup(tmp_path):
    path = tmp_path / SOURCE / backup_dir_name(1)
    path.mkdir(parents=True)
    manifest: dict[str, Any] = {"source": SOURCE, "marker_id": 1, "duckdb": "backup.duckdb"}
    (path / MANIFEST).write_text(json.dumps(manifest))
    backup = Backup(path, manifest)
    assert backup.kind == "full"
    assert [b.marker_id for b in chain_of(backup)] == [1]


def test_resolving_leaves_the_base_untouched_and_retries_unbounded_when_it_cannot_fit(
    replica, tmp_path, monkeypatch
):
    """The base's file is copied and the copy changed in place, never the base itself;
    a link DuckDB cannot apply within RESOLVE_MEMORY makes the chain resolve again
    without the bound, to the same content."""
    import hashlib

    from backups import chain

    backups = tmp_path / "b"
    made = [
        write_backup(
            replica.root, backups, replica.cut(marker_id, contents), writer="t", full_every=5
        )
        for marker_id, contents in enumerate(HISTORY[:3], start=1)
    ]
    base, last = made[0], made[-1]
    fulls = tmp_path / "full"
    oracle = write_backup(replica.root, fulls, replica.cut(3, HISTORY[2]), writer="t")
    before = hashlib.sha256(base.duckdb_path.read_bytes()).hexdigest()
    assert_same_as_full(last, oracle)
    assert hashlib.sha256(base.duckdb_path.read_bytes()).hexdigest() == before

    calls: list[str] = []
    real = chain._apply_link_table_in_place

    def out_of_memory_first(db, alias, table, info):
        calls.append(table)
        if len(calls) == 1:
            raise duckdb.OutOfMemoryException("failed to allocate data")
        return real(db, alias, table, info)

    monkeypatch.setattr(chain, "_apply_link_table_in_place", out_of_memory_first)
    with resolved_database(last, tmp_dir=tmp_path) as path:
        assert not list(path.parent.glob("*.spill"))  # the spill directory is gone
        for table in oracle.tables:
            assert table_rows(path, table) == table_rows(oracle.duckdb_path, table), table
    assert len(calls) > len(oracle.tables)  # the first attempt failed, then all links ran
    assert hashlib.sha256(base.duckdb_path.read_bytes()).hexdigest() == before
