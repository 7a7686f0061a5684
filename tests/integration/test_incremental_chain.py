"""``replicate --full-every 3`` on a real broker: incrementals between fulls, each one,
resolved through its chain, exactly the primary at its marker; then verify and prune."""

from __future__ import annotations

import json
import random
import sqlite3

import duckdb

from backups.chain import resolved_database
from tests.integration.pipeline import TABLES, Pipeline, table_rows


def _changes(conn: sqlite3.Connection, rng: random.Random, next_id: int) -> int:
    """Updates, inserts, deletes and a key change, committed on the primary."""
    conn.execute("BEGIN IMMEDIATE")
    ids = [r[0] for r in conn.execute("SELECT id FROM accounts ORDER BY id")]
    for account in rng.sample(ids, 3):
        conn.execute("UPDATE accounts SET balance = balance + 7 WHERE id = ?", (account,))
    conn.execute("DELETE FROM accounts WHERE id = ?", (ids[0],))
    conn.execute("UPDATE accounts SET id = ? WHERE id = ?", (next_id, ids[-1]))
    conn.execute("INSERT INTO accounts VALUES (?, 'new', 1, NULL, x'00')", (next_id + 1,))
    conn.execute("INSERT INTO tags VALUES (?, 'new')", (next_id + 1,))
    conn.execute("INSERT INTO events (kind, payload) VALUES ('tick', NULL)")
    conn.execute("COMMIT")
    return next_id + 2


def test_incremental_backups_are_exact_cuts(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    pipeline.start_capture(partitions=3)
    pipeline.start_replicator("replicate", "--full-every", "3")
    rng = random.Random(3)
    conn = pipeline.connect()
    next_id = 1000
    try:
        for _ in range(5):
            next_id = _changes(conn, rng, next_id)
            pipeline.cut(conn)
    finally:
        conn.close()
    published = pipeline.wait_for_backups(sorted(pipeline.oracle), deadline_s=180)

    kinds = [published[m].kind for m in sorted(pipeline.oracle)]
    assert kinds == ["full", "incremental", "incremental", "full", "incremental"]
    for marker_id, expected in pipeline.oracle.items():
        backup = published[marker_id]
        with resolved_database(backup) as path:
            db = duckdb.connect(str(path), read_only=True)
            try:
                for table in TABLES:
                    columns = [c["name"] for c in backup.tables[table]["columns"]]
                    assert table_rows(db, table, columns) == expected[table], (marker_id, table)
            finally:
                db.close()
        assert {t: i["rows"] for t, i in backup.tables.items()} == {
            t: len(rows) for t, rows in expected.items()
        }

    verify = pipeline.cli("verify", "--backups", str(pipeline.backups), "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["ok"] is True

    prune = pipeline.cli("prune", "--backups", str(pipeline.backups), "--keep-last", "1", "--json")
    assert prune.returncode == 0, prune.stderr
    # The newest (5) is an incremental on full backup 4: both stay.
    assert sorted(pipeline.published()) == [4, 5]

    # A flipped byte in the full base and a truncated Avro file of the incremental: verify
    # names both files and markers, exits 1, and restore refuses the damaged backup.
    kept = pipeline.published()
    duck = kept[4].duckdb_path
    data = bytearray(duck.read_bytes())
    data[len(data) // 2] ^= 0x01
    duck.write_bytes(bytes(data))
    avro = kept[5].avro_path("accounts")
    avro.write_bytes(avro.read_bytes()[: avro.stat().st_size // 2])
    damaged = pipeline.cli("verify", "--backups", str(pipeline.backups))
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    report = damaged.stdout + damaged.stderr
    assert "marker 4" in report and "backup.duckdb" in report, report
    assert "marker 5" in report and avro.name in report, report
    target = pipeline.root / "restored.sqlite"
    restore = pipeline.cli(
        "restore",
        "--backups",
        str(pipeline.backups),
        "--source",
        pipeline.source,
        "--marker",
        "5",
        "--to",
        str(target),
    )
    assert restore.returncode == 1, restore.stdout + restore.stderr
    assert "verif" in restore.stderr and avro.name in restore.stderr, restore.stderr
    assert not target.exists()
