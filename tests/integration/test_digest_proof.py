"""Every backup carries its proof, on a real broker: the primary's digest at each marker is
checked before publishing, kept in the manifest, and recomputed by ``verify``."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import duckdb

from backups.catalog import Backup, list_backups
from backups.chain import resolved_database
from backups.readers.restore import restore_backup
from backups.storage.local.durable import sha256_of
from backups.verify import verify_backup
from consumers import changed_keys
from consumers.replica import shard_path
from producers.digest import digest_rows
from producers.markers import request_marker
from schemas.records import ControlKind
from tests.faults.checker import control_events
from tests.integration.pipeline import (
    TABLES,
    Pipeline,
    Rows,
    avro_rows,
    backup_rows,
    manifest_json,
    primary_columns,
    table_rows,
    wait_until,
)
from tests.integration.workload import random_transactions

PARTITIONS = 4


def assert_exact(pipeline: Pipeline, backup: Backup, expected: Rows) -> None:
    """DuckDB, Avro and a restore of ``backup`` hold exactly ``expected``, row by row."""
    assert backup_rows(backup) == expected, f"backup {backup.marker_id}: DuckDB differs"
    assert avro_rows(backup)[0] == expected, f"backup {backup.marker_id}: Avro differs"
    store = backup.path.parent.parent.name  # the backups directory: one restore per store
    target = pipeline.root / f"restored-{store}-{backup.marker_id}.sqlite"
    restore_backup(backup, target)
    with sqlite3.connect(target) as conn:
        restored = {t: table_rows(conn, t, primary_columns(conn, t)) for t in TABLES}
    assert restored == expected, f"backup {backup.marker_id}: restore differs"


def expected_digests(rows: Rows) -> dict[str, dict[str, object]]:
    return {t: digest_rows(t, rows[t]).as_json() for t in TABLES}


def recorded_digests(backup: Backup) -> dict[str, dict[str, object]]:
    return {t: info["digest"] for t, info in backup.tables.items()}


def verify(pipeline: Pipeline) -> tuple[int, list[dict]]:
    done = pipeline.cli(
        "verify", "--backups", str(pipeline.backups), "--source", pipeline.source, "--json"
    )
    return done.returncode, json.loads(done.stdout)["backups"]


def cut_states(pipeline: Pipeline, conn: sqlite3.Connection, **kwargs: int) -> int:
    """A marker through ``request_marker`` (the digest from a pinned snapshot), with the
    primary recorded just before it: the caller runs no writer, so it is the cut."""
    state = pipeline.state(conn)
    ticket = request_marker(conn, note="test", **kwargs)
    pipeline.oracle[ticket.marker_id] = state
    return ticket.marker_id


def test_backups_carry_the_primary_digest_and_verify_catches_an_altered_one(
    pipeline: Pipeline,
) -> None:
    pipeline.create_primary()
    pipeline.start_capture(PARTITIONS)
    pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    stop = threading.Event()
    writer = threading.Thread(target=random_transactions, args=(pipeline, stop, 11))
    pinned: list[int] = []
    writer.start()
    try:
        for _ in range(2):
            time.sleep(0.3)
            pipeline.cut(conn)  # the oracle and the digest inside the marker's transaction
            time.sleep(0.3)
            # the digest from a snapshot pinned under the marker's lock, writers going on
            pinned.append(request_marker(conn, note="pinned").marker_id)
        marked = pipeline.cli("mark", "--db", str(pipeline.db))
        assert marked.returncode == 0, marked.stderr
        pinned.append(json.loads(marked.stdout)["marker_id"])
    finally:
        stop.set()
        writer.join(30)
    published = pipeline.wait_for_backups([*pipeline.oracle, *pinned], deadline_s=180)

    for marker_id, expected in pipeline.oracle.items():
        backup = published[marker_id]
        assert_exact(pipeline, backup, expected)
        assert recorded_digests(backup) == expected_digests(expected)
        assert backup.manifest["proof"]["checked"] is True
    for marker_id in pinned:  # published only because the primary's digest matched
        assert published[marker_id].manifest["proof"]["checked"] is True
    code, results = verify(pipeline)
    assert code == 0 and all(r["ok"] for r in results), results

    # a backup whose content no longer matches its digest, though every SHA-256 does
    altered = published[max(pipeline.oracle)]
    db = duckdb.connect(str(altered.duckdb_path))
    db.execute(
        "UPDATE accounts SET balance = balance + 1 WHERE id = (SELECT min(id) FROM accounts)"
    )
    db.close()
    manifest = manifest_json(altered)
    for entry in manifest["files"]:
        path = altered.path / entry["path"]
        entry["bytes"], entry["sha256"] = path.stat().st_size, sha256_of(path)
    (altered.path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    code, results = verify(pipeline)
    problems = [p for r in results if r["marker_id"] == altered.marker_id for p in r["problems"]]
    assert code == 1
    assert any("table 'accounts' does not match its digest" in p for p in problems), problems
    conn.close()


def _corrupt_one_value(pipeline: Pipeline, account: int) -> Path:
    """Change one account's balance in whichever replica shard holds it."""
    for p in range(PARTITIONS):
        path = shard_path(pipeline.replica, pipeline.source, p)
        with sqlite3.connect(path) as shard:
            changed = shard.execute(
                "UPDATE accounts SET balance = balance + 1 WHERE id = ?", (account,)
            ).rowcount
        if changed:
            return path
    raise AssertionError(f"no shard holds account {account}")


