"""Schema changes while capture runs (issue 7, case 4), on a real broker.

An application writes the whole time while the primary goes through ADD COLUMN, RENAME
COLUMN, DROP COLUMN (through ``cutline migrate``), SQLite's create-copy-drop-rename
recipe changing a table's key (with capture stopped, so its start-up puts the dropped
triggers back), and a CREATE INDEX; markers are cut between them. Every backup (DuckDB,
Avro and a restore) must equal the primary at its cut, in the layout the primary had
then; a backup after a layout change is written full; ``query --all`` spans the layouts.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time

import duckdb

from backups.catalog import list_backups
from backups.chain import resolved_database
from producers.markers import request_marker_in_transaction
from tests.faults.checker import verify_run
from tests.integration.pipeline import (
    TABLES,
    Pipeline,
    avro_rows,
    backup_rows,
    primary_columns,
    table_rows,
)
from tests.integration.test_backups_in_use import restore, restored_rows
from tests.integration.workload import transfer


def _writes(pipeline: Pipeline, stop: threading.Event, done: list[int]) -> None:
    """Transfers, new accounts and tags, deletions and key changes, naming their columns,
    so that they go on across every layout change of this test."""
    rng = random.Random(11)
    conn = pipeline.connect()
    next_id = 20_000
    try:
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in conn.execute("SELECT id FROM accounts")]
            roll = rng.random()
            if roll < 0.6 and len(ids) > 1:
                transfer(conn, rng, ids)
            elif roll < 0.8:
                next_id += 1
                conn.execute(
                    "INSERT INTO accounts (id, owner, balance) VALUES (?, 'n', 0)", (next_id,)
                )
                conn.execute("INSERT INTO tags (account, tag) VALUES (?, 'new')", (next_id,))
            elif roll < 0.9:
                conn.execute("DELETE FROM transfers WHERE id IN (SELECT id FROM transfers LIMIT 1)")
            elif ids:
                next_id += 1
                conn.execute("UPDATE accounts SET id = ? WHERE id = ?", (next_id, rng.choice(ids)))
            conn.execute("COMMIT")
            done[0] += 1
            time.sleep(0.003)
    finally:
        conn.close()


RECIPE = """
BEGIN;
CREATE TABLE new_tags (account INTEGER NOT NULL, tag TEXT NOT NULL, since INTEGER DEFAULT 2024,
                       PRIMARY KEY (tag, account)) WITHOUT ROWID;
