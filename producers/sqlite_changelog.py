"""Change capture inside a SQLite primary: triggers append every change to a change log.

Why triggers and a log table: SQLite has one writer at a time, so the change log's
AUTOINCREMENT sequence is exactly the primary's commit order, with no gaps from
in-flight transactions. A marker request is one more row in the same log (see
``markers.py``), so its place among the changes is exact.

Row images are one JSON array per row, built by SQLite's ``json_array()`` in a single call
(``image_sql``; see ``producers/row_images.py`` for the format and why): far cheaper for the
application's writes than text assembled column by column, and decoded by Python's C JSON
parser in bulk. Change-log rows written by an older cutline hold the earlier format, SQL
literals (SQLite's ``quote()``, and ``printf('%!.20g')`` for REALs), comma separated, which
``parse_literal``/``split_literals`` still read; a JSON image starts with ``[``, which no
literal list does. ``quote`` stops TEXT at a NUL character, so that format writes TEXT
holding one as ``T'<hex of its bytes>'``. TEXT that is not valid UTF-8 (which Python cannot
read as text) is read byte for byte in either format (see ``read_changes``). The literal
form also still names each row's Kafka key (``value_sql``), so keys never change.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

from cutline.errors import ConfigError
from producers.write_lock import DEFAULT_LOCK_TIMEOUT_S, begin_write, use_wal
from schemas.records import Column, TableDefinition, Value

log = logging.getLogger("cutline.capture")

CHANGES = "_cutline_changes"
MARKERS = "_cutline_markers"
TABLES = "_cutline_tables"
INTERNAL_PREFIX = "_cutline_"
ROWID = "rowid"

KIND_INSERT, KIND_UPDATE, KIND_DELETE, KIND_MARKER = "I", "U", "D", "M"
KIND_SCHEMA = "S"  # a captured table was re-installed for a new layout (schema_changes.py)
KIND_DIGEST = "G"  # the primary's table digests at a marker (producers/marker_digest.py)
TEXT_AS_HEX = "T"  # prefix of the literal T'<hex>' for TEXT that quote() would cut at a NUL

_NOW_US = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
_LITERAL = re.compile(r"'(?:[^']|'')*'|[Xx]'[0-9A-Fa-f]*'|[^,]+")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {CHANGES} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    tbl TEXT,
    before TEXT,
    after TEXT,
    marker_id INTEGER,
    at_us INTEGER NOT NULL,
    only_source TEXT
);
CREATE TABLE IF NOT EXISTS {MARKERS} (
    marker_id INTEGER PRIMARY KEY AUTOINCREMENT,
    t1_us INTEGER NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS {TABLES} (
    tbl TEXT PRIMARY KEY,
    columns TEXT NOT NULL,
    key_columns TEXT NOT NULL,
    installed_at_us INTEGER NOT NULL
);
"""


def quote_identifier(name: str) -> str:
    """Quote a table or column name so that no name can escape it."""
    return '"' + name.replace('"', '""') + '"'


def quote_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def parse_literal(text: str) -> Value:
    """Turn one ``quote()`` output back into the value it quotes."""
    first = text[:1]
    if first == "'":
        return text[1:-1].replace("''", "'")
    if text == "NULL":
        return None
    if first in "Xx" and text[1:2] == "'":
        return bytes.fromhex(text[2:-1])
    if first == TEXT_AS_HEX and text[1:2] == "'":
        value = text_from_bytes(bytes.fromhex(text[2:-1]))
        if isinstance(value, bytes):
            log.warning("a TEXT value holding NUL is not valid UTF-8: captured as a BLOB")
        return value
    if any(ch in text for ch in ".eEIN"):
        return float(text)
    return int(text)