def test_a_corrupted_replica_shard_fails_the_cut_until_it_is_rebuilt(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    pipeline.start_capture(PARTITIONS)
    replicate = pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    pipeline.wait_for_backups([first.marker_id])
    assert replicate.stop() == 0

    corrupted = _corrupt_one_value(pipeline, account=5)
    pipeline.start_replicator("replicate-corrupted")
    conn.execute("UPDATE accounts SET owner = 'after the corruption' WHERE id = 7")
    failing = pipeline.cut(conn)

    def failed() -> str | None:
        pipeline.check_alive()
        for event in control_events(pipeline.bootstrap, pipeline.source):
            if event.marker_id == failing.marker_id and event.kind is ControlKind.FAILED:
                return event.detail
        return None

    detail = wait_until(failed, 120, f"cut {failing.marker_id} to fail")
    assert "table 'accounts'" in detail and "differs from the primary" in detail, detail
    assert "tags" not in detail and "transfers" not in detail, detail
    assert failing.marker_id not in pipeline.published()

    # the README's way to rebuild a shard: stop, delete it, restart (rebuilt from the topic)
    for process in pipeline.processes[1:]:
        assert process.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{corrupted}{suffix}").unlink(missing_ok=True)
    pipeline.start_replicator("replicate-rebuilt")
    conn.execute("UPDATE accounts SET owner = 'after the rebuild' WHERE id = 8")
    healed = pipeline.cut(conn)
    published = pipeline.wait_for_backups([healed.marker_id], deadline_s=180)
    assert_exact(pipeline, published[healed.marker_id], pipeline.oracle[healed.marker_id])
    assert failing.marker_id not in published
    conn.close()


def test_digest_every_two_skips_alternate_markers_and_they_still_publish(
    pipeline: Pipeline,
) -> None:
    pipeline.create_primary()
    pipeline.start_capture(PARTITIONS)
    pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    markers = []
    for step in range(4):
        conn.execute("UPDATE accounts SET balance = ? WHERE id = 1", (step,))
        conn.execute("INSERT INTO events (kind, payload) VALUES ('step', ?)", (bytes([step]),))
        markers.append(cut_states(pipeline, conn, digest_every=2))
    published = pipeline.wait_for_backups(markers)
    for marker_id in markers:
        backup = published[marker_id]
        assert_exact(pipeline, backup, pipeline.oracle[marker_id])
        proof = backup.manifest["proof"]
        assert proof["checked"] is (marker_id % 2 == 0), (marker_id, proof)
        if not proof["checked"]:
            assert "--digest-every 2" in proof["note"]
        # the digest of the backup's own rows is recorded either way, for verify
        assert recorded_digests(backup) == expected_digests(pipeline.oracle[marker_id])
    code, results = verify(pipeline)
    assert code == 0, results

    # replay checks its backups against the same digests, read from the control topic
    rebuilt = pipeline.root / "rebuilt"
    done = pipeline.cli(
        "replay",
        "--replica",
        str(pipeline.root / "replica-rebuilt"),
        "--backups",
        str(rebuilt),
        "--source",
        pipeline.source,
        "--bootstrap-servers",
        pipeline.bootstrap,
        "--json",
        timeout_s=120,
    )
    assert done.returncode == 0, done.stderr
    again = {b.marker_id: b for b in list_backups(rebuilt, pipeline.source)}
    assert sorted(again) == markers
    for marker_id, backup in again.items():
        assert backup.manifest["proof"]["checked"] is (marker_id % 2 == 0)
        assert_exact(pipeline, backup, pipeline.oracle[marker_id])
    conn.close()


def _shard_of(pipeline: Pipeline, account: int) -> Path:
    """The replica shard holding ``account``."""
    for p in range(PARTITIONS):
        path = shard_path(pipeline.replica, pipeline.source, p)
        with closing(sqlite3.connect(path, timeout=30)) as shard:
            if shard.execute("SELECT 1 FROM accounts WHERE id = ?", (account,)).fetchone():
                return path
    raise AssertionError(f"no shard holds account {account}")


def _on_shard(path: Path, sql: str, *args: object) -> list[tuple]:
    with closing(sqlite3.connect(path, timeout=30)) as shard, shard:
        return shard.execute(sql, args).fetchall()


def _assert_resolved_exact(pipeline: Pipeline, backup: Backup, expected: Rows) -> None:
    """An incremental, resolved through its chain (DuckDB and a restore), is ``expected``
    row by row; verify recomputes its digest from that content."""
    with resolved_database(backup) as path:
        db = duckdb.connect(str(path), read_only=True)
        try:
            for table in TABLES:
                columns = [c["name"] for c in backup.tables[table]["columns"]]
                assert table_rows(db, table, columns) == expected[table], table
        finally:
            db.close()
    target = pipeline.root / f"restored-{backup.marker_id}.sqlite"
    restore_backup(backup, target)
    with closing(sqlite3.connect(target)) as conn:
        restored = {t: table_rows(conn, t, primary_columns(conn, t)) for t in TABLES}
    assert restored == expected, f"backup {backup.marker_id}: restore differs"
    assert verify_backup(backup) == []


def _forget_changed_key(path: Path, account: int) -> None:
    """Remove a key's record of change, as if the shard had failed to write it."""
    changed = changed_keys.changed_table("accounts")
    _on_shard(path, f"DELETE FROM {changed} WHERE id = ?", account)


def test_an_incremental_is_proven_on_its_own_content(pipeline: Pipeline) -> None:
    """An incremental's digest is derived from its parent's and the recorded keys: a shard
    row changed by hand (never recorded) is in neither the backup nor its digest, so the
    cut publishes, exact; a change applied but whose record was lost is missing from the
    backup, so the digest disagrees with the primary's and the cut fails."""
    pipeline.create_primary()
    pipeline.start_capture(PARTITIONS)
    pipeline.start_replicator("replicate", "--full-every", "10")
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    pipeline.wait_for_backups([first.marker_id])

    by_hand = _shard_of(pipeline, 5)  # changed outside replication, and never recorded
    _on_shard(by_hand, "UPDATE accounts SET owner = 'by hand' WHERE id = 5")
    _forget_changed_key(by_hand, 5)
    conn.execute("UPDATE accounts SET owner = 'recorded' WHERE id = 7")
    conn.execute("DELETE FROM accounts WHERE id = 8")
    second = pipeline.cut(conn)
    backup = pipeline.wait_for_backups([second.marker_id])[second.marker_id]
    assert backup.kind == "incremental" and backup.parent_marker_id == first.marker_id
    assert backup.tables["accounts"]["changes_from"].startswith("the keys"), backup.tables
    assert backup.manifest["proof"]["checked"] is True
    _assert_resolved_exact(pipeline, backup, pipeline.oracle[second.marker_id])

    conn.execute("UPDATE accounts SET owner = 'its record lost' WHERE id = 9")

    holder = _shard_of(pipeline, 9)

    def applied() -> bool:
        pipeline.check_alive()
        return bool(_on_shard(holder, "SELECT 1 FROM accounts WHERE id = 9 AND owner = ?", lost))

    lost = "its record lost"
    wait_until(applied, 60, "the shard to apply the update of account 9")
    _forget_changed_key(holder, 9)
    failing = pipeline.cut(conn)

    def failed() -> str | None:
        pipeline.check_alive()
        for event in control_events(pipeline.bootstrap, pipeline.source):
            if event.marker_id == failing.marker_id and event.kind is ControlKind.FAILED:
                return event.detail
        return None

    detail = wait_until(failed, 120, f"cut {failing.marker_id} to fail")
    assert "table 'accounts'" in detail and "differs from the primary" in detail, detail
    assert failing.marker_id not in pipeline.published()
    conn.close()
