"""One change log holding both row-image formats, captured exactly end to end.

An older cutline's triggers logged SQL-literal images; after an upgrade, re-made triggers
log JSON images (``producers/row_images.py``), and rows of both kinds wait in the change
log while capture is down. Every backup (DuckDB, Avro) and a ``cutline restore`` of it
must equal the primary at its cut, and each row's changes must keep their Kafka key.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

from producers.row_images import json_image_sql
from producers.schema_changes import SCHEMA
from producers.sqlite_changelog import (
    CHANGES,
    describe_table,
    installed_tables,
    literal_image_sql,
)
from producers.triggers import trigger_statements
from schemas.records import TableDefinition
from tests.integration.pipeline import (
    TABLES,
    Pipeline,
    avro_rows,
    backup_rows,
    primary_columns,
    table_rows,
    wait_until,
)
from tests.integration.workload import random_transactions

ImageSql = Callable[[TableDefinition, str], str]


def _literal(definition: TableDefinition, alias: str) -> str:
    return literal_image_sql(definition, alias)


def _json(definition: TableDefinition, alias: str) -> str:
    image = json_image_sql(definition, alias)
    assert image is not None
    return image


def _install_images(conn: sqlite3.Connection, image: ImageSql) -> None:
    """Re-make capture's triggers logging ``image`` (as a cutline writing that format
    installs them), recording the schema version so capture takes them as its own."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in installed_tables(conn):
            definition = describe_table(conn, "", table)
            for statement in trigger_statements(conn, definition):
                for alias in ("NEW", "OLD", "t0"):
                    statement = statement.replace(
                        _json(definition, alias), image(definition, alias)
                    )
                conn.execute(statement)
        conn.execute(
            f"UPDATE {SCHEMA} SET version = (SELECT schema_version FROM pragma_schema_version)"
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _logged(conn: sqlite3.Connection, json_images: bool) -> int:
    """Change rows waiting in the log whose images are (or are not) JSON."""
    form = "LIKE '[%'" if json_images else "NOT LIKE '[%'"
    return conn.execute(
        f"SELECT count(*) FROM {CHANGES} WHERE kind IN ('I', 'U', 'D') "
        f"AND coalesce(after, before) {form}"
    ).fetchone()[0]


def test_a_change_log_holding_both_image_formats_gives_exact_backups(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    capture = pipeline.start_capture(partitions=4)
    pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    assert capture.stop() == 0, capture.tail()
    pipeline.processes.remove(capture)

    stop = threading.Event()
    writer = threading.Thread(target=random_transactions, args=(pipeline, stop, 3))
    _install_images(conn, _literal)  # the older cutline's triggers
    writer.start()
    try:
        wait_until(lambda: _logged(conn, json_images=False) >= 150, 60, "literal images")
        older = pipeline.cut(conn)
        _install_images(conn, _json)  # upgraded under the writer: this cutline's triggers
        wait_until(lambda: _logged(conn, json_images=True) >= 150, 60, "JSON images")
        newer = pipeline.cut(conn)
    finally:
        stop.set()
        writer.join(30)
    assert _logged(conn, json_images=False) >= 150 and _logged(conn, json_images=True) >= 150

    pipeline.start_capture(partitions=4)  # publishes both kinds from one change log
    published = pipeline.wait_for_backups([older.marker_id, newer.marker_id], deadline_s=180)
    for ticket in (older, newer):
        backup = published[ticket.marker_id]
        expected = pipeline.oracle[ticket.marker_id]
        in_duckdb = backup_rows(backup)
        for table in TABLES:
            assert in_duckdb[table] == expected[table], (ticket.marker_id, table)
        in_avro, _ = avro_rows(backup)
        assert in_avro == in_duckdb, f"backup {ticket.marker_id}: Avro and DuckDB disagree"
        target = pipeline.root / f"restore-{ticket.marker_id}.sqlite"
        result = pipeline.cli(
            "restore", "--backups", str(pipeline.backups), "--source", pipeline.source,
            "--marker", str(ticket.marker_id), "--to", str(target),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        restored = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
        try:
            for table in TABLES:
                got = table_rows(restored, table, primary_columns(restored, table))
                assert got == expected[table], f"restore {ticket.marker_id}: table {table}"
        finally:
            restored.close()
    conn.close()
