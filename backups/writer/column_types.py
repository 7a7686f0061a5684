"""Backup column types: a column's declared affinity, unless its data says otherwise.

SQLite is dynamically typed, so a column can hold values outside its declared type. The
backup never drops or alters a value silently: a column whose values do not fit a numeric
type is kept as text. The decision needs only a summary of the column (which storage
classes occur, and the range of its integers), so a streaming writer takes that summary
in SQL before it reads any row (:func:`column_types_of`) and gets exactly the type that
:func:`column_type` gives for the whole column's values.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from producers.sqlite_changelog import quote_identifier
from schemas.records import TableDefinition


@dataclass(frozen=True)
class ColumnType:
    duckdb: str
    arrow: pa.DataType
    avro: str
    convert: Callable[[Any], Any] | None = None  # for values outside the column's type


def _as_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return repr(value) if isinstance(value, float) else str(value)


BIGINT = ColumnType("BIGINT", pa.int64(), "long")
DOUBLE = ColumnType("DOUBLE", pa.float64(), "double", lambda v: None if v is None else float(v))
VARCHAR = ColumnType("VARCHAR", pa.string(), "string")
TEXT_FALLBACK = ColumnType("VARCHAR", pa.string(), "string", _as_text)
BLOB = ColumnType("BLOB", pa.binary(), "bytes")

DOUBLE_EXACT = 2**53  # integers up to this magnitude survive a DOUBLE unchanged

# SQLite's typeof() names and the Python types its sqlite3 module returns for them
_STORAGE = {"integer": int, "real": float, "text": str, "blob": bytes}


def affinity(declared: str) -> str:
    """SQLite's column affinity rules (https://sqlite.org/datatype3.html, 3.1)."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if any(s in t for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


@dataclass(frozen=True)
class ColumnSummary:
    """What the typing decision needs of a column: its non-NULL storage classes, int range."""

    kinds: frozenset[type]
    int_min: int | None = None
    int_max: int | None = None

    @classmethod
    def of_values(cls, values: Iterable[Any]) -> ColumnSummary:
        values = list(values)
        ints = [v for v in values if type(v) is int]
        return cls(
            frozenset(type(v) for v in values if v is not None),
            min(ints) if ints else None,
            max(ints) if ints else None,
        )

    def merged(self, other: ColumnSummary) -> ColumnSummary:
        lows = [v for v in (self.int_min, other.int_min) if v is not None]
        highs = [v for v in (self.int_max, other.int_max) if v is not None]
        return ColumnSummary(
            self.kinds | other.kinds,
            min(lows) if lows else None,
            max(highs) if highs else None,
        )

    @property
    def ints_exact_in_double(self) -> bool:
        return all(abs(v) <= DOUBLE_EXACT for v in (self.int_min, self.int_max) if v is not None)


def type_of_summary(declared: str, summary: ColumnSummary) -> ColumnType:
    """The backup type of a column with this declared type and this content."""
    kinds = summary.kinds
    aff = affinity(declared)
    if not kinds:
        return {"INTEGER": BIGINT, "REAL": DOUBLE, "TEXT": VARCHAR, "NUMERIC": DOUBLE}.get(
            aff, BLOB if aff == "BLOB" and declared else VARCHAR
        )
    exact_in_double = summary.ints_exact_in_double
    if kinds == {int}:
        if aff != "REAL":
            return BIGINT
        return DOUBLE if exact_in_double else TEXT_FALLBACK
    if kinds <= {int, float}:
        return DOUBLE if exact_in_double else TEXT_FALLBACK
    if kinds == {str}:
        return VARCHAR
    if kinds == {bytes}:
        return BLOB
    return TEXT_FALLBACK


def stable_type(
    declared: str, parent_type: str, parent_text_fallback: bool | None, changed: ColumnType
) -> bool:
    """Whether a column keeps backup P's type when only rows typed ``changed`` changed.

    The rows not changed since P are some of P's rows. For the affinity's default type
    (INTEGER: BIGINT, REAL: DOUBLE, TEXT or none: VARCHAR, BLOB: BLOB) the contents that
    give it are closed under subsets and unions (only ints; only exact ints and floats;
    only strings; only blobs), so if P's content and the changed rows both give it, the
    whole column still does. NUMERIC is not closed (ints alone give BIGINT), nor is a
    VARCHAR that was text fallback in P (its non-text values may all have gone).
    """
    if affinity(declared) == "NUMERIC":
        return False
    default = type_of_summary(declared, ColumnSummary(frozenset()))
    if changed is not default or parent_type != default.duckdb:
        return False
    return default is not VARCHAR or parent_text_fallback is False


def column_type(declared: str, values: list[Any]) -> ColumnType:
    """The backup type of a column holding ``values`` (the whole column)."""
    return type_of_summary(declared, ColumnSummary.of_values(values))


