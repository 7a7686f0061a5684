"""SQL over backups, with DuckDB, read-only: one backup, or every backup of a source.

Read-only takes three locks, because a read-only DuckDB file alone still lets a statement
write elsewhere (``COPY ... TO``, ``EXPORT DATABASE``, ``ATTACH`` another file,
``INSTALL``):

1. only reading statement types pass (``SELECT``, ``EXPLAIN``, ``PRAGMA``, ``CALL``;
   ``DESCRIBE``, ``SHOW``, ``SUMMARIZE`` and ``FROM t`` parse as ``SELECT``), checked with
   DuckDB's own parser before anything runs;
2. the database is opened ``read_only`` (an incremental backup resolves to a temp file
   that is opened read-only too);
3. after setup, ``enable_external_access`` is turned off and the configuration locked, so
   no file outside the opened databases can be read or written, even by a statement
   nested in ``EXPLAIN ANALYZE``.

``--all`` builds a small DuckDB file of views, one per table: the same table in every
backup, ``UNION ALL BY NAME`` (so a column whose type differs between backups is widened),
with the backup's ``marker_id`` and ``t1`` as the first two columns.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import duckdb

from backups.catalog import Backup
from backups.chain import resolved_database
from cutline.errors import CutlineError
from producers.markers import format_time
from producers.sqlite_changelog import quote_identifier, quote_text

READING_STATEMENTS = frozenset(
    {
        duckdb.StatementType.SELECT,
        duckdb.StatementType.EXPLAIN,
        duckdb.StatementType.PRAGMA,
        duckdb.StatementType.CALL,
    }
)
# Columns --all adds to every table; a table with its own column of that name gets
# ``_cutline_<name>`` instead (``_cutline_backup`` already holds both, with these values).
HISTORY_COLUMNS = ("marker_id", "t1")
META_TABLE = "_cutline_backup"  # the snapshotter's table of the backup's own marker and T1

Result = tuple[list[str], list[tuple[Any, ...]]]


class QueryError(CutlineError):
    """The SQL could not be run against the backup."""


def check_read_only(sql: str) -> None:
    """Refuse, before running anything, a statement that is not a plain read."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL error: {exc}") from exc
    if not statements:
        raise QueryError('no SQL statement given, e.g. "SELECT count(*) FROM accounts"')
    for statement in statements:
        if statement.type not in READING_STATEMENTS:
            kind = statement.type.name.replace("_", " ")
            raise QueryError(
                f"backups are read-only: this is a {kind} statement, and cutline query runs "
                "only SELECT (also FROM, WITH, DESCRIBE, SHOW, SUMMARIZE), EXPLAIN, PRAGMA "
                "and CALL; to change data, `cutline restore` a backup to a SQLite file"
            )


def run_query(backup: Backup, sql: str) -> Result:
    """Run ``sql`` on ``backup``; return column names and rows."""
    check_read_only(sql)
    label = f"backup {backup.marker_id}"
    with resolved_database(backup) as path:
        conn = _connect_read_only(path, f"cannot open backup {backup.marker_id} ({path})")
        try:
            _lock_down(conn)
            return _execute(conn, sql, label)
        finally:
            conn.close()


def run_query_all(backups: list[Backup], sql: str) -> Result:
    """Run ``sql`` over every backup in ``backups``: each table gains marker_id and t1."""
    check_read_only(sql)
    if not backups:
        raise QueryError("no backups to query")
    with ExitStack() as stack:
        resolved = [(b, stack.enter_context(resolved_database(b))) for b in backups]
        history = stack.enter_context(_history_database(resolved))
        conn = _connect_read_only(history, "cannot open the history of backups")
        stack.callback(conn.close)
        try:
            for backup, path in resolved:
                _attach(conn, backup, path)
        except duckdb.Error as exc:
            raise QueryError(f"cannot open the backups for --all: {exc}") from exc
        _lock_down(conn)
        markers = f"{backups[0].marker_id}..{backups[-1].marker_id}"
        return _execute(conn, sql, f"the backups of markers {markers}")


def history_alias(backup: Backup) -> str:
    """The catalog name one backup is attached under in ``--all`` queries."""
    return f"_cutline_marker_{backup.marker_id}"


@contextmanager
def _history_database(resolved: list[tuple[Backup, Path]]) -> Iterator[Path]:
    """A temp DuckDB file of views over every backup; valid inside the ``with`` block."""
    with tempfile.TemporaryDirectory(prefix="cutline-query-all-") as tmp:
        path = Path(tmp) / "history.duckdb"
        conn = duckdb.connect(str(path))
        try:
            tables: dict[str, list[str]] = {}
            for backup, backup_path in resolved:
                _attach(conn, backup, backup_path)
                for (name,) in conn.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE database_name = ? "
                    "AND schema_name = 'main' ORDER BY table_name",
                    [history_alias(backup)],
                ).fetchall():
                    tables.setdefault(name, []).append(_history_select(conn, backup, name))
            for name, selects in tables.items():
                conn.execute(
                    f"CREATE VIEW {quote_identifier(name)} AS "
                    + " UNION ALL BY NAME ".join(selects)
                )
        except duckdb.Error as exc:
            raise QueryError(f"cannot combine the backups for --all: {exc}") from exc
        finally:
            conn.close()
        yield path


def _history_select(conn: duckdb.DuckDBPyConnection, backup: Backup, table: str) -> str:
    alias = history_alias(backup)
    own = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = ? "
            "AND schema_name = 'main' AND table_name = ?",
            [alias, table],
        ).fetchall()
    }
    values = {
        "marker_id": f"{int(backup.marker_id)}::BIGINT",
        "t1": f"TIMESTAMPTZ '{format_time(backup.t1_us)}'",
    }
    added = []
    for column in HISTORY_COLUMNS:
        if column not in own:
            added.append(f"{values[column]} AS {column}")
        elif table != META_TABLE:  # a column of the primary's own: keep it, rename ours
            added.append(f"{values[column]} AS _cutline_{column}")
    prefix = ", ".join(added) + ", " if added else ""
    return f"SELECT {prefix}* FROM {alias}.main.{quote_identifier(table)}"


def _attach(conn: duckdb.DuckDBPyConnection, backup: Backup, path: Path) -> None:
    conn.execute(f"ATTACH {quote_text(str(path))} AS {history_alias(backup)} (READ_ONLY)")


def _connect_read_only(path: Path, what: str) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise QueryError(f"{what}: {exc}") from exc


def _lock_down(conn: duckdb.DuckDBPyConnection) -> None:
    """Times in UTC, no file access beyond the opened databases, no more settings."""
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET enable_external_access = false")
    conn.execute("SET lock_configuration = true")


def _execute(conn: duckdb.DuckDBPyConnection, sql: str, label: str) -> Result:
    try:
        result = conn.execute(sql)
    except duckdb.Error as exc:
        message = str(exc)
        lowered = message.lower()
        if "read-only" in lowered:
            raise QueryError(
                f"backups are read-only; this statement would write ({label}): {message}"
            ) from exc
        if "disabled by configuration" in lowered:
            raise QueryError(
                f"queries see only the backups, no other file ({label}): {message}"
            ) from exc
        raise QueryError(f"SQL error on {label}: {message}") from exc
    if result.description is None:
        return [], []
    columns = [d[0] for d in result.description]
    return columns, result.fetchall()