def text_from_bytes(raw: bytes) -> str | bytes:
    """TEXT read as bytes: the string it holds, or, if not UTF-8, the exact bytes.

    Avro strings and DuckDB VARCHARs must be valid UTF-8, so TEXT that is not is carried
    byte for byte as a BLOB (and capture logs a warning naming the change), never altered.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def split_literals(image: str) -> list[str]:
    return _LITERAL.findall(image)


def now_us() -> int:
    return time.time_ns() // 1000


def connect(db_path: str | Path, *, must_exist: bool = True, timeout_s: float = 10.0):
    """Open the primary. A missing file is an error, never a new empty database."""
    path = Path(db_path)
    if must_exist and path.is_dir():
        raise ConfigError(f"primary database {path} is a directory: pass the SQLite file in it")
    if must_exist and not path.is_file():
        raise ConfigError(
            f"primary database {path} does not exist: pass the path of an existing SQLite file"
        )
    uri = f"file:{quote(str(path.resolve()))}?mode={'rw' if must_exist else 'rwc'}"
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not a usable SQLite database: {exc}") from exc
    return conn


@dataclass(frozen=True)
class ChangeRow:
    """One row of the change log, still as stored (images as text: JSON or literal lists)."""

    seq: int
    kind: str
    table: str | None
    before: str | None
    after: str | None
    marker_id: int | None
    at_us: int
    raw_text: bool = False  # holds TEXT that is not valid UTF-8 (read byte for byte)
    only_source: str | None = None  # a snapshot row for that source only (None: for all)


def describe_table(conn: sqlite3.Connection, source: str, table: str) -> TableDefinition:
    """Read a table's native definition; error clearly on missing or internal tables."""
    if table.startswith(INTERNAL_PREFIX):
        raise ConfigError(f"table {table!r} belongs to cutline itself and cannot be captured")
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    if row is None:
        known = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
                "AND name NOT LIKE '\\_cutline\\_%' ESCAPE '\\' "
                "ORDER BY name"
            )
        ]
        raise ConfigError(
            f"table {table!r} does not exist in the primary; "
            f"tables there: {', '.join(known) or 'none'}"
        )
    info = conn.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()
    columns = tuple(Column(name=r[1], declared_type=r[2] or "", not_null=bool(r[3])) for r in info)
    keyed = sorted((r[5], r[1]) for r in info if r[5] > 0)
    if not keyed:
        raise ConfigError(
            f"table {table!r} has no PRIMARY KEY: cutline keys every change by primary key, "
            "and SQLite may renumber the rowids of such a table (VACUUM), which would "
            "misplace later changes; add a PRIMARY KEY (e.g. id INTEGER PRIMARY KEY)"
        )
    key_columns = tuple(name for _, name in keyed)
    return TableDefinition(
        source=source, table=table, ddl=row[0], columns=columns, key_columns=key_columns
    )


def image_columns(definition: TableDefinition) -> tuple[str, ...]:
    """Columns a row image holds, in order: the table's, plus rowid when it is the key."""
    names = definition.column_names
    return (*names, ROWID) if definition.key_columns == (ROWID,) else names


REAL_FORMAT = "%!.20g"  # 20 significant digits: read back exactly by a correct parser


def value_sql(expression: str) -> str:
    """SQL for one value's literal: ``quote()``, except for TEXT holding a NUL and REALs.

    TEXT holding a NUL is written as hex. A REAL is printed with 20 significant digits:
    ``quote()`` keeps 15 whenever SQLite's own (inexact) text-to-double conversion reads
    them back to the same double, but Python's correctly rounded ``float()`` then reads
    another one for about one value in 25,000 (e.g. 591027.4716637121).
    """
    as_blob = f"CAST({expression} AS BLOB)"
    return (
        f"CASE WHEN typeof({expression}) = 'text' AND instr({as_blob}, x'00') > 0 "
        f"THEN '{TEXT_AS_HEX}''' || hex({as_blob}) || '''' "
        f"WHEN typeof({expression}) = 'real' THEN printf('{REAL_FORMAT}', {expression}) "
        f"ELSE quote({expression}) END"
    )


def image_sql(definition: TableDefinition, alias: str) -> str:
    """SQL for one row image: a JSON array (``row_images.json_image_sql``), or for a table
    too wide for one ``json_array()`` call, the literal list of the earlier format."""
    from producers.row_images import json_image_sql  # it builds on this module's SQL

    json_image = json_image_sql(definition, alias)
    return json_image if json_image is not None else literal_image_sql(definition, alias)


