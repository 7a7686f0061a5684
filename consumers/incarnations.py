"""A restored primary's first content replaces the replica's: incarnations per table.

When a source moves to its primary restored from a backup (``capture --new-incarnation``),
the new incarnation publishes its own initial snapshot of every table, after table
definitions that carry the higher incarnation. Rows of the old incarnation that the
restored primary no longer holds would otherwise stay in the replica and in every later
backup; so a shard that sees a table defined with a higher incarnation than it holds
drops that table first, inside the same batch, and the snapshot that follows rebuilds it.
"""

from __future__ import annotations

import sqlite3

from producers.sqlite_changelog import quote_identifier
from schemas.records import TableDefinition

INCARNATIONS = "_cutline_incarnations"
SHARD_TABLES = "_cutline_tables"


def enter_incarnation(conn: sqlite3.Connection, definition: TableDefinition) -> bool:
    """Record the table's incarnation; True if it is newer and the table was dropped.

    Runs inside the shard's open write transaction.
    """
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {INCARNATIONS} "
        "(tbl TEXT PRIMARY KEY, incarnation INTEGER NOT NULL)"
    )
    row = conn.execute(
        f"SELECT incarnation FROM {INCARNATIONS} WHERE tbl = ?", (definition.table,)
    ).fetchone()
    held = row[0] if row else 0
    if row is not None and definition.incarnation <= held:
        return False
    conn.execute(
        f"INSERT OR REPLACE INTO {INCARNATIONS} VALUES (?, ?)",
        (definition.table, definition.incarnation),
    )
    if definition.incarnation <= held:  # first definition of a table seen at incarnation 0
        return False
    conn.execute(f"DROP TABLE IF EXISTS {quote_identifier(definition.table)}")
    conn.execute(f"DELETE FROM {SHARD_TABLES} WHERE tbl = ?", (definition.table,))
    return True
