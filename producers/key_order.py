"""SQLite's order of a table's primary key, reproduced for initial snapshots in chunks.

Why: capture publishes a change during a snapshot only if its key is at or before the last
key a chunk covered (``initial_snapshot.py``), and chunks are read with SQLite's own
``ORDER BY``; the two orders must be the same. SQLite orders a key column by storage class
(NULL, then INTEGER and REAL by value, then TEXT, then BLOB), TEXT by its bytes under the
column's collation (BINARY; NOCASE folds ASCII letters only; RTRIM ignores trailing
spaces), BLOB by its bytes, and a key of several columns column by column. Keys come in
two forms: a change image's ``quote()`` literals, and the native values a chunk reads; a
chunk's last key is stored in the capture position as *frontier literals* (``i:``, ``f:``
(float.hex), ``t:`` and ``b:`` (hex bytes)), exact and ASCII, telling TEXT from BLOB even
for TEXT that is not UTF-8. A unit test checks the Python order against SQLite's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from producers.sqlite_changelog import parse_literal, quote_identifier
from producers.triggers import has_rowid
from schemas.records import TableDefinition, Value

_COLLATIONS = {"BINARY", "NOCASE", "RTRIM"}

SortKey = tuple


def _fold(collation: str) -> Callable[[bytes], bytes]:
    if collation == "NOCASE":
        return bytes.lower  # ASCII letters only, as SQLite's NOCASE
    if collation == "RTRIM":
        return lambda b: b.rstrip(b" ")
    return lambda b: b


@dataclass(frozen=True)
class KeyOrder:
    """SQLite's order of a table's primary key, in SQL (for chunks) and in Python (for changes).

    ``rowid_alias``: the key is an INTEGER PRIMARY KEY (the rowid), so every key is an int.
    ``nullable``: a key column of a rowid table may hold NULL (SQLite allows it). Chunks
    never read a row with a NULL in its key, and every change of such a row is published:
    so a snapshot starts only if no row has one (later ones reach the replica as changes).
    """

    table: str
    columns: tuple[str, ...]
    collations: tuple[str, ...]
    rowid_alias: bool
    nullable: bool = False

    @classmethod
    def of(cls, conn: sqlite3.Connection, definition: TableDefinition) -> KeyOrder | None:
        """The key order, or None if it cannot be reproduced exactly (copy the table whole)."""
        table, keys = definition.table, definition.key_columns
        indexes = conn.execute(f"PRAGMA index_list({quote_identifier(table)})").fetchall()
        pk_index = next((r[1] for r in indexes if r[3] == "pk"), None)
        if pk_index is None:
            if len(keys) == 1 and has_rowid(conn, table):
                return cls(table, keys, ("BINARY",), rowid_alias=True)
            return None
        info = conn.execute(f"PRAGMA index_xinfo({quote_identifier(pk_index)})").fetchall()
        by_name = {r[2]: str(r[4]).upper() for r in info if r[5]}
        collations = tuple(by_name.get(k, "") for k in keys)
        if any(c not in _COLLATIONS for c in collations):
            return None
        not_null = {c.name for c in definition.columns if c.not_null}
        nullable = has_rowid(conn, table) and not set(keys) <= not_null
        return cls(table, keys, collations, rowid_alias=False, nullable=nullable)

    def null_key_sql(self) -> str:
        """SQL: a row's key holds a NULL."""
        return " OR ".join(f"{quote_identifier(c)} IS NULL" for c in self.columns)

    def sort_key_of_literals(self, literals: Iterable[str]) -> SortKey:
        """A change image's key literals (``quote()`` form) as a comparable tuple."""
        return tuple(
            _literal_rank(lit, _fold(c)) for lit, c in zip(literals, self.collations, strict=True)
        )

    def sort_key_of_frontier(self, frontier: tuple[str, ...]) -> SortKey:
        return tuple(
            _rank(frontier_value(f), _fold(c))
            for f, c in zip(frontier, self.collations, strict=True)
        )

    def chunk_sql(self, select: str, after: tuple[str, ...], limit: int) -> tuple[str, list]:
        """``SELECT {select} FROM table`` for the rows after ``after``, in key order."""
        table = quote_identifier(self.table)
        if self.rowid_alias:
            column = quote_identifier(self.columns[0])
            where = f"WHERE {column} > ?" if after else ""
            params: list = [frontier_value(after[0])] if after else []
            return f"SELECT {select} FROM {table} {where} ORDER BY {column} LIMIT ?", [
                *params,
                limit,
            ]
        ordered = [
            f"{quote_identifier(c)} COLLATE {coll}"
            for c, coll in zip(self.columns, self.collations, strict=True)
        ]
        where, params = "", []
        if self.nullable and not after:  # (a row value with a NULL never compares greater)
            where = f"WHERE NOT ({self.null_key_sql()})"
        if after:
            marks = []
            for f in after:
                value = frontier_value(f)
                text = f.startswith("t:")
                marks.append("CAST(? AS TEXT)" if text else "?")
                params.append(value.encode("utf-8", "surrogateescape") if text else value)
            where = f"WHERE ({', '.join(ordered)}) > ({', '.join(marks)})"
        sql = f"SELECT {select} FROM {table} {where} ORDER BY {', '.join(ordered)} LIMIT ?"
        return sql, [*params, limit]


def _rank(value: Value, fold: Callable[[bytes], bytes]) -> tuple:
    """SQLite's order: NULL, then numbers by value, then TEXT by (folded) bytes, then BLOB."""
    if value is None:
        return (0,)
    if isinstance(value, str):
        return (2, fold(value.encode("utf-8", "surrogateescape")))
    if isinstance(value, bytes):
        return (3, value)
    return (1, value)


def _literal_rank(literal: str, fold: Callable[[bytes], bytes]) -> tuple:
    """:func:`_rank` of a ``quote()``-style literal, telling TEXT from BLOB by its form
    (TEXT that is not UTF-8 reaches here as a string of escaped bytes, not as a BLOB)."""
    first = literal[:1]
    if first == "'":
        return (2, fold(literal[1:-1].replace("''", "'").encode("utf-8", "surrogateescape")))
    if first == "T" and literal[1:2] == "'":
        return (2, fold(bytes.fromhex(literal[2:-1])))
    return _rank(parse_literal(literal), fold)


def frontier_literal(value: Value) -> str:
    """A key value as stored in the position: exact, ASCII, and telling TEXT from BLOB."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"key value {value!r} cannot bound a chunk")
    if isinstance(value, int):
        return f"i:{value}"
    if isinstance(value, float):
        return f"f:{value.hex()}"
    if isinstance(value, str):
        return "t:" + value.encode("utf-8", "surrogateescape").hex()
    return "b:" + value.hex()


def frontier_value(literal: str) -> Value:
    kind, text = literal[:2], literal[2:]
    if kind == "i:":
        return int(text)
    if kind == "f:":
        return float.fromhex(text)
    if kind == "t:":
        return bytes.fromhex(text).decode("utf-8", "surrogateescape")
    if kind == "b:":
        return bytes.fromhex(text)
    raise ValueError(f"not a chunk key literal: {literal!r}")
