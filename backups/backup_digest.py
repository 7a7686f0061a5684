"""A backup's digest recomputed from its own content, over the values restore gives back.

The backup keeps SQLite values as DuckDB types. For a column whose values all have one
storage class (BIGINT: integers, DOUBLE: reals, VARCHAR: text, BLOB: blobs) the values are
exact and restore puts each back with the class it came from, so the digest is computed
over the DuckDB values directly. A column the snapshotter had to widen (several storage
classes kept as text, or integers kept as DOUBLE) may come back from restore with another
storage class than the primary had: for such a table the digest is computed the way
restore would put the rows back (the primary's CREATE TABLE in a scratch SQLite database,
its affinity applied): the manifest names those ``widened_columns``, and records that
``restored_digest`` beside the primary's when the two differ (restore is then not the
primary value for value in that table, and the manifest says so); ``verify`` checks
every value either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from sqlite3 import connect as sqlite_connect
from typing import Any

import duckdb

from producers.digest import (
    CHUNK_ROWS,
    DigestAccumulator,
    TableDigest,
    digest_table,
    table_columns,
)
from producers.sqlite_changelog import quote_identifier


def restored_digest(
    table: str, ddl: str, columns: Sequence[str], rows: Iterable[tuple]
) -> TableDigest:
    """The digest of ``rows`` once inserted through the primary's own DDL (as restore does)."""
    from backups.readers.restore import _sqlite_value  # restore imports verify, which imports us

    scratch = sqlite_connect(":memory:", isolation_level=None)
    try:
        scratch.execute(ddl)
        names = ",".join(map(quote_identifier, columns))
        marks = ",".join("?" * len(columns))
        scratch.execute("BEGIN")
        scratch.executemany(
            f"INSERT INTO {quote_identifier(table)} ({names}) VALUES ({marks})",
            ([_sqlite_value(v) for v in row] for row in rows),
        )
        scratch.execute("COMMIT")
        order = table_columns(scratch, table)
        if order != list(columns):
            raise ValueError(f"the CREATE TABLE of {table!r} defines {order}, not {list(columns)}")
        return digest_table(scratch, table)
    finally:
        scratch.close()


def duckdb_digest(
    db: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], ddl: str | None
) -> TableDigest:
    """Digest of a (resolved) backup table: directly, or through ``ddl`` when given."""
    names = ",".join(map(quote_identifier, columns))
    cursor = db.execute(f"SELECT {names} FROM {quote_identifier(table)}")
    if ddl is not None:
        return restored_digest(table, ddl, columns, _all_rows(cursor))
    acc = DigestAccumulator()
    while chunk := cursor.fetchmany(CHUNK_ROWS):
        acc.add([tuple(_plain(v) for v in row) for row in chunk])
    return acc.result(table)


def _all_rows(cursor: Any) -> Iterable[tuple]:
    while chunk := cursor.fetchmany(CHUNK_ROWS):
        yield from chunk


def _plain(value: Any) -> Any:
    """DuckDB gives BLOBs as bytes already; anything else unusual as restore would."""
    if value is None or type(value) in (int, float, str, bytes):
        return value
    from backups.readers.restore import _sqlite_value

    return _sqlite_value(value)


def digest_problems(
    label: str, database: Path, tables: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Each table of a (resolved, full) backup database whose content disagrees with the
    digest its manifest records, as one sentence naming the table."""
    problems: list[str] = []
    db = duckdb.connect(str(database), read_only=True)
    try:
        ddl = dict(db.execute("SELECT table_name, ddl FROM _cutline_tables").fetchall())
        for table, info in tables.items():
            expected = info.get("restored_digest") or info.get("digest")
            if expected is None:
                continue  # written before backups carried a digest
            columns = [c["name"] for c in info["columns"]]
            through = ddl.get(table) if info.get("widened_columns") else None
            found = duckdb_digest(db, table, columns, through)
            if (found.rows, found.hex) != (int(expected["rows"]), str(expected["hash"])):
                problems.append(
                    f"{label}: table {table!r} does not match its digest: it holds {found.rows} "
                    f"rows (digest {found.hex}), the digest recorded at the cut says "
                    f"{expected['rows']} rows ({expected['hash']}); the backup was altered "
                    "after it was written"
                )
    finally:
        db.close()
    return problems
