"""Schema changes on captured tables: followed exactly, or refused before anything is wrong.

SQLite bumps ``PRAGMA schema_version`` on every DDL. cutline records the version as of the
last time it checked its triggers (``_cutline_schema``, written after its own CREATE
TRIGGERs, which bump it too) and each captured table's definition (``_cutline_definitions``).
:func:`ensure_schema` runs inside a write transaction whenever the version moved: at
capture's start, before capture reads a batch, before every marker request, and in
``cutline migrate``. For each captured table whose definition or triggers changed it
*re-installs* capture: new triggers for the new layout, an ``'S'`` row in the change log
carrying the old and the new definition, then the table's whole content as ``'I'`` rows.
A table that is gone, renamed, or lost its PRIMARY KEY raises ConfigError instead, so
capture stops before it publishes anything after the change.

Why this is exact:

* Changes logged before the DDL are in the old layout and precede the ``'S'`` row; capture
  turns them into operations with the old layout (``layouts_at`` gives the layout valid
  at any position of the log, from the ``'S'`` rows' *before* definitions).
* Changes committed between the DDL and the fix-up are logged in the old layout (ADD
  COLUMN keeps the old triggers; RENAME COLUMN rewrites them) or not at all (the
  create-copy-drop-rename recipe drops them). Either way they precede the ``'S'`` row.
* The ``'S'`` row becomes a TableDefinition on every partition, in commit order: each
  replica shard drops its copy of the table and creates it from the new DDL; the ``'I'``
  rows that follow restore exactly the content at the fix-up's commit.
* A marker request runs ensure_schema in its own write transaction before writing the
  marker row, so no marker can fall between a DDL and its fix-up: every cut sees either
  the old table (and old layout) or the re-installed one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3

from cutline.errors import ConfigError
from producers.sqlite_changelog import (
    CHANGES,
    KIND_SCHEMA,
    TABLES,
    copy_rows,
    create_triggers,
    describe_table,
    installed_tables,
    now_us,
    quote_identifier,
    trigger_sql,
)
from producers.triggers import trigger_names, triggers_ahead_of_capture
from schemas.records import Column, TableDefinition

log = logging.getLogger("cutline.capture")

SCHEMA = "_cutline_schema"
DEFINITIONS = "_cutline_definitions"

_OUR_TRIGGERS = (
    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
    "AND name LIKE '\\_cutline\\_%' ESCAPE '\\' ORDER BY name"
)


def definition_json(definition: TableDefinition) -> str:
    """A definition as stored in the change log and in ``_cutline_definitions``."""
    return json.dumps(
        {
            "table": definition.table,
            "ddl": definition.ddl,
            "columns": [[c.name, c.declared_type, c.not_null] for c in definition.columns],
            "key_columns": list(definition.key_columns),
        }
    )


def definition_from_json(text: str, source: str) -> TableDefinition:
    data = json.loads(text)
    return TableDefinition(
        source=source,
        table=data["table"],
        ddl=data["ddl"],
        columns=tuple(Column(n, t, bool(nn)) for n, t, nn in data["columns"]),
        key_columns=tuple(data["key_columns"]),
    )


def reinstalled_definition(table: str, after: str | None, source: str) -> TableDefinition:
    """The definition an ``'S'`` row announces, marked so that replicas rebuild the table.

    A table no longer captured (``after`` NULL) is announced with no DDL and no columns:
    replicas drop their copy.
    """
    if after is None:
        return TableDefinition(source, table, "", (), (), reinstalled=True)
    return dataclasses.replace(definition_from_json(after, source), reinstalled=True)


def _create_tables(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {SCHEMA} "
        "(id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
    )
    conn.execute(f"INSERT OR IGNORE INTO {SCHEMA} VALUES (1, -1)")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {DEFINITIONS} (tbl TEXT PRIMARY KEY, definition TEXT NOT NULL)"
    )


def schema_moved(conn: sqlite3.Connection) -> bool:
    """True when a DDL ran since cutline last checked (cheap: one row, one pragma)."""
    try:
        recorded, live = conn.execute(
            f"SELECT (SELECT version FROM {SCHEMA} WHERE id = 1), "
            "(SELECT schema_version FROM pragma_schema_version)"
        ).fetchone()
    except sqlite3.OperationalError:
        return True  # not set up yet
    return bool(recorded != live)


def ensure_schema(conn: sqlite3.Connection) -> list[str]:
    """Follow schema changes of captured tables; return the tables re-installed.

    Must run inside the caller's write transaction (BEGIN IMMEDIATE): the check, the
    re-install and the new recorded version commit together with what the caller writes.
    """
    _create_tables(conn)
    if not schema_moved(conn):
        return []
    reinstalled = [t for t in installed_tables(conn) if _reconcile(conn, t)]
    conn.execute(
        f"UPDATE {SCHEMA} SET version = (SELECT schema_version FROM pragma_schema_version)"
    )
    for table in reinstalled:
        log.info(
            "table %r changed layout or lost capture's triggers: capture re-installed it "
            "(new triggers, the new definition and its whole content are in the change log)",
            table,
        )
    return reinstalled


def follow_schema_changes(conn: sqlite3.Connection) -> list[str]:
    """:func:`ensure_schema` in a write transaction of its own."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        reinstalled = ensure_schema(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return reinstalled