INSERT INTO new_tags (account, tag) SELECT account, tag FROM tags;
DROP TABLE tags;
ALTER TABLE new_tags RENAME TO tags;
COMMIT;
"""


def test_schema_changes_mid_run_give_exact_backups_in_each_layout(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    partitions = 4
    capture = pipeline.start_capture(partitions)
    pipeline.start_replicator("replicate")
    app = pipeline.connect()
    oracle = pipeline.connect()
    stop, done = threading.Event(), [0]
    writer = threading.Thread(target=_writes, args=(pipeline, stop, done))
    writer.start()
    layouts: dict[int, dict[str, list[str]]] = {}

    def cut() -> int:
        marker_id = pipeline.cut(oracle).marker_id
        layouts[marker_id] = {t: primary_columns(oracle, t) for t in TABLES}
        return marker_id

    def settle() -> None:
        time.sleep(0.3)  # let the writer commit in between (the cuts do not depend on it)

    try:
        m_start = cut()
        settle()
        app.execute("ALTER TABLE accounts ADD COLUMN email TEXT DEFAULT 'none'")
        app.execute("UPDATE accounts SET email = 'a@x' WHERE id < 5")
        settle()
        m_added = cut()
        app.execute("ALTER TABLE events RENAME COLUMN kind TO category")
        app.execute("INSERT INTO events (category, payload) VALUES ('renamed', x'01')")
        settle()
        m_renamed = cut()
        migrated = pipeline.cli(
            "migrate", "--db", str(pipeline.db),
            "ALTER TABLE accounts DROP COLUMN rate; UPDATE accounts SET email = 'b@y' WHERE id = 7",
        )  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr
        assert json.loads(migrated.stdout)["reinstalled"] == ["accounts"]
        settle()
        m_dropped = cut()
        settle()
        assert capture.stop() == 0
        app.executescript(RECIPE)  # drops capture's triggers on tags; capture is not running
        settle()  # the writer's tags go unlogged until capture starts and re-installs
        capture = pipeline.start_capture(partitions)
        settle()
        m_recipe = cut()
        app.execute("CREATE INDEX transfers_src ON transfers (src)")
        settle()
        cut()  # a DDL that changes no captured table
    finally:
        stop.set()
        writer.join(30)
    m_final = cut()
    assert done[0] > 100, "the application should have kept writing throughout"

    published = pipeline.wait_for_backups(sorted(pipeline.oracle), deadline_s=180)
    final_columns = {t: primary_columns(app, t) for t in TABLES}
    verdict = verify_run(
        bootstrap=pipeline.bootstrap,
        source=pipeline.source,
        partitions=partitions,
        backups=pipeline.backups,
        replica=pipeline.replica,
        oracle=pipeline.oracle,
        primary_now=pipeline.state(app),
        primary_columns=final_columns,
    )
    assert verdict.ok, "\n".join(verdict.problems)
    assert verdict.backups_verified == len(pipeline.oracle)

    # each backup has the layout the primary had at its cut, and a restore equals it
    for marker_id, backup in published.items():
        for table in TABLES:
            columns = [c["name"] for c in backup.tables[table]["columns"]]
            assert columns == layouts[marker_id][table], (marker_id, table)
        target = pipeline.root / f"restore-{marker_id}.sqlite"
        restore(pipeline, marker_id, target)
        rows, _ = restored_rows(target)
        for table in TABLES:
            assert rows[table] == pipeline.oracle[marker_id][table], (marker_id, table)
    assert "email" not in layouts[m_start]["accounts"]
    assert "rate" in layouts[m_added]["accounts"] and "email" in layouts[m_added]["accounts"]
    assert "category" in layouts[m_renamed]["events"]
    assert "rate" not in layouts[m_dropped]["accounts"]
    assert layouts[m_recipe]["tags"] == ["account", "tag", "since"]

    # SQL over every backup spans the layouts (UNION ALL BY NAME)
    query = pipeline.cli(
        "query", "--backups", str(pipeline.backups), "--source", pipeline.source, "--all",
        "--json", "SELECT marker_id, count(*) AS n, count(email) AS e FROM accounts "
        "GROUP BY marker_id ORDER BY marker_id",
    )  # fmt: skip
    assert query.returncode == 0, query.stderr
    counts = {r["marker_id"]: (r["n"], r["e"]) for r in json.loads(query.stdout)}
    for marker_id, expected in pipeline.oracle.items():
        has_email = "email" in layouts[marker_id]["accounts"]
        assert counts[marker_id] == (
            len(expected["accounts"]),
            len(expected["accounts"]) if has_email else 0,
        ), marker_id

    checked = pipeline.cli("verify", "--backups", str(pipeline.backups))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    diffed = pipeline.cli(
        "diff", "--backups", str(pipeline.backups), "--source", pipeline.source,
        str(m_start), str(m_final), "--json",
    )  # fmt: skip
    assert diffed.returncode == 0, diffed.stderr
    changes = json.loads(diffed.stdout)["tables"]
    assert changes["accounts"]["changed"] or changes["accounts"]["added"], changes["accounts"]

    # the stream alone rebuilds every backup, in its layout (cutline replay)
    replayed = pipeline.root / "replayed"
    rebuilt = pipeline.cli(
        "replay", "--replica", str(pipeline.root / "replica-replay"), "--backups", str(replayed),
        "--source", pipeline.source, "--bootstrap-servers", pipeline.bootstrap, "--json",
        timeout_s=120,
    )  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    again = {b.marker_id: b for b in list_backups(replayed, pipeline.source)}
    assert sorted(again) == sorted(pipeline.oracle)
    for marker_id, backup in again.items():
        assert backup_rows(backup) == pipeline.oracle[marker_id], marker_id
        assert backup.manifest["proof"]["checked"] is True, (marker_id, backup.manifest["proof"])
    app.close()
    oracle.close()


def test_an_incremental_after_a_layout_change_is_written_full(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    pipeline.start_capture(2)
    pipeline.start_replicator("replicate", "--full-every", "10")
    conn = pipeline.connect()
    steps = [
        "UPDATE accounts SET balance = 5 WHERE id = 1",
        "ALTER TABLE accounts ADD COLUMN email TEXT",
        "UPDATE accounts SET email = 'x' WHERE id = 2",
        "CREATE INDEX accounts_email ON accounts (email)",
        "ALTER TABLE events RENAME COLUMN kind TO category",
        "DELETE FROM accounts WHERE id = 3",
        # the same columns and types, other constraints (the recipe, in one transaction)
        "BEGIN; CREATE TABLE t2 (account INTEGER NOT NULL, tag TEXT CHECK (tag <> ''), "
        "PRIMARY KEY (account, tag)) WITHOUT ROWID; INSERT INTO t2 SELECT * FROM tags; "
        "DROP TABLE tags; ALTER TABLE t2 RENAME TO tags; COMMIT;",
        "INSERT INTO tags VALUES (1, 'late')",
    ]
    markers = [pipeline.cut(conn).marker_id]
    for step in steps:
        conn.executescript(step)
        markers.append(pipeline.cut(conn).marker_id)
    published = pipeline.wait_for_backups(markers)
    kinds = [(published[m].manifest["kind"], published[m].manifest["kind_reason"]) for m in markers]
    assert [k for k, _ in kinds] == [
        "full", "incremental", "full", "incremental", "incremental", "full", "incremental",
        "full", "incremental",
    ], kinds  # fmt: skip
    assert "'accounts' changed columns" in kinds[2][1] and "'events'" in kinds[5][1], kinds
    assert "'tags' was re-created" in kinds[7][1], kinds
    target = pipeline.root / "restored.sqlite"
    restore(pipeline, markers[-1], target)
    restored = sqlite3.connect(target)
    ddl = "SELECT sql FROM sqlite_master WHERE name = 'tags'"
    assert restored.execute(ddl).fetchone() == conn.execute(ddl).fetchone()
    restored.close()
    for marker_id in markers:  # each one, resolved through its chain, is the primary at its cut
        with resolved_database(published[marker_id]) as path:
            db = duckdb.connect(str(path), read_only=True)
            try:
                for table in TABLES:
                    columns = [c["name"] for c in published[marker_id].tables[table]["columns"]]
                    rows = table_rows(db, table, columns)
                    assert rows == pipeline.oracle[marker_id][table], (marker_id, table)
            finally:
                db.close()
    conn.close()


def test_dropping_a_captured_table_stops_capture_until_it_is_let_go(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    capture = pipeline.start_capture(2)
    pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    pipeline.wait_for_backups([first.marker_id])
    conn.execute("DROP TABLE events")
    conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (999, 'late', 1)")
    deadline = time.monotonic() + 60
    while capture.popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    pipeline.processes.remove(capture)  # its exit is the point of this test
    assert capture.popen.returncode == 2, capture.tail()
    log = capture.tail()
    assert "captured table 'events' no longer exists" in log and "Traceback" not in log, log
    marked = pipeline.cli("mark", "--db", str(pipeline.db))
    assert marked.returncode == 2 and "no longer exists" in marked.stderr, marked.stderr
    assert len(marked.stderr.strip().splitlines()) == 1, marked.stderr
    # nothing after the DROP was published: capture forgets a change once it is in Kafka
    late = sqlite3.connect(pipeline.db).execute(
        "SELECT count(*) FROM _cutline_changes WHERE tbl = 'accounts' "
        "AND after LIKE '[[1],999,%'"  # the row's JSON image (producers/row_images.py)
    )
    assert late.fetchone() == (1,), "the change after the DROP waits in the change log"
    assert list(pipeline.published()) == [first.marker_id]

    # the way forward the message gives: let the table go, capture the others
    let_go = pipeline.cli("migrate", "--db", str(pipeline.db), "DROP TABLE IF EXISTS events")
    assert let_go.returncode == 0, let_go.stderr
    remaining = [t for t in TABLES if t != "events"]
    pipeline.start(
        "capture-again", "capture", "--db", str(pipeline.db), "--tables", ",".join(remaining),
        "--source", pipeline.source, "--bootstrap-servers", pipeline.bootstrap,
    )  # fmt: skip
    conn.execute("UPDATE accounts SET balance = 1 WHERE id = 999")
    conn.execute("BEGIN IMMEDIATE")
    expected = {t: table_rows(conn, t, primary_columns(conn, t)) for t in remaining}
    second = request_marker_in_transaction(conn).marker_id
    conn.execute("COMMIT")
    backup = pipeline.wait_for_backups([second])[second]
    assert sorted(backup.tables) == sorted(remaining)
    assert backup_rows(backup) == expected
    # proven against the primary's digest, which covers the tables the marker lists
    assert backup.manifest["proof"]["checked"] is True, backup.manifest["proof"]
    assert avro_rows(backup)[0] == expected
    target = pipeline.root / "restored.sqlite"
    restore(pipeline, second, target)
    assert restored_rows(target)[0] == expected
    conn.close()
