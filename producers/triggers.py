"""The capture triggers of one table, including the rows that REPLACE removes silently.

SQLite fires no DELETE trigger for a row that REPLACE conflict resolution removes (unless
the application's connection turned ``recursive_triggers`` on, which cutline does not
control). So a BEFORE INSERT / BEFORE UPDATE trigger stages, in ``_cutline_pending``,
every existing row the new row conflicts with (on the rowid, the primary key or any
UNIQUE constraint, with each index's own collation), and the AFTER trigger of the same row
logs a DELETE for each staged row that is gone before it logs the INSERT/UPDATE, so the
DELETE precedes the INSERT in commit order. Each entry is tagged with the row that
staged it, so that a statement nested in between (an application trigger writing the same
table) neither takes nor discards another row's entries. A row whose AFTER trigger never
runs (IGNORE, FAIL, an upsert that turned into an UPDATE) leaves its entries behind: the
next BEFORE trigger with the same tag clears them, and capture drops every entry whenever
it trims the change log (``forget_pending``), when no statement can be in flight. An UPDATE
that changes no key or unique column cannot collide, so it neither stages nor flushes:
ordinary updates pay one comparison of NEW with OLD. With ``recursive_triggers`` on,
SQLite fires the DELETE trigger for a replaced row, and that trigger removes the row's
staged entry so that its DELETE is logged once.

A rowid table's staged row counts as removed only if its rowid is the new row's or no
longer exists: in a BEFORE INSERT trigger an automatically assigned rowid reads as -1, so
the staging may pick up an innocent row -1, which this check leaves alone.

A unique index that this cannot stage exactly (partial, on an expression, or on a
generated column, whose BEFORE trigger value can be wrong) is refused at install.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from cutline.errors import ConfigError
from producers.sqlite_changelog import (
    CHANGES,
    INTERNAL_PREFIX,
    image_sql,
    quote_identifier,
    quote_text,
    value_sql,
)
from schemas.records import TableDefinition

PENDING = "_cutline_pending"
PENDING_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {PENDING} (tbl TEXT NOT NULL, tag TEXT NOT NULL, row_key, "
    "before_image TEXT NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {PENDING}_by_tag ON {PENDING}(tbl, tag)",
    f"CREATE INDEX IF NOT EXISTS {PENDING}_by_row ON {PENDING}(tbl, row_key)",
)

_NOW_US = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
_NOT_NULL_REPLACE = re.compile(r"NOT\s+NULL\s+ON\s+CONFLICT\s+REPLACE", re.IGNORECASE)
_GENERATED = (2, 3)  # table_xinfo 'hidden' values of VIRTUAL and STORED generated columns
TRIGGER_KINDS = ("bi", "bu", "ai", "au", "ad")


@dataclass(frozen=True)
class UniqueKey:
    """One set of columns no two rows may share (a UNIQUE constraint, index or the PK)."""

    index: str
    columns: tuple[tuple[str, str], ...]  # (column, collation)

    def matches(self, row: str, other: str) -> str:
        """SQL: ``row`` and ``other`` collide on this key (``=``, so NULLs never collide)."""
        return " AND ".join(
            f"{row}.{quote_identifier(c)} = {other}.{quote_identifier(c)} COLLATE {coll}"
            for c, coll in self.columns
        )


def has_rowid(conn: sqlite3.Connection, table: str) -> bool:
    try:
        conn.execute(f"SELECT rowid FROM {quote_identifier(table)} LIMIT 0")
    except sqlite3.OperationalError:
        return False
    return True


def unique_keys(conn: sqlite3.Connection, table: str) -> list[UniqueKey]:
    """Every unique index of ``table``; refuses the ones that cannot be staged exactly."""
    generated = {
        r[1]
        for r in conn.execute(f"PRAGMA table_xinfo({quote_identifier(table)})")
        if r[6] in _GENERATED
    }
    keys = []
    for _, index, unique, _origin, partial in conn.execute(
        f"PRAGMA index_list({quote_identifier(table)})"
    ).fetchall():
        if not unique:
            continue
        if partial:
            raise ConfigError(
                f"table {table!r} has the partial unique index {index!r}, whose REPLACE "
                "deletions cutline cannot capture exactly: drop it or make it a full index"
            )
        columns = []
        for _, cid, name, _desc, collation, key in conn.execute(
            f"PRAGMA index_xinfo({quote_identifier(index)})"
        ):
            if not key:
                continue
            if cid == -2:
                raise ConfigError(
                    f"table {table!r} has the unique index {index!r} on an expression, whose "
                    "REPLACE deletions cutline cannot capture exactly: index a column instead"
                )
            if name in generated:
                raise ConfigError(
                    f"table {table!r} has the unique index {index!r} on the generated column "
                    f"{name!r}, whose REPLACE deletions cutline cannot capture exactly: "
                    "make it a unique index on stored columns"
                )
            columns.append((name, quote_identifier(collation)))
        keys.append(UniqueKey(index, tuple(columns)))
    return keys


def trigger_names(table: str) -> list[str]:
    return [f"{INTERNAL_PREFIX}{kind}_{table}" for kind in TRIGGER_KINDS]


def trigger_statements(conn: sqlite3.Connection, definition: TableDefinition) -> list[str]:
    """DROP and CREATE statements of the table's capture triggers (run them in one txn)."""
    table = definition.table
    keys = unique_keys(conn, table)
    rowid = has_rowid(conn, table)
    if keys and _NOT_NULL_REPLACE.search(definition.ddl or ""):
        raise ConfigError(
            f"table {table!r} has NOT NULL ON CONFLICT REPLACE and unique constraints: a "
            "NULL replaced by its default can remove a row cutline cannot see in advance; "
            "drop the ON CONFLICT REPLACE from the NOT NULL constraint"
        )
    q, lit = quote_identifier(table), quote_text(table)

    def key_image(alias: str) -> str:
        return f"{alias}.rowid" if rowid else _key_image(definition, alias)

    def colliding(new: str) -> str:
        terms = [f"t0.rowid = {new}.rowid"] if rowid else []
        terms += [f"({k.matches('t0', new)})" for k in keys]
        return " OR ".join(terms) or "0"

    # Entries carry a tag naming the row whose BEFORE trigger staged them, so that a nested
    # statement on the same table (an application trigger's) leaves them alone: an INSERT
    # is named by its rowid and unique values (its rowid reads as -1 before SQLite assigns
    # one), an UPDATE by its old key and its new rowid and unique values (a nested UPDATE
    # of the same row that could stage anything changes one of those).
    unique_columns = list(dict.fromkeys(c for k in keys for c, _ in k.columns))

    def new_values(rowid_sql: str) -> list[str]:
        parts = [f"quote({rowid_sql})"] if rowid else []
        return parts + [f"quote(NEW.{quote_identifier(c)})" for c in unique_columns]

    def insert_tag(rowid_sql: str) -> str:
        return " || ',' || ".join(["'I'", *new_values(rowid_sql)])

    old_key = "quote(OLD.rowid)" if rowid else _key_image(definition, "OLD")
    update_tag = " || ',' || ".join(["'U'", old_key, *new_values("NEW.rowid")])

    def stage(tag: str, exclude_old: bool) -> str:
        where = colliding("NEW")
        if exclude_old:
            same = "t0.rowid = OLD.rowid" if rowid else _same_key(definition, "t0", "OLD", keys)
            where = f"({where}) AND NOT ({same})"
        return (
            f"DELETE FROM {PENDING} WHERE tbl = {lit} AND tag = {tag}; "
            f"INSERT INTO {PENDING}(tbl, tag, row_key, before_image) "
            f"SELECT {lit}, {tag}, {key_image('t0')}, {image_sql(definition, 't0')} "
            f"FROM {q} AS t0 WHERE {where};"
        )

    removed = (
        f"(p.row_key = NEW.rowid OR NOT EXISTS (SELECT 1 FROM {q} WHERE rowid = p.row_key))"
        if rowid
        else "1"
    )
    log = f"INSERT INTO {CHANGES}(kind, tbl, before, after, at_us)"

    def flush(when: str, tags: str) -> str:
        return (
            f"{log} SELECT 'D', {lit}, p.before_image, NULL, {_NOW_US} FROM {PENDING} AS p "
            f"WHERE {when} AND p.tbl = {lit} AND p.tag IN ({tags}) AND {removed} "
            f"ORDER BY p.rowid; "
            f"DELETE FROM {PENDING} WHERE {when} AND tbl = {lit} AND tag IN ({tags});"
        )

    # An UPDATE that changes no key or unique column cannot collide with another row: it
    # stages nothing and flushes nothing (a condition on NEW/OLD only, tested once per row).
    watched = ["rowid"] if rowid else []
    watched += [quote_identifier(c) for k in keys for c, _ in k.columns]
    moved = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in dict.fromkeys(watched)) or "0"
    new, old = image_sql(definition, "NEW"), image_sql(definition, "OLD")
    inserted = insert_tag("NEW.rowid") + (f", {insert_tag('-1')}" if rowid else "")
    bodies = {
        "bi": f"BEFORE INSERT ON {q} BEGIN {stage(insert_tag('NEW.rowid'), False)} END",
        "bu": f"BEFORE UPDATE ON {q} WHEN {moved} BEGIN {stage(update_tag, True)} END",
        "ai": f"AFTER INSERT ON {q} BEGIN {flush('1', inserted)} "
        f"{log} VALUES ('I', {lit}, NULL, {new}, {_NOW_US}); END",
        "au": f"AFTER UPDATE ON {q} BEGIN {flush(f'({moved})', update_tag)} "
        f"{log} VALUES ('U', {lit}, {old}, {new}, {_NOW_US}); END",
        "ad": f"AFTER DELETE ON {q} BEGIN "
        f"DELETE FROM {PENDING} WHERE tbl = {lit} AND row_key = {key_image('OLD')}; "
        f"{log} VALUES ('D', {lit}, {old}, NULL, {_NOW_US}); END",
    }
    statements = [*PENDING_SCHEMA]
    for kind, name in zip(TRIGGER_KINDS, trigger_names(table), strict=True):
        statements.append(f"DROP TRIGGER IF EXISTS {quote_identifier(name)}")
        statements.append(f"CREATE TRIGGER {quote_identifier(name)} {bodies[kind]}")
    return statements