def recorded_definition(conn: sqlite3.Connection, table: str, source: str = "") -> TableDefinition:
    row = conn.execute(f"SELECT definition FROM {DEFINITIONS} WHERE tbl = ?", (table,)).fetchone()
    if row is None:
        return describe_table(conn, source, table)  # not followed yet: as it is now
    return definition_from_json(row[0], source)


def layouts_at(conn: sqlite3.Connection, source: str, after_seq: int) -> dict[str, TableDefinition]:
    """Each captured table's definition as of change ``after_seq`` of the change log.

    The change rows after ``after_seq`` and before a table's first later ``'S'`` row are in
    that row's *before* layout; with no later ``'S'`` row, the recorded definition holds.
    (A table let go later is still listed: its rows before that point are published.)
    """
    out: dict[str, TableDefinition] = {}
    for table, before in conn.execute(
        f"SELECT tbl, before FROM {CHANGES} WHERE kind = ? AND seq > ? ORDER BY seq DESC",
        (KIND_SCHEMA, after_seq),
    ):
        out[table] = definition_from_json(before, source)  # the earliest row wins
    for table in installed_tables(conn):
        if table not in out:
            out[table] = recorded_definition(conn, table, source)
    return dict(sorted(out.items()))


def _reconcile(conn: sqlite3.Connection, table: str) -> bool:
    """Check one captured table; re-install it if it changed. True if re-installed."""
    if not _table_exists(conn, table):
        raise ConfigError(_gone(conn, table))
    try:
        live = describe_table(conn, "", table)
    except ConfigError:
        raise ConfigError(
            f"captured table {table!r} was changed and no longer has a PRIMARY KEY; capture "
            "stopped before publishing anything after the change: give it a PRIMARY KEY "
            "again (SQLite's create-copy-drop-rename recipe), then start capture again"
        ) from None
    present = [sql for _, sql in conn.execute(_OUR_TRIGGERS, (table,))]
    triggers_ok = _normalized(present) == _normalized(trigger_sql(conn, live))
    if triggers_ok and triggers_ahead_of_capture(conn, table):
        # an application trigger newer than cutline's fires first, so changes it makes to
        # this table would be logged before the statement's own: re-install (cutline's
        # triggers become the newest again, and the copy makes the replica exact)
        triggers_ok = False
    row = conn.execute(f"SELECT definition FROM {DEFINITIONS} WHERE tbl = ?", (table,)).fetchone()
    if row is None:
        return _first_record(conn, table, live, triggers_ok)
    recorded = definition_from_json(row[0], "")
    if recorded == live and triggers_ok:
        return False
    _reinstall(conn, row[0], live)
    return True


def _normalized(statements: list[str]) -> list[str]:
    """Trigger SQL compared as SQLite keeps it: no IF NOT EXISTS, whitespace runs as one."""
    out = []
    for statement in statements:
        text = " ".join(statement.split())
        out.append(text.replace("CREATE TRIGGER IF NOT EXISTS ", "CREATE TRIGGER ", 1))
    return sorted(out)


