"""The streaming writer and keyed incrementals on a real broker, against the primary.

``replicate --full-every 4``: a full backup, then incrementals whose changes come from the
keys the shards recorded (updates, deletes, a delete then a re-insert of the same key, a
key change, inserts into a WITHOUT ROWID table). Every backup is compared, row by row,
with the primary recorded at its cut: its DuckDB tables (resolved through the chain), its
Avro files (read by fastavro and by the Apache ``avro`` reader, against its own DuckDB
file) and a ``cutline restore``.
"""

from __future__ import annotations

import json
import random
import sqlite3

import avro.datafile
import avro.io
import duckdb

from backups.catalog import Backup
from backups.chain import resolved_database
from tests.integration.pipeline import TABLES, Pipeline, avro_rows, table_rows

KEYED = "the keys the replica recorded as changed"


def _changes(conn: sqlite3.Connection, rng: random.Random, next_id: int) -> int:
    conn.execute("BEGIN IMMEDIATE")
    ids = [r[0] for r in conn.execute("SELECT id FROM accounts ORDER BY id")]
    for account in rng.sample(ids, 5):
        conn.execute("UPDATE accounts SET balance = balance + 7, rate = ? WHERE id = ?",
                     (rng.random(), account))  # fmt: skip
    conn.execute("DELETE FROM accounts WHERE id = ?", (ids[1],))
    conn.execute("DELETE FROM accounts WHERE id = ?", (ids[2],))
    conn.execute("INSERT INTO accounts VALUES (?, 'back ✓', 5, NULL, x'')", (ids[2],))
    conn.execute("UPDATE accounts SET id = ? WHERE id = ?", (next_id, ids[-1]))
    conn.execute("INSERT INTO accounts VALUES (?, 'new', 1, 0.5, NULL)", (next_id + 1,))
    conn.execute("INSERT INTO tags VALUES (?, 'new')", (next_id + 1,))
    conn.execute("DELETE FROM tags WHERE account = (SELECT min(account) FROM tags)")
    conn.execute("INSERT INTO events (kind, payload) VALUES ('tick', NULL)")
    conn.execute("COMMIT")
    return next_id + 2


def _duckdb_rows(path, backup: Backup) -> dict[str, list[tuple]]:
    db = duckdb.connect(str(path), read_only=True)
    try:
        return {
            t: table_rows(db, t, [c["name"] for c in info["columns"]])
            for t, info in backup.tables.items()
        }
    finally:
        db.close()


def _apache_avro_rows(backup: Backup, table: str) -> list[tuple]:
    fields = [c["avro_field"] for c in backup.tables[table]["columns"]]
    with open(backup.avro_path(table), "rb") as f:
        reader = avro.datafile.DataFileReader(f, avro.io.DatumReader())
        return sorted((tuple(r[n] for n in fields) for r in reader), key=repr)


def test_streamed_and_keyed_backups_equal_the_primary(pipeline: Pipeline) -> None:
    pipeline.create_primary(accounts=300)
    pipeline.start_capture(partitions=3)
    pipeline.start_replicator("replicate", "--full-every", "4")
    rng = random.Random(9)
    conn = pipeline.connect()
    next_id = 5000
    try:
        pipeline.cut(conn)
        for _ in range(3):
            next_id = _changes(conn, rng, next_id)
            pipeline.cut(conn)
    finally:
        conn.close()
    published = pipeline.wait_for_backups(sorted(pipeline.oracle), deadline_s=180)

    kinds = [published[m].kind for m in sorted(pipeline.oracle)]
    assert kinds == ["full", "incremental", "incremental", "incremental"]
    for marker_id, expected in pipeline.oracle.items():
        backup = published[marker_id]
        with resolved_database(backup) as path:
            assert _duckdb_rows(path, backup) == expected, marker_id
        in_avro, headers = avro_rows(backup)  # the backup's own rows: whole, or the changes
        assert in_avro == _duckdb_rows(backup.duckdb_path, backup), marker_id
        for table in TABLES:
            assert _apache_avro_rows(backup, table) == in_avro[table], (marker_id, table)
            assert headers[table]["cutline.marker_id"] == str(marker_id)
            assert headers[table]["avro.codec"] == "deflate"
        assert {t: i["rows"] for t, i in backup.tables.items()} == {
            t: len(rows) for t, rows in expected.items()
        }
        if backup.kind == "incremental":
            assert backup.tables["accounts"]["changes_from"] == KEYED, marker_id
            assert backup.tables["tags"]["changes_from"] == KEYED, marker_id
            assert backup.tables["accounts"]["changed"] < 20  # the changes, not the table

    last = max(pipeline.oracle)
    target = pipeline.root / "restored.sqlite"
    result = pipeline.cli(
        "restore", "--backups", str(pipeline.backups), "--source", pipeline.source,
        "--marker", str(last), "--to", str(target),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["marker_id"] == last
    restored = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        for table in TABLES:
            columns = [c["name"] for c in published[last].tables[table]["columns"]]
            assert table_rows(restored, table, columns) == pipeline.oracle[last][table], table
    finally:
        restored.close()
