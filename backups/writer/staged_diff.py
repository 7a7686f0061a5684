"""An incremental's whole-table diff, staged on disk so that its memory stays bounded.

A table whose changes cannot come from the keys the shards recorded (its key is SQLite's
rowid, a NULL appeared in its key, a column type that might change, an old parent: see
``backups.writer.keyed_changes``) is compared in full with the previous backup resolved
(``backups.incremental.write_changes``). Done in the backup's own connection (the rows in
a TEMP table, ``EXCEPT ALL`` under DuckDB's default memory limit of 80 % of RAM), that
comparison grew ``replicate`` by 414 MB for 2M rows of three columns, so ~2 GB at 10M.

Here the rows stream into a scratch DuckDB file under the backup's temp directory, through
a connection renewed every ``DuckDBFile.RENEW_ROWS`` rows as a full backup's is; the diff
runs in that file under ``DIFF_MEMORY``, spilling to disk; and only its result (the
changed rows and the deleted rows or keys) is copied into the backup's file. A diff that
DuckDB cannot fit in the bound is run again without it, as before (never a failed cut).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import duckdb

from backups.chain import DELETED_SCHEMA
from backups.incremental import PREVIOUS, write_changes
from backups.writer.duckdb_format import DuckDBFile
from producers.sqlite_changelog import quote_identifier, quote_text

log = logging.getLogger("cutline.snapshotter")

DIFF_MEMORY = "128MB"  # DuckDB's memory_limit for the staged rows and their diff
STAGED = "_cutline_rows"  # the table's rows at the cut, in the scratch file
STAGED_DIR = "_cutline_diff"  # the scratch, in the backup's temp dir: gone before the manifest
_SCRATCH = "_cutline_staged"  # the scratch file, as the backup's connection attaches it


class StagedDiff:
    """The scratch file of one table's whole-table diff; remove it with :meth:`close`."""

    def __init__(self, work: Path, previous: Path):
        self.work = work
        self.previous = previous
        work.mkdir()
        config = {
            "memory_limit": DIFF_MEMORY,
            "temp_directory": str(work / "spill"),
            # EXCEPT ALL keeping the input's order needs its whole input in memory: at 3M
            # rows it ran out of 128 MB. The order of changed rows in a backup means nothing.
            "preserve_insertion_order": "false",
        }
        self.file = DuckDBFile(work / "rows.duckdb", config)

    def diff_into(
        self,
        db: duckdb.DuckDBPyConnection,
        table: str,
        columns: list[str],
        key_columns: list[str],
    ) -> dict[str, Any]:
        """Diff the staged rows against the previous backup; copy the result into ``db``
        (``table`` and ``_cutline_deleted.table``, as ``write_changes`` makes them)."""
        conn = self.file.renew()  # gives back what staging appended, before the diff
        conn.execute(f"ATTACH {quote_text(str(self.previous))} AS {PREVIOUS} (READ_ONLY)")
        try:
            changes = write_changes(conn, STAGED, table, columns, key_columns)
        except duckdb.OutOfMemoryException:
            log.warning(
                "the diff of table %r does not fit in %s: running it without that bound",
                table,
                DIFF_MEMORY,
            )
            target = quote_identifier(table)
            conn.execute(f"DROP TABLE IF EXISTS {target}")
            conn.execute(f"DROP TABLE IF EXISTS {DELETED_SCHEMA}.{target}")
            conn.execute("RESET memory_limit")
            changes = write_changes(conn, STAGED, table, columns, key_columns)
        conn.execute(f"DETACH {PREVIOUS}")
        self.file.close()
        target = quote_identifier(table)
        db.execute(f"ATTACH {quote_text(str(self.file.path))} AS {_SCRATCH} (READ_ONLY)")
        try:
            db.execute(f"CREATE TABLE {target} AS SELECT * FROM {_SCRATCH}.main.{target}")
            db.execute(f"CREATE SCHEMA IF NOT EXISTS {DELETED_SCHEMA}")
            db.execute(
                f"CREATE TABLE {DELETED_SCHEMA}.{target} AS "
                f"SELECT * FROM {_SCRATCH}.{DELETED_SCHEMA}.{target}"
            )
        finally:
            db.execute(f"DETACH {_SCRATCH}")
        return changes

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