def _reinstall(conn: sqlite3.Connection, before_json: str, live: TableDefinition) -> None:
    """New triggers, the 'S' row (old and new definition), then the whole content."""
    table = live.table
    drop_triggers(conn, table)
    create_triggers(conn, live)
    announce(conn, before_json, live)
    copy_rows(conn, live)
    conn.execute(
        f"UPDATE {TABLES} SET columns = ?, key_columns = ? WHERE tbl = ?",
        (",".join(live.column_names), ",".join(live.key_columns), table),
    )


def announce(conn: sqlite3.Connection, before_json: str, live: TableDefinition) -> None:
    """The 'S' row (rows before it are in the old layout, rows after it in the new one),
    and the new definition recorded for later checks."""
    conn.execute(
        f"INSERT INTO {CHANGES}(kind, tbl, before, after, at_us) VALUES (?, ?, ?, ?, ?)",
        (KIND_SCHEMA, live.table, before_json, definition_json(live), now_us()),
    )
    _record(conn, live)


def uncapture(conn: sqlite3.Connection, table: str) -> None:
    """Stop capturing a table that was dropped or renamed on purpose (``cutline migrate``).

    Inside the caller's write transaction: its triggers (wherever a rename took them) and
    its records go, and an 'S' row with no new definition tells replicas to drop it;
    backups after it no longer hold the table.
    """
    row = conn.execute(f"SELECT definition FROM {DEFINITIONS} WHERE tbl = ?", (table,)).fetchone()
    before = row[0] if row is not None else definition_json(_legacy_definition(conn, table))
    for name in _trigger_names(definition_from_json(before, "")):
        conn.execute(f"DROP TRIGGER IF EXISTS {quote_identifier(name)}")
    conn.execute(
        f"INSERT INTO {CHANGES}(kind, tbl, before, after, at_us) VALUES (?, ?, ?, NULL, ?)",
        (KIND_SCHEMA, table, before, now_us()),
    )
    conn.execute(f"DELETE FROM {TABLES} WHERE tbl = ?", (table,))
    conn.execute(f"DELETE FROM {DEFINITIONS} WHERE tbl = ?", (table,))
    log.info("table %r is no longer captured; backups from the next marker on lack it", table)


def _trigger_names(definition: TableDefinition) -> list[str]:
    """The names of capture's triggers for this table (they follow it through a rename)."""
    return trigger_names(definition.table)


def _legacy_definition(conn: sqlite3.Connection, table: str) -> TableDefinition:
    """What a cutline that kept only column names knew of a table."""
    columns, keys = conn.execute(
        f"SELECT columns, key_columns FROM {TABLES} WHERE tbl = ?", (table,)
    ).fetchone()
    names = tuple(Column(name, "") for name in columns.split(","))
    return TableDefinition("", table, "", names, tuple(keys.split(",")))


def _first_record(
    conn: sqlite3.Connection, table: str, live: TableDefinition, triggers_ok: bool
) -> bool:
    """A table installed just now (or by a cutline that did not follow schema changes)."""
    (columns,) = conn.execute(f"SELECT columns FROM {TABLES} WHERE tbl = ?", (table,)).fetchone()
    if triggers_ok and columns == ",".join(live.column_names):
        _record(conn, live)
        return False
    # changed under a cutline that kept only the column names: rows logged before this
    # are in that layout (the replica compares names only for a definition sent again)
    _reinstall(conn, definition_json(_legacy_definition(conn, table)), live)
    return True


def _record(conn: sqlite3.Connection, definition: TableDefinition) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO {DEFINITIONS}(tbl, definition) VALUES (?, ?)",
        (definition.table, definition_json(definition)),
    )


def drop_triggers(conn: sqlite3.Connection, table: str) -> None:
    """Drop capture's triggers on ``table`` (the caller re-installs it in the same transaction)."""
    for name, _ in conn.execute(_OUR_TRIGGERS, (table,)).fetchall():
        conn.execute(f"DROP TRIGGER {quote_identifier(name)}")