def literal_image_sql(definition: TableDefinition, alias: str) -> str:
    """SQL for a row image in the earlier format: the values' literals, comma separated."""
    parts = [value_sql(f"{alias}.{quote_identifier(c)}") for c in definition.column_names]
    if definition.key_columns == (ROWID,):
        parts.append(f"quote({alias}.rowid)")
    return " || ',' || ".join(parts)


def create_triggers(conn: sqlite3.Connection, definition: TableDefinition) -> None:
    """(Re)create capture's triggers on one table, for its current layout, firing first."""
    from producers.triggers import trigger_statements  # it builds on this module's SQL

    for statement in trigger_statements(conn, definition):
        conn.execute(statement)


def trigger_sql(conn: sqlite3.Connection, definition: TableDefinition) -> list[str]:
    """The CREATE TRIGGER statements capture needs on this table, as SQLite stores them."""
    from producers.triggers import trigger_statements

    return [s for s in trigger_statements(conn, definition) if s.startswith("CREATE TRIGGER ")]


def copy_rows(conn: sqlite3.Connection, definition: TableDefinition) -> None:
    """Write the table's whole current content to the change log as INSERTs.

    For every source (``only_source`` NULL): a re-install's copy follows its 'S' row, and
    every source capturing the table needs both; sources that do not capture it skip them.
    """
    snapshot_table(conn, definition, None)


