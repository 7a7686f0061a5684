"""Two sources capture one database and a schema change happens while the app writes.

The re-install's 'S' row and table copy are written once, for every source: each source
capturing the changed table must publish the new definition and the copy, and a source
that does not capture it must skip both. Every backup of both sources is compared with the
primary recorded at its cut (DuckDB, Avro, `cutline restore`).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from tests.integration.pipeline import TABLES, Pipeline, primary_columns, wait_until
from tests.integration.test_schema_changes import _writes
from tests.integration.test_source_identity import assert_exact


def test_two_sources_stay_exact_across_an_add_column_mid_run(
    kafka: str, source: str, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    b_tables = ["accounts", "events"]  # not tags: its schema change is a's alone
    with (
        Pipeline(kafka, source, tmp_path / "a") as a,
        Pipeline(kafka, f"{source}-b", tmp_path / "b") as b,
    ):
        b.db = a.db
        a.create_primary(accounts=40)
        a.start_capture(partitions=4)
        a.start_replicator("replicate")
        b.start(
            "capture", "capture", "--db", str(b.db), "--tables", ",".join(b_tables),
            "--partitions", "3", "--source", b.source, "--bootstrap-servers", kafka,
        )  # fmt: skip
        b.start_replicator("replicate")

        def b_installed() -> bool:
            b.check_alive()
            with sqlite3.connect(a.db) as conn:
                found = conn.execute("SELECT 1 FROM _cutline_sources WHERE source = ?", (b.source,))
                return found.fetchone() is not None

        wait_until(b_installed, 60, "source b to install on the captured database")
        app, oracle = a.connect(), a.connect()
        stop, done = threading.Event(), [0]
        writer = threading.Thread(target=_writes, args=(a, stop, done))
        layouts: dict[int, dict[str, list[str]]] = {}

        def cut() -> int:
            marker_id = a.cut(oracle).marker_id
            layouts[marker_id] = {t: primary_columns(oracle, t) for t in TABLES}
            return marker_id

        def app_wrote(more: int) -> None:
            target = done[0] + more
            wait_until(lambda: done[0] >= target, 30, f"the application to commit {more} more")

        writer.start()
        try:
            cuts = [cut()]
            app_wrote(20)
            app.execute("ALTER TABLE accounts ADD COLUMN email TEXT DEFAULT 'none'")
            app.execute("UPDATE accounts SET email = 'a@x' WHERE id < 5")
            app.execute("ALTER TABLE tags ADD COLUMN note TEXT")  # captured by a only
            app_wrote(20)
            cuts.append(cut())
            app_wrote(20)
            cuts.append(cut())
        finally:
            stop.set()
            writer.join(30)
        cuts.append(cut())
        app.close()
        oracle.close()

        b.oracle = {m: a.oracle[m] for m in cuts}
        b.tickets = {m: a.tickets[m] for m in cuts}
        assert_exact(a, cuts)
        assert_exact(b, cuts, tables=b_tables)
        assert "email" not in layouts[cuts[0]]["accounts"]
        for pipeline in (a, b):
            published = pipeline.wait_for_backups(cuts, deadline_s=60)
            for marker_id in cuts[1:]:
                columns = [c["name"] for c in published[marker_id].tables["accounts"]["columns"]]
                assert columns == layouts[marker_id]["accounts"], (pipeline.source, marker_id)
                assert "email" in columns
            assert "tags" not in published[cuts[-1]].tables or pipeline is a
        for pipeline in (b, a):
            for process in pipeline.processes:
                assert process.stop() == 0, process.tail()