def _table_exists(conn: sqlite3.Connection, table: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return found is not None


def _gone(conn: sqlite3.Connection, table: str) -> str:
    """Why a captured table is missing, and what to do, in one line."""
    row = conn.execute(f"SELECT definition FROM {DEFINITIONS} WHERE tbl = ?", (table,)).fetchone()
    known = definition_from_json(row[0], "") if row else _legacy_definition(conn, table)
    names = _trigger_names(known)
    moved = conn.execute(
        "SELECT tbl_name FROM sqlite_master WHERE type = 'trigger' AND name = ?",
        (names[0] if names else "",),
    ).fetchone()
    if moved is not None and moved[0] != table:
        return (
            f"captured table {table!r} was renamed to {moved[0]!r}; capture does not follow a "
            f"renamed table and stopped before publishing anything after it: rename it back "
            f"(ALTER TABLE {quote_identifier(moved[0])} RENAME TO {quote_identifier(table)}) "
            "and start capture again; or stop capturing it: cutline migrate --db PATH "
            f"'DROP TABLE IF EXISTS {quote_identifier(table)}', then start capture with "
            f"--tables naming {moved[0]!r} instead"
        )
    return (
        f"captured table {table!r} no longer exists in the primary; capture stopped before "
        "publishing anything after it: if a migration is under way, finish it (e.g. rename the "
        f"new table to {table!r}) and start capture again; if it was dropped for good, stop "
        f"capturing it: cutline migrate --db PATH 'DROP TABLE IF EXISTS {quote_identifier(table)}'"
        ", then start capture without it in --tables"
    )


def split_statements(sql: str) -> list[str]:
    """SQL text as complete statements (a ';' inside a string or a trigger body stays)."""
    statements, pending = [], ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \t\r\n;"):
        statements.append(pending.strip().rstrip(";"))
    return statements


_TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})


def migrate(conn: sqlite3.Connection, sql: str) -> dict[str, list[str]]:
    """Run DDL (and any SQL) on a captured primary in ONE write transaction.

    Capture's triggers on the captured tables the SQL names are dropped first (SQLite
    refuses ``DROP COLUMN`` of a column a trigger reads), then the statements run, then
    :func:`ensure_schema` re-installs capture wherever a layout changed. A table whose
    triggers were dropped is re-installed (content copied) unless its definition is
    unchanged and the statements changed no row at all. A captured table the SQL names
    that no longer exists afterwards (dropped, or renamed) is no longer captured. All or
    nothing. Returns the tables re-installed and the tables no longer captured.
    """
    statements = split_statements(sql)
    if not statements:
        raise ConfigError('no SQL statement given: pass e.g. "ALTER TABLE t DROP COLUMN x"')
    for statement in statements:
        if statement.split(None, 1)[0].upper().rstrip(";") in _TRANSACTION_CONTROL:
            raise ConfigError(
                f"{_short(statement)!r} controls a transaction: migrate runs all statements in "
                "one transaction of its own; pass only the statements"
            )
    conn.execute("BEGIN IMMEDIATE")
    try:
        _create_tables(conn)
        lowered = sql.lower()
        named = [t for t in installed_tables(conn) if t.lower() in lowered]
        for table in named:
            drop_triggers(conn, table)
        changes_before = conn.total_changes
        for number, statement in enumerate(statements, 1):
            try:
                conn.execute(statement)
            except sqlite3.Error as exc:
                raise ConfigError(
                    f"statement {number} failed, nothing was changed: {exc} "
                    f"({_short(statement)}); fix it and run the whole migration again"
                ) from None
        released = [t for t in named if not _table_exists(conn, t)]
        for table in released:  # dropped or renamed on purpose: no longer captured
            uncapture(conn, table)
        if conn.total_changes == changes_before:
            for table in named:  # no row changed: a table whose layout held needs no copy
                if _table_exists(conn, table) and not _layout_changed(conn, table):
                    create_triggers(conn, describe_table(conn, "", table))
        reinstalled = ensure_schema(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return {"reinstalled": reinstalled, "no_longer_captured": released}


def _layout_changed(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute(f"SELECT definition FROM {DEFINITIONS} WHERE tbl = ?", (table,)).fetchone()
    try:
        live = describe_table(conn, "", table)
    except ConfigError:
        return True
    return row is None or definition_from_json(row[0], "") != live


def _short(statement: str) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= 80 else text[:77] + "..."
