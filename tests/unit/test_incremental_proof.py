"""An incremental's digest is derived from its parent's and the touched keys' rows only.

The "primary" here is a twin replica fed the same operations through ``Shard.apply`` and
never tampered with: its tables' digests are what the primary's digest at the marker says.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from test_changed_keys import (  # tests/unit is on sys.path (rootdir mode)
    ACCOUNTS,
    ALL,
    LINES,
    SOURCE,
    Replica,
    acc,
    assert_same_as_full,
    changed_keys,
    dele,
    ins,
    upd,
)

import backups.writer.table_proof as table_proof
import backups.writer.table_stream as table_stream
from backups.catalog import MANIFEST, list_backups
from backups.chain import resolved_database
from backups.verify import verify_backup
from consumers.snapshotter import CutPlan, SnapshotError, write_backup
from producers.digest import TableDigest, digest_table
from producers.sqlite_changelog import quote_identifier
from schemas.records import DigestEntry, MarkerDigest, Operation


class Twins:
    """The replica under test and an untouched twin standing for the primary."""

    def __init__(self, root: Path):
        self.replica = Replica(root / "replica")
        self.primary = Replica(root / "primary")
        self.backups = root / "backups"
        self.plan: CutPlan | None = None  # the last cut backed up

    def apply(self, ops: list[Operation]) -> None:
        self.replica.apply(ops)
        self.primary.apply(ops)

    def primary_digest(self, marker_id: int) -> MarkerDigest:
        entries = []
        for d in ALL:
            total = TableDigest(d.table, 0, 0)
            for s in self.primary.shards:
                total = total.changed(TableDigest(d.table, 0, 0), digest_table(s.conn, d.table))
            entries.append(DigestEntry(d.table, total.rows, total.hex))
        return MarkerDigest(SOURCE, marker_id, False, tuple(entries), at_us=1)

    def backup(self, marker_id: int, full_every: int = 100):
        plan = self.plan = self.replica.cut(marker_id)
        return write_backup(
            self.replica.root,
            self.backups,
            plan,
            writer="t",
            full_every=full_every,
            proof=self.primary_digest,
        )

    def close(self) -> None:
        self.replica.close()
        self.primary.close()


@pytest.fixture
def twins(tmp_path) -> Iterator[Twins]:
    t = Twins(tmp_path)
    yield t
    t.close()


def primary_rows(twins: Twins, table: str) -> list[tuple]:
    rows = [
        r for s in twins.primary.shards for r in s.conn.execute(f"SELECT * FROM {table}").fetchall()
    ]
    return sorted(rows, key=repr)


def backup_rows(backup, table: str) -> list[tuple]:
    with resolved_database(backup) as path:
        db = duckdb.connect(str(path), read_only=True)
        try:
            return sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
        finally:
            db.close()


@pytest.fixture
def full_table_reads(monkeypatch) -> list[str]:
    """Every whole-table read of a shard the backup writer makes, by table name."""
    reads: list[str] = []
    real = table_stream.iter_rows

    def counted(conn, table, columns, chunk=50_000):
        reads.append(table)
        return real(conn, table, columns, chunk)

    monkeypatch.setattr(table_stream, "iter_rows", counted)
    monkeypatch.setattr(table_proof, "iter_rows", counted)
    return reads


def test_a_chain_of_incrementals_derives_each_digest_without_reading_the_table(
    twins, tmp_path, full_table_reads
):
    twins.apply([ins(ACCOUNTS, acc(i)) for i in range(1, 201)])
    twins.apply([ins(LINES, {"order_id": f"o{i}", "line": 1, "item": "x"}) for i in range(9)])
    first = twins.backup(1)
    assert first.kind == "full"
    # a full backup reads each shard's rows once, for the files and the digest together
    assert full_table_reads.count("accounts") == len(twins.replica.shards)
    steps = [
        [upd(ACCOUNTS, {"id": 3}, acc(3, "renamed")), dele(ACCOUNTS, {"id": 4})],
        [ins(ACCOUNTS, acc(4, "back", 2.5)), ins(ACCOUNTS, acc(500)), dele(ACCOUNTS, {"id": 5})],
        [upd(LINES, {"order_id": "o1", "line": 1}, {"order_id": "o1", "line": 1, "item": "y"})],
    ]
    for marker_id, ops in zip((2, 4, 5), steps, strict=True):
        twins.apply(ops)
        if marker_id == 4:
            twins.replica.cut(3)  # a cut reached but never backed up (failed) in between
            twins.apply([upd(ACCOUNTS, {"id": 7}, acc(7, "after the failed cut"))])
        full_table_reads.clear()
        inc = twins.backup(marker_id)
        assert inc.kind == "incremental" and inc.manifest["proof"]["checked"] is True
        # only the rowid-keyed log (no recorded keys: a whole-table diff) is read in full
        assert set(full_table_reads) == {"log"}, full_table_reads
        for d in (ACCOUNTS, LINES):
            assert inc.tables[d.table]["changes_from"].startswith("the keys"), d.table
            assert backup_rows(inc, quote_identifier(d.table)) == primary_rows(
                twins, quote_identifier(d.table)
            )
        oracle = write_backup(
            twins.replica.root, tmp_path / f"full{marker_id}", twins.plan, writer="t"
        )
        assert_same_as_full(inc, oracle)  # rows, types and digests, and verify() is clean


def test_a_shard_row_changed_by_hand_is_not_in_the_backup_and_it_still_publishes(twins):
    twins.apply([ins(ACCOUNTS, acc(i)) for i in range(1, 21)])
    twins.backup(1)
    for s in twins.replica.shards:  # changed outside apply, and its record removed
        s.conn.execute("UPDATE accounts SET owner = 'by hand' WHERE id = 7")
        s.conn.execute(f"DELETE FROM {changed_keys.changed_table('accounts')} WHERE id = 7")
    twins.apply([upd(ACCOUNTS, {"id": 8}, acc(8, "applied")), dele(ACCOUNTS, {"id": 9})])
    inc = twins.backup(2)
    # parent + recorded changes is the primary: proven, published, exact
    assert inc.kind == "incremental" and inc.manifest["proof"]["checked"] is True
    assert backup_rows(inc, "accounts") == primary_rows(twins, "accounts")
    assert verify_backup(inc) == []


def test_a_change_applied_but_not_recorded_fails_the_cut(twins):
    twins.apply([ins(ACCOUNTS, acc(i)) for i in range(1, 21)])
    twins.backup(1)
    twins.apply([upd(ACCOUNTS, {"id": 8}, acc(8, "applied")), upd(ACCOUNTS, {"id": 9}, acc(9))])
    for s in twins.replica.shards:  # the shard applied id 8, its record of it is lost
        s.conn.execute(f"DELETE FROM {changed_keys.changed_table('accounts')} WHERE id = 8")
    with pytest.raises(SnapshotError, match=r"table 'accounts': same 20 rows, but their content"):
        twins.backup(2)
    assert [b.marker_id for b in list_backups(twins.backups)] == [1]


def test_a_parent_without_a_digest_makes_the_table_a_whole_table_diff(twins):
    twins.apply([ins(ACCOUNTS, acc(i)) for i in range(1, 21)])
    first = twins.backup(1)
    manifest = first.path / MANIFEST
    data = json.loads(manifest.read_text())
    del data["tables"]["accounts"]["digest"]  # as a backup written before digests
    manifest.write_text(json.dumps(data))
    twins.apply([upd(ACCOUNTS, {"id": 2}, acc(2, "two"))])
    inc = twins.backup(2)
    why = inc.tables["accounts"]["changes_from"]
    assert why.startswith("a diff of the whole table: its digest cannot be derived"), why
    assert inc.manifest["proof"]["checked"] is True
    assert backup_rows(inc, "accounts") == primary_rows(twins, "accounts")
