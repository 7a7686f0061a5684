"""The snapshotter's check against the primary's digest (consumers/digest_proof.py)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from test_replica_and_snapshot import (  # tests/unit is on sys.path (rootdir mode)
    ACCOUNT_ROWS,
    ACCOUNTS,
    MISC,
    MISC_ROWS,
    ODD,
    ODD_ROWS,
    ODD_TABLE,
    SOURCE,
    build_replica,
)

from backups.catalog import list_backups
from backups.verify import verify_backup
from consumers.digest_proof import (
    DigestBook,
    DigestMismatch,
    DigestMissing,
    DigestWaitStopped,
    mismatches,
    predates_digests,
    prove,
)
from consumers.snapshotter import SnapshotError, write_backup
from producers.digest import TableDigest, digest_tables
from producers.sqlite_changelog import quote_identifier
from schemas.records import DigestEntry, MarkerDigest


def primary_digest(marker_id: int, tables: list[TableDigest], skipped: bool = False):
    entries = tuple(DigestEntry(t.table, t.rows, t.hex) for t in tables)
    return MarkerDigest(SOURCE, marker_id, skipped, entries, at_us=1, note=None)


def test_a_count_difference_names_the_table_and_the_difference():
    primary = primary_digest(7, [TableDigest("a", 10, 5), TableDigest("b", 3, 9)])
    replica = {"a": TableDigest("a", 9, 4), "b": TableDigest("b", 3, 9)}
    assert mismatches(primary, replica) == [
        "table 'a': the backup has 9 rows, the primary had 10 at T1 (-1)"
    ]


def test_same_count_other_content_is_a_mismatch_too():
    primary = primary_digest(7, [TableDigest("a", 2, 0xAB)])
    (problem,) = mismatches(primary, {"a": TableDigest("a", 2, 0xAC)})
    assert "table 'a': same 2 rows" in problem and "00000000000000ab" in problem


def test_a_table_missing_on_one_side_counts_as_empty():
    primary = primary_digest(7, [TableDigest("empty", 0, 0), TableDigest("gone", 2, 1)])
    assert mismatches(primary, {"extra": TableDigest("extra", 0, 0)}) == [
        "table 'gone': the backup has 0 rows, the primary had 2 at T1 (-2)"
    ]


def test_prove_says_whether_the_backup_was_checked():
    same = {"a": TableDigest("a", 1, 1)}
    assert prove(3, same, lambda m: primary_digest(m, [TableDigest("a", 1, 1)]))["checked"]
    skipped = prove(3, same, lambda m: primary_digest(m, [], skipped=True))
    assert skipped["checked"] is False
    assert prove(3, same, None)["checked"] is False
    with pytest.raises(DigestMismatch, match=r"backup 3 is not the primary at T1.*'a'"):
        prove(3, same, lambda m: primary_digest(m, [TableDigest("a", 2, 1)]))


def test_the_book_hands_a_digest_to_a_waiting_thread_and_ignores_other_sources():
    book = DigestBook(SOURCE)
    book.add(MarkerDigest("other", 4, False, (), at_us=1))
    found: list[MarkerDigest] = []
    waiter = threading.Thread(target=lambda: found.append(book.wait(4, 30.0)))
    waiter.start()
    book.add(primary_digest(4, []))
    waiter.join(30)
    assert found and found[0].source == SOURCE


def test_a_digest_that_never_comes_is_reported_after_the_timeout():
    with pytest.raises(DigestMissing, match="marker 9 did not arrive within 0 s"):
        DigestBook(SOURCE).wait(9, 0.05)


def test_the_book_keeps_only_recent_digests():
    book = DigestBook(SOURCE, keep=2)
    for marker_id in (1, 2, 3):
        book.add(primary_digest(marker_id, []))
    assert book.get(1) is None and book.get(3) is not None


def _independent_primary(tmp_path: Path) -> list[TableDigest]:
    """The rows of ``build_replica`` in a SQLite database of their own, as a primary."""
    conn = sqlite3.connect(tmp_path / "primary.db")
    for definition in (ACCOUNTS, MISC, ODD_TABLE):
        conn.execute(definition.ddl)
    conn.executemany("INSERT INTO accounts VALUES (?, ?, ?)", ACCOUNT_ROWS)
    conn.executemany("INSERT INTO misc VALUES (?, ?, ?)", MISC_ROWS)
    conn.executemany(
        f'INSERT INTO {quote_identifier(ODD)} ("first name", v, rowid) VALUES (?, ?, ?)',
        ODD_ROWS,
    )
    conn.commit()
    found = digest_tables(conn, ["accounts", "misc", ODD])
    conn.close()
    return found


@pytest.fixture
def replica(tmp_path):
    plan, shards = build_replica(tmp_path / "replica")
    yield tmp_path / "replica", plan, shards
    for s in shards:
        s.close()


def test_a_backup_equal_to_the_primary_is_published_with_its_proof(replica, tmp_path):
    replica_dir, plan, _ = replica
    primary = _independent_primary(tmp_path)
    backup = write_backup(
        replica_dir,
        tmp_path / "backups",
        plan,
        writer="t",
        proof=lambda m: primary_digest(m, primary),
    )
    assert backup.manifest["proof"]["checked"] is True
    assert {t: i["digest"] for t, i in backup.tables.items()} == {
        d.table: d.as_json() for d in primary
    }
    # misc.qty holds integers and text: widened, so verify recomputes it through the DDL
    assert backup.tables["misc"]["widened_columns"] == ["qty", "price"]
    assert verify_backup(backup) == []


def test_a_backup_that_differs_from_the_primary_fails_and_nothing_is_published(replica, tmp_path):
    replica_dir, plan, shards = replica
    primary = _independent_primary(tmp_path)
    shards[0].conn.execute(
        "UPDATE accounts SET owner = 'tampered' WHERE rowid IN (SELECT rowid FROM accounts LIMIT 1)"
    )
    with pytest.raises(SnapshotError, match=r"table 'accounts': same 30 rows, but their content"):
        write_backup(
            replica_dir,
            tmp_path / "backups",
            plan,
            writer="t",
            proof=lambda m: primary_digest(m, primary),
        )
    assert list_backups(tmp_path / "backups") == []
    assert [p.name for p in (tmp_path / "backups" / SOURCE).iterdir()] == []


def test_a_backup_without_the_primary_digest_is_not_published(replica, tmp_path):
    replica_dir, plan, _ = replica
    book = DigestBook(SOURCE)
    with pytest.raises(SnapshotError, match="did not arrive within"):
        write_backup(
            replica_dir, tmp_path / "backups", plan, writer="t", proof=book.source_for(0.05)
        )
    assert list_backups(tmp_path / "backups") == []


def test_replay_publishes_unproven_only_markers_cut_before_digests_were_kept():
    book = DigestBook(SOURCE)
    book.resolved.update({1, 2, 5})
    book.add(primary_digest(3, []))
    assert predates_digests(1, book) and predates_digests(2, book)
    assert not predates_digests(3, book), "it has its digest"
    assert not predates_digests(4, book), "not resolved yet: its digest may still come"
    assert not predates_digests(5, book), "after the first digest, every marker has one"
    assert predates_digests(1, DigestBook(SOURCE)) is False, "unresolved"


def test_stopping_while_waiting_for_a_digest_leaves_the_cut_unfailed(replica, tmp_path):
    """Not a SnapshotError (which would fail the cut): the next start takes it over."""
    replica_dir, plan, _ = replica
    stop = threading.Event()
    stop.set()
    book = DigestBook(SOURCE)
    with pytest.raises(DigestWaitStopped):
        write_backup(
            replica_dir, tmp_path / "backups", plan, writer="t", proof=book.source_for(60, stop)
        )
    assert list_backups(tmp_path / "backups") == []
    assert [p.name for p in (tmp_path / "backups" / SOURCE).iterdir()] == [], "temp removed"