def install(
    conn: sqlite3.Connection,
    source: str,
    tables: list[str],
    *,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> list[TableDefinition]:
    """Install capture on ``tables`` (idempotent) and return their definitions.

    A table captured for the first time gets its existing rows written to the change log
    as INSERTs in the same transaction that creates its triggers, so the replica starts
    from exactly the primary's content at that commit and misses nothing after it.
    Schema changes made meanwhile are followed first (``producers/schema_changes.py``).
    """
    use_wal(conn, lock_timeout_s)
    begin_write(conn, "installing capture", lock_timeout_s)
    try:
        definitions, _ = install_in_transaction(conn, source, tables)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return definitions


def ensure_changelog_tables(conn: sqlite3.Connection) -> None:
    """Create cutline's tables, and add ``only_source`` to a change log that predates it."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    columns = {r[1] for r in conn.execute(f"PRAGMA table_info({CHANGES})")}
    if "only_source" not in columns:
        conn.execute(f"ALTER TABLE {CHANGES} ADD COLUMN only_source TEXT")


def install_in_transaction(
    conn: sqlite3.Connection,
    source: str,
    tables: list[str],
    only_source: str | None = None,
    chunk_rows: int = 20_000,
) -> tuple[list[TableDefinition], set[str]]:
    """Install inside the caller's write transaction; also return the tables snapshotted.

    Schema changes of tables already captured are followed first (a re-install: 'S' row,
    new triggers, content copied for every source), so snapshots taken here are in the
    current layout and come after them. Snapshot rows are tagged ``only_source`` when
    given (that source's own initial snapshot, which other sources capturing the database
    skip); a table bigger than one chunk is then not copied at all: capture snapshots it
    in chunks (``producers/initial_snapshot.py``).
    """
    from producers.schema_changes import ensure_schema  # it builds on this module

    if not tables:
        raise ConfigError("no tables to capture: pass --tables T1,T2")
    ensure_changelog_tables(conn)
    ensure_schema(conn)
    definitions = []
    snapshotted: set[str] = set()
    for table in tables:
        definition = describe_table(conn, source, table)
        definitions.append(definition)
        known = conn.execute(f"SELECT columns FROM {TABLES} WHERE tbl = ?", (table,)).fetchone()
        if known is not None:
            continue  # changed layouts, missing or outdated triggers: ensure_schema's job
        create_triggers(conn, definition)
        if only_source is None:
            snapshot_table(conn, definition, None)
        else:  # the source's own initial snapshot: in chunks by capture if the table is big
            from producers.initial_snapshot import issued_seq, start_snapshot

            start_snapshot(conn, only_source, definition, issued_seq(conn), chunk_rows)
        snapshotted.add(table)
        conn.execute(
            f"INSERT INTO {TABLES}(tbl, columns, key_columns, installed_at_us) VALUES (?, ?, ?, ?)",
            (table, ",".join(definition.column_names), ",".join(definition.key_columns), now_us()),
        )
    ensure_schema(conn)  # records the new tables' definitions and the schema version
    return definitions, snapshotted


def snapshot_table(
    conn: sqlite3.Connection, definition: TableDefinition, only_source: str | None
) -> None:
    """Write every row of a table to the change log as an INSERT (in the caller's transaction)."""
    conn.execute(
        f"INSERT INTO {CHANGES}(kind, tbl, before, after, at_us, only_source) "
        f"SELECT 'I', ?, NULL, {image_sql(definition, 't')}, ?, ? "
        f"FROM {quote_identifier(definition.table)} AS t",
        (definition.table, now_us(), only_source),
    )


def installed_tables(conn: sqlite3.Connection) -> list[str]:
    try:
        return [r[0] for r in conn.execute(f"SELECT tbl FROM {TABLES} ORDER BY tbl")]
    except sqlite3.OperationalError:
        return []


READ_BATCH_BYTES = 64 << 20  # a batch of change rows stops growing past this many bytes


def read_changes(
    conn: sqlite3.Connection,
    after_seq: int,
    limit: int,
    max_bytes: int = READ_BATCH_BYTES,
    *,
    source: str | None = None,
) -> list[ChangeRow]:
    """Committed changes with ``seq > after_seq``, in commit order.

    With ``source``, snapshot rows tagged for another source are left out.

    At most ``limit`` rows, and no more once their images add up to ``max_bytes`` (always
    at least one row), so a run of large rows never has to fit in memory at once. A batch
    holding TEXT that is not valid UTF-8 is read again byte for byte (``raw_text``).
    """
    try:
        return _read_changes(conn, after_seq, limit, max_bytes, source)
    except sqlite3.OperationalError as exc:
        if "decode" not in str(exc):
            raise
    previous = conn.text_factory
    conn.text_factory = _text_keeping_bytes
    try:
        rows = _read_changes(conn, after_seq, limit, max_bytes, source)
    finally:
        conn.text_factory = previous
    return [
        replace(r, raw_text=True) if _has_raw_bytes(r.before) or _has_raw_bytes(r.after) else r
        for r in rows
    ]


def _read_changes(
    conn: sqlite3.Connection, after_seq: int, limit: int, max_bytes: int, source: str | None
) -> list[ChangeRow]:
    columns = "seq, kind, tbl, before, after, marker_id, at_us"
    if source is None:
        cursor = conn.execute(
            f"SELECT {columns} FROM {CHANGES} WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
    else:
        cursor = conn.execute(
            f"SELECT {columns}, only_source FROM {CHANGES} WHERE seq > ? "
            "AND (only_source IS NULL OR only_source = ?) ORDER BY seq LIMIT ?",
            (after_seq, source, limit),
        )
    rows: list[ChangeRow] = []
    size = 0
    try:
        for r in cursor:
            rows.append(ChangeRow(*r[:7], only_source=r[7] if len(r) > 7 else None))
            size += len(r[3] or "") + len(r[4] or "")
            if size >= max_bytes:
                break
    finally:
        cursor.close()
    return rows


def _text_keeping_bytes(raw: bytes) -> str:
    """Bytes that are not UTF-8 survive as lone surrogates (undone by ``raw_text_value``)."""
    return raw.decode("utf-8", "surrogateescape")


def _has_raw_bytes(text: str | None) -> bool:
    if text is None:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def raw_text_value(value: Value) -> Value:
    """A value parsed from a ``raw_text`` row: undecodable TEXT becomes its exact bytes."""
    if isinstance(value, str) and _has_raw_bytes(value):
        return text_from_bytes(value.encode("utf-8", "surrogateescape"))
    return value


def forget_changes(conn: sqlite3.Connection, up_to_seq: int) -> None:
    """Drop change-log rows that Kafka holds durably (a short write on the primary)."""
    from producers.triggers import forget_pending  # it builds on this module's SQL

    conn.execute(f"DELETE FROM {CHANGES} WHERE seq <= ?", (up_to_seq,))
    forget_pending(conn)
