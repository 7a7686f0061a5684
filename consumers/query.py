"""SQL over a backup, with DuckDB, read-only.

The backup's DuckDB file is opened read-only, so a statement that would write is refused
by DuckDB itself; we only turn its message into one that says what to do.
"""

from __future__ import annotations

from typing import Any

import duckdb

from consumers.catalog import Backup
from cutline.errors import CutlineError


class QueryError(CutlineError):
    """The SQL could not be run against the backup."""


def run_query(backup: Backup, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` on ``backup``; return column names and rows."""
    try:
        conn = duckdb.connect(str(backup.duckdb_path), read_only=True)
    except duckdb.Error as exc:
        raise QueryError(
            f"cannot open backup {backup.marker_id} ({backup.duckdb_path}): {exc}"
        ) from exc
    try:
        try:
            result = conn.execute(sql)
        except duckdb.Error as exc:
            message = str(exc)
            if "read-only" in message.lower():
                raise QueryError(
                    f"backups are read-only; this statement would change backup "
                    f"{backup.marker_id}: {message}"
                ) from exc
            raise QueryError(f"SQL error on backup {backup.marker_id}: {message}") from exc
        if result.description is None:
            return [], []
        columns = [d[0] for d in result.description]
        return columns, result.fetchall()
    finally:
        conn.close()
