"""Which keys of each table changed since a marker: kept by the shard, read by incrementals.

Writer side (:func:`track`, called by ``Shard.define``): per captured table with a real
key, a table ``_cutline_changed:T`` (the key columns, with T's declared types, and
``after_marker``) and triggers on T that upsert the key of every inserted, updated
(old and new key) and deleted row, tagged with the shard's last reached marker. Triggers
run in the transaction of the write itself, so the record is exactly as durable as the
change, whatever path wrote it. ``_cutline_tracked`` says from which parent marker the
record is complete (``covers_from``) and whether a NULL ever appeared in the key.

Until the shard reaches its first marker nothing is recorded (``covers_from`` is
``NOT_YET``): no incremental can have a parent before that marker, so a record of the
initial load would only cost the load (its triggers halved the insert rate) and a prune
of every row afterwards. :func:`start_pending`, in the transaction that reaches the first
marker M, creates the triggers; from that instant every change is recorded, so the record
covers parent M.

Reader side (:func:`touched_keys`, :func:`touched_rows`): the keys changed after parent
backup P's cut (``after_marker >= P``, so a failed cut in between loses nothing), and the
current rows of those keys, from the snapshotter's pinned connections, by key lookups.

Pruning (:func:`prune`): once backup M is published, no later incremental has a parent
before M, so entries tagged before M go and ``covers_from`` moves up to M.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from producers.sqlite_changelog import quote_identifier
from schemas.records import TableDefinition

TRACKED = "_cutline_tracked"
CHANGED_PREFIX = "_cutline_changed:"
STATE = "_cutline_state"  # replica.STATE (not imported: replica imports this module)
ROWID = "rowid"
NOT_YET = 1 << 62  # covers_from while the shard has reached no marker: nothing recorded
SLICE_ROWS = 32_768  # touched keys or rows a reader holds as Python objects at once


def changed_table(table: str) -> str:
    return quote_identifier(CHANGED_PREFIX + table)


def trackable(definition: TableDefinition) -> bool:
    """A table whose key is real columns (not SQLite's hidden rowid)."""
    keys = definition.key_columns
    return bool(keys) and keys != (ROWID,) and all(k in definition.column_names for k in keys)


def _ensure_tracked_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {TRACKED} (tbl TEXT PRIMARY KEY, "
        "covers_from INTEGER NOT NULL, null_key INTEGER NOT NULL)"
    )


def _trigger(table: str, kind: str) -> str:
    return quote_identifier(f"_cutline_changed_{kind}:{table}")


def untrack(conn: sqlite3.Connection, table: str) -> None:
    _ensure_tracked_table(conn)
    for kind in ("insert", "update", "delete", "null"):
        conn.execute(f"DROP TRIGGER IF EXISTS {_trigger(table, kind)}")
    conn.execute(f"DROP TABLE IF EXISTS {changed_table(table)}")
    conn.execute(f"DELETE FROM {TRACKED} WHERE tbl = ?", (table,))


def track(conn: sqlite3.Connection, definition: TableDefinition, partition: int) -> None:
    """Start recording the changed keys of ``definition.table`` (idempotent per layout).

    The record covers parents after the shard's last reached marker F (changes since F's
    cut up to now were not recorded): ``covers_from`` = F + 1. A shard that has reached no
    marker records nothing yet (``NOT_YET``; :func:`start_pending` starts it).
    """
    _ensure_tracked_table(conn)
    table = definition.table
    if conn.execute(f"SELECT 1 FROM {TRACKED} WHERE tbl = ?", (table,)).fetchone():
        return
    untrack(conn, table)
    if not trackable(definition):
        return
    declared = {c.name: c.declared_type for c in definition.columns}
    keys = definition.key_columns
    cols = [quote_identifier(k) for k in keys]
    # the key's declared types: the same affinity, so the same stored values as in T
    col_defs = ", ".join(f"{c} {declared[k]}" for c, k in zip(cols, keys, strict=True))
    chg, target = changed_table(table), quote_identifier(table)
    conn.execute(
        f"CREATE TABLE {chg} ({col_defs}, after_marker INTEGER NOT NULL, "
        f"PRIMARY KEY ({', '.join(cols)}))"
    )
    any_null = " OR ".join(f"NEW.{c} IS NULL" for c in cols)
    conn.execute(
        f"CREATE TRIGGER {_trigger(table, 'null')} AFTER INSERT ON {target} "
        f"WHEN {any_null} BEGIN UPDATE {TRACKED} SET null_key = 1 WHERE tbl = "
        f"{_literal(table)}; END"
    )
    null_now = " OR ".join(f"{c} IS NULL" for c in cols)
    (has_null,) = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM {target} WHERE {null_now})"
    ).fetchone()
    row = conn.execute(f"SELECT marker_id FROM {STATE} WHERE partition = ?", (partition,))
    state = row.fetchone()
    reached = state[0] if state else 0
    if reached:
        _record_changes(conn, definition, partition)
    covers_from = reached + 1 if reached else NOT_YET
    conn.execute(
        f"INSERT INTO {TRACKED} VALUES (?, ?, ?)", (table, covers_from, int(bool(has_null)))
    )