def _key_image(definition: TableDefinition, alias: str) -> str:
    return " || ',' || ".join(
        value_sql(f"{alias}.{quote_identifier(k)}") for k in definition.key_columns
    )


def _same_key(definition: TableDefinition, row: str, other: str, keys: list[UniqueKey]) -> str:
    """SQL: ``row`` is ``other``'s row in a WITHOUT ROWID table (same PK, PK collation)."""
    pk = set(definition.key_columns)
    for key in keys:
        if {c for c, _ in key.columns} == pk:
            return key.matches(row, other)
    raise ConfigError(f"table {definition.table!r}: cannot find its primary key index")


def triggers_ahead_of_capture(conn: sqlite3.Connection, table: str) -> list[str]:
    """Application triggers on ``table`` that fire before cutline's and may write ``table``.

    SQLite fires the triggers of one event newest first, so a trigger created after
    cutline's runs before them; if it writes the same table (a "touch updated_at" trigger),
    its change is logged before the statement's own, and the replica would apply the
    statement's older image last. ``install`` re-makes cutline's triggers, so they fire
    first from then on; this finds triggers created since (a trigger whose body names the
    table counts as writing it).
    """
    rows = conn.execute(
        "SELECT rowid, name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
        (table,),
    ).fetchall()
    ours = [rowid for rowid, name, _ in rows if name in trigger_names(table)]
    if not ours:
        return []
    named = re.compile(
        r"(?<![\w$])(?:" + "|".join(re.escape(q) for q in _spellings(table)) + r")(?![\w$])",
        re.IGNORECASE,
    )
    ahead = []
    for rowid, name, sql in rows:
        if rowid > min(ours) and name not in trigger_names(table):
            body = re.split(r"\bBEGIN\b", sql or "", maxsplit=1, flags=re.IGNORECASE)[-1]
            if named.search(body):
                ahead.append(name)
    return sorted(ahead)


def _spellings(table: str) -> list[str]:
    """How SQL can name ``table``: bare, "quoted", [bracketed], `backquoted`, 'string'."""
    return [
        table,
        quote_identifier(table),
        f"[{table}]",
        "`" + table.replace("`", "``") + "`",
        quote_text(table),
    ]


def forget_pending(conn: sqlite3.Connection) -> None:
    """Drop every staged entry: run by capture in its own write transaction, when no
    statement of the application can be between its BEFORE and AFTER triggers, so every
    entry left is one whose AFTER trigger never ran (IGNORE, FAIL, upserts)."""
    try:
        if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {PENDING})").fetchone()[0]:
            conn.execute(f"DELETE FROM {PENDING}")  # the write lock only when there is work
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