def _kinds_sql(table: str, columns: Sequence[str]) -> str:
    """One scan of a table: per column, its least and greatest storage class by name.

    The decision needs the set of non-NULL storage classes only up to: empty, one class,
    {integer, real}, or anything else (text fallback). In name order (blob < integer <
    real < text, 'null' left out) the least and greatest class give exactly that: nothing
    lies between 'integer' and 'real', and any other pair of different classes is already
    "anything else", whatever lies between them.
    """
    parts = []
    for column in columns:
        kind = f"nullif(typeof({quote_identifier(column)}), 'null')"
        parts += [f"min({kind})", f"max({kind})"]
    return f"SELECT {', '.join(parts)} FROM {quote_identifier(table)}"


def presumed_types(definition: TableDefinition) -> list[ColumnType] | None:
    """Each column's type from its declaration alone, or None if one column needs the scan.

    For an INTEGER, REAL or TEXT affinity, or a column declared BLOB, the type an empty
    column gets (BIGINT, DOUBLE, VARCHAR, BLOB) is also the type of every content made
    only of values that fit it (:func:`fits`): only ints; only reals and ints exact in a
    double; only strings; only blobs, NULLs anywhere. So a full backup may write with these
    types at once and check each batch as it reads it; the first value that does not fit
    sends the table back to :func:`column_types_of` (the writer starts the table again),
    and the types are always those the scan gives. NUMERIC and undeclared columns take
    their type from the data even when every value is alike, so they need the scan.
    """
    out = []
    for column in definition.columns:
        aff = affinity(column.declared_type)
        if aff == "NUMERIC" or not column.declared_type.strip():
            return None
        out.append(type_of_summary(column.declared_type, ColumnSummary(frozenset())))
    return out


_FITS: dict[int, frozenset[type]] = {
    id(BIGINT): frozenset({int, type(None)}),
    id(DOUBLE): frozenset({float, int, type(None)}),
    id(VARCHAR): frozenset({str, type(None)}),
    id(BLOB): frozenset({bytes, type(None)}),
}


def fits(ctype: ColumnType, values: Sequence[Any]) -> bool:
    """Whether every value keeps ``ctype`` as the column's type (see :func:`presumed_types`)."""
    allowed = _FITS.get(id(ctype))
    if allowed is None:
        return False
    kinds = set(map(type, values))
    if not kinds <= allowed:
        return False
    if ctype is DOUBLE and int in kinds:
        return all(abs(v) <= DOUBLE_EXACT for v in values if type(v) is int)
    return True


def _int_range_sql(table: str, columns: Sequence[str]) -> str:
    """Per column, the least and greatest integer (min/max, not max(abs()): abs() of the
    smallest 64-bit integer overflows)."""
    parts = []
    for column in columns:
        c = quote_identifier(column)
        parts += [f"{f}(CASE WHEN typeof({c}) = 'integer' THEN {c} END)" for f in ("min", "max")]
    return f"SELECT {', '.join(parts)} FROM {quote_identifier(table)}"


def _kinds(conn: sqlite3.Connection, table: str, columns: Sequence[str]) -> list[frozenset]:
    row = conn.execute(_kinds_sql(table, columns)).fetchone()
    return [
        frozenset(_STORAGE[k] for k in row[2 * i : 2 * i + 2] if k is not None)
        for i in range(len(columns))
    ]


def _needs_int_range(declared: str, kinds: frozenset) -> bool:
    """Only integers beside reals, or in a REAL column, turn on their magnitude."""
    return kinds == {int, float} or (kinds == {int} and affinity(declared) == "REAL")


def column_types_of(
    connections: Sequence[sqlite3.Connection], definition: TableDefinition
) -> list[ColumnType]:
    """Each column's backup type over all shards, decided before any row is read.

    One scan per shard for the storage classes, and a second, only for the columns whose
    type turns on it, for the range of their integers.
    """
    names = definition.column_names
    kinds = [frozenset() for _ in names]
    for conn in connections:
        shard = _kinds(conn, definition.table, names)
        kinds = [a | b for a, b in zip(kinds, shard, strict=True)]
    summaries = [ColumnSummary(k) for k in kinds]
    ranged = [
        i
        for i, (c, k) in enumerate(zip(definition.columns, kinds, strict=True))
        if _needs_int_range(c.declared_type, k)
    ]
    if ranged:
        for conn in connections:
            row = conn.execute(_int_range_sql(definition.table, [names[i] for i in ranged]))
            values = row.fetchone()
            for j, i in enumerate(ranged):
                low, high = values[2 * j], values[2 * j + 1]
                summaries[i] = summaries[i].merged(ColumnSummary(frozenset(), low, high))
    return [
        type_of_summary(c.declared_type, s)
        for c, s in zip(definition.columns, summaries, strict=True)
    ]