def _record_changes(conn: sqlite3.Connection, definition: TableDefinition, partition: int) -> None:
    """The triggers that upsert each changed key, tagged with the shard's last marker."""
    table = definition.table
    cols = [quote_identifier(k) for k in definition.key_columns]
    chg, target = changed_table(table), quote_identifier(table)
    marker = f"(SELECT marker_id FROM {STATE} WHERE partition = {int(partition)})"

    def upsert(image: str) -> str:
        values = ", ".join(f"{image}.{c}" for c in cols)
        return (
            f"INSERT INTO {chg} ({', '.join(cols)}, after_marker) VALUES ({values}, {marker}) "
            f"ON CONFLICT ({', '.join(cols)}) DO UPDATE SET after_marker = excluded.after_marker;"
        )

    conn.execute(
        f"CREATE TRIGGER {_trigger(table, 'insert')} AFTER INSERT ON {target} "
        f"BEGIN {upsert('NEW')} END"
    )
    conn.execute(
        f"CREATE TRIGGER {_trigger(table, 'update')} AFTER UPDATE ON {target} "
        f"BEGIN {upsert('OLD')} {upsert('NEW')} END"
    )
    conn.execute(
        f"CREATE TRIGGER {_trigger(table, 'delete')} AFTER DELETE ON {target} "
        f"BEGIN {upsert('OLD')} END"
    )


def start_pending(
    conn: sqlite3.Connection,
    definitions: Mapping[str, TableDefinition],
    partition: int,
    marker_id: int,
) -> None:
    """In the transaction that reaches ``marker_id``: start recording the tables still
    ``NOT_YET``. Every change after this marker's cut is then recorded, so the record
    covers parent ``marker_id`` itself."""
    query = f"SELECT tbl FROM {TRACKED} WHERE covers_from = ?"
    try:
        pending = [t for (t,) in conn.execute(query, (NOT_YET,))]
    except sqlite3.OperationalError:  # no table was ever tracked on this shard
        return
    for table in pending:
        definition = definitions.get(table)
        if definition is None or not trackable(definition):
            continue
        _record_changes(conn, definition, partition)
        conn.execute(f"UPDATE {TRACKED} SET covers_from = ? WHERE tbl = ?", (marker_id, table))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def coverage_problem(
    conn: sqlite3.Connection, definition: TableDefinition, parent_marker_id: int
) -> str | None:
    """Why this shard's record cannot give the changes since ``parent_marker_id`` (or None)."""
    if not trackable(definition):
        return "its key is SQLite's rowid"
    try:
        row = conn.execute(
            f"SELECT covers_from, null_key FROM {TRACKED} WHERE tbl = ?", (definition.table,)
        ).fetchone()
    except sqlite3.OperationalError:
        row = None
    if row is None:
        return "the replica records no changed keys for it"
    covers_from, null_key = row
    if null_key:
        return "a NULL appeared in its key"
    if covers_from == NOT_YET:
        return "the shard had reached no marker since the table was defined"
    if covers_from > parent_marker_id:
        return f"changed keys are recorded only since marker {covers_from - 1}"
    return None


def touched_keys(
    conn: sqlite3.Connection,
    definition: TableDefinition,
    parent_marker_id: int,
) -> Iterator[list[tuple]]:
    """Keys inserted, updated or deleted after the cut of ``parent_marker_id``, in slices
    of at most ``SLICE_ROWS``: a reader holds one slice as Python objects at a time."""
    cols = ", ".join(quote_identifier(k) for k in definition.key_columns)
    yield from _slices(
        conn,
        f"SELECT {cols} FROM {changed_table(definition.table)} WHERE after_marker >= ?",
        (parent_marker_id,),
    )


def touched_rows(
    conn: sqlite3.Connection,
    definition: TableDefinition,
    parent_marker_id: int,
) -> Iterator[list[tuple]]:
    """The current rows of the touched keys (each a key lookup in T), in slices."""
    cols = ", ".join(f"t.{quote_identifier(c)}" for c in definition.column_names)
    on = " AND ".join(
        f"t.{quote_identifier(k)} = c.{quote_identifier(k)}" for k in definition.key_columns
    )
    yield from _slices(
        conn,
        f"SELECT {cols} FROM {changed_table(definition.table)} c "
        f"JOIN {quote_identifier(definition.table)} t ON {on} WHERE c.after_marker >= ?",
        (parent_marker_id,),
    )


def _slices(conn: sqlite3.Connection, sql: str, params: tuple) -> Iterator[list[tuple]]:
    cursor = conn.execute(sql, params)
    try:
        while rows := cursor.fetchmany(SLICE_ROWS):
            yield rows
    finally:
        cursor.close()


def prune(shard_paths: Sequence[Path], published_marker_id: int, busy_ms: int = 2000) -> None:
    """After backup M is published: forget changes tagged before M (best effort).

    A shard that is busy keeps its entries; the next publish prunes them. Entries kept
    longer cost space, never exactness.
    """
    for path in shard_paths:
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=busy_ms / 1000)
        except sqlite3.Error:
            continue
        try:
            conn.execute("BEGIN IMMEDIATE")
            tables = [t for (t,) in conn.execute(f"SELECT tbl FROM {TRACKED}")]
            for table in tables:
                conn.execute(
                    f"DELETE FROM {changed_table(table)} WHERE after_marker < ?",
                    (published_marker_id,),
                )
            conn.execute(
                f"UPDATE {TRACKED} SET covers_from = max(covers_from, ?)", (published_marker_id,)
            )
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            conn.close()
