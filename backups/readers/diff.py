"""Diff: which rows were added, removed and changed between two backups.

Rows are matched by the table's primary key (the manifest's ``key_columns``): a key in
both backups with different values is *changed*, a key in one only is *added* or
*removed*. Where the key cannot tell rows apart (SQLite's hidden rowid is not in the
backup, or a PRIMARY KEY column holds NULLs that repeat), those rows are compared whole,
as a multiset, and show up as added or removed only.

A column can have a different backup type in the two backups (BIGINT in one, text in the
other once a text value appeared). Values are then compared by what they were on the
primary (``5`` and ``'5'`` are the same integer), so a type change alone is no change.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import duckdb

from backups.catalog import Backup
from backups.chain import resolved_database
from cutline.errors import ConfigError, CutlineError
from producers.sqlite_changelog import quote_identifier, quote_text

Row = dict[str, Any]
_NULL = ("z", None)  # the canonical form of NULL
_INTEGER_TEXT = re.compile(r"-?[0-9]+")


class DiffError(CutlineError):
    """A backup could not be read for the diff."""


@dataclass
class TableDiff:
    """One table's differences; ``only_in`` names the side a table exists on, if one."""

    added: list[Row] = field(default_factory=list)
    removed: list[Row] = field(default_factory=list)
    changed: list[dict[str, Row]] = field(default_factory=list)
    only_in: str | None = None  # "from" or "to"
    # per entry of ``changed``, the columns whose values differ (a backup type change of
    # an equal value, 5 -> '5', is no difference); for the text form only
    changed_columns: list[list[str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
        }
        if self.only_in is not None:
            out["only_in"] = self.only_in
        return out


@dataclass
class BackupDiff:
    before: Backup
    after: Backup
    tables: dict[str, TableDiff]

    def as_json(self) -> dict[str, Any]:
        return {
            "from": {"marker_id": self.before.marker_id, "t1": self.before.t1},
            "to": {"marker_id": self.after.marker_id, "t1": self.after.t1},
            "tables": {name: d.as_json() for name, d in self.tables.items()},
        }


@dataclass(frozen=True)
class _Side:
    columns: list[str]
    types: dict[str, str]
    rows: list[tuple[Any, ...]]
    alias: str = ""  # the backup's database in the diff's DuckDB connection


DIFF_MEMORY = "256MB"  # DuckDB's memory_limit while it sets aside the rows both hold
_OLD, _NEW = "_cutline_from", "_cutline_to"  # the two backups, attached side by side


def diff_backups(before: Backup, after: Backup, *, table: str | None = None) -> BackupDiff:
    """Rows added, removed and changed from ``before`` to ``after``, table by table.

    Where a table has the same columns and backup types in both, DuckDB first takes out
    the rows both backups hold (``EXCEPT ALL`` each way, within ``DIFF_MEMORY``, spilling
    to disk), so Python matches only the rows that differ: its memory and time follow the
    changes, not the table. The result is the same, since a row both hold, equal value for
    value, is neither added, removed nor changed (keys that repeat, NULL keys, are
    compared as multisets, where common rows cancel out). Otherwise (a column added, a
    type changed) every row is compared, value by value as the primary held it.
    """
    names = sorted(set(before.tables) | set(after.tables))
    if table is not None:
        if table not in names:
            raise ConfigError(
                f"--table {table!r} is in neither backup {before.marker_id} nor "
                f"{after.marker_id}; tables there: {', '.join(names) or 'none'}"
            )
        names = [table]
    result: dict[str, TableDiff] = {}
    with ExitStack() as stack:
        spill = stack.enter_context(tempfile.TemporaryDirectory(prefix="cutline-diff-"))
        conn = duckdb.connect(
            config={
                "memory_limit": DIFF_MEMORY,
                "temp_directory": spill,
                "preserve_insertion_order": "false",
            }
        )
        stack.callback(conn.close)
        _attach(stack, conn, before, _OLD)
        _attach(stack, conn, after, _NEW)
        for name in names:
            in_old, in_new = name in before.tables, name in after.tables
            a = _columns(conn, _OLD, before, name) if in_old else None
            b = _columns(conn, _NEW, after, name) if in_new else None
            if a is not None and b is not None and _comparable(a, b):
                a = _rows(conn, before, name, a, f"EXCEPT ALL {_select(_NEW, name, b)}")
                b = _rows(conn, after, name, b, f"EXCEPT ALL {_select(_OLD, name, a)}")
            else:
                a = None if a is None else _rows(conn, before, name, a)
                b = None if b is None else _rows(conn, after, name, b)
            keys = (after if in_new else before).tables[name].get("key_columns", [])
            result[name] = diff_rows(a, b, list(keys))
    return BackupDiff(before, after, result)


def _comparable(a: _Side, b: _Side) -> bool:
    """DuckDB's equality is the diff's own here: the same columns, of the same types."""
    return (a.columns, a.types) == (b.columns, b.types)


def _attach(stack: ExitStack, conn: duckdb.DuckDBPyConnection, backup: Backup, alias: str) -> None:
    path = stack.enter_context(resolved_database(backup))
    try:
        conn.execute(f"ATTACH {quote_text(str(path))} AS {alias} (READ_ONLY)")
    except duckdb.Error as exc:
        raise DiffError(f"cannot open backup {backup.marker_id} ({path}): {exc}") from exc


def _select(alias: str, table: str, side: _Side) -> str:
    names = ",".join(quote_identifier(c) for c in side.columns)
    return f"SELECT {names} FROM {alias}.main.{quote_identifier(table)}"


def _columns(conn: duckdb.DuckDBPyConnection, alias: str, backup: Backup, table: str) -> _Side:
    """The table's columns and their DuckDB types in ``backup`` (no rows yet)."""
    columns = [c["name"] for c in backup.tables[table]["columns"]]
    try:
        info = conn.execute(
            "SELECT column_name, data_type FROM duckdb_columns() "
            "WHERE database_name = ? AND schema_name = 'main' AND table_name = ?",
            [alias, table],
        ).fetchall()
    except duckdb.Error as exc:
        raise DiffError(f"cannot read table {table!r} of backup {backup.marker_id}: {exc}") from exc
    return _Side(columns, {str(n): str(t) for n, t in info}, [], alias)


def _rows(
    conn: duckdb.DuckDBPyConnection, backup: Backup, table: str, side: _Side, rest: str = ""
) -> _Side:
    """``side`` with its rows: all of them, or those the query's ``rest`` keeps."""
    try:
        rows = conn.execute(f"{_select(side.alias, table, side)} {rest}").fetchall()
    except duckdb.Error as exc:
        raise DiffError(f"cannot read table {table!r} of backup {backup.marker_id}: {exc}") from exc
    return _Side(side.columns, side.types, rows, side.alias)


def diff_rows(before: _Side | None, after: _Side | None, key_columns: list[str]) -> TableDiff:
    """The diff of one table; a missing side is a table that exists in one backup only."""
    if before is None and after is None:
        return TableDiff()
    if before is None or after is None:
        present = after if before is None else before
        assert present is not None
        rows = [dict(zip(present.columns, r, strict=True)) for r in present.rows]
        rows.sort(key=_sort_key)
        if before is None:
            return TableDiff(added=rows, only_in="to")
        return TableDiff(removed=rows, only_in="from")

    columns = list(dict.fromkeys([*before.columns, *after.columns]))
    loose = {c for c in columns if before.types.get(c) != after.types.get(c)}
    keys = key_columns if key_columns and set(key_columns) <= set(columns) else []
    old_groups = _group(before, columns, keys, loose)
    new_groups = _group(after, columns, keys, loose)
    diff = TableDiff()
    for key in sorted(old_groups.keys() | new_groups.keys()):  # canonical forms order
        olds, news = old_groups.get(key, []), new_groups.get(key, [])
        if keys and len(olds) == 1 and len(news) == 1 and _NULL not in key:
            old_row, new_row = olds[0], news[0]
            differ = [
                c
                for c in columns
                if _canonical(old_row[c], c in loose) != _canonical(new_row[c], c in loose)
            ]
            if differ:
                diff.changed.append(
                    {"key": {k: new_row[k] for k in keys}, "before": old_row, "after": new_row}
                )
                diff.changed_columns.append(differ)
            continue
        old_count = Counter(_canonical_row(r, columns, loose) for r in olds)
        new_count = Counter(_canonical_row(r, columns, loose) for r in news)
        diff.removed.extend(_take(olds, old_count - new_count, columns, loose))
        diff.added.extend(_take(news, new_count - old_count, columns, loose))
    diff.added.sort(key=_sort_key)
    diff.removed.sort(key=_sort_key)
    return diff


def _group(
    side: _Side, columns: list[str], keys: list[str], loose: set[str]
) -> dict[tuple[Any, ...], list[Row]]:
    """Rows by canonical key (all rows in one group when the key cannot match rows)."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for values in side.rows:
        row = dict.fromkeys(columns)
        row.update(zip(side.columns, values, strict=True))
        key = tuple(_canonical(row[k], k in loose) for k in keys)
        groups.setdefault(key, []).append(row)
    return groups


def _take(rows: list[Row], wanted: Counter, columns: list[str], loose: set[str]) -> list[Row]:
    out = []
    remaining = Counter(wanted)
    for row in rows:
        canonical = _canonical_row(row, columns, loose)
        if remaining[canonical] > 0:
            remaining[canonical] -= 1
            out.append(row)
    return out


def _canonical_row(row: Row, columns: list[str], loose: set[str]) -> tuple[Any, ...]:
    return tuple(_canonical(row[c], c in loose) for c in columns)


def _canonical(value: Any, loose: bool) -> Any:
    """A comparable form of a value; ``loose`` when the column's type differs by backup.

    The snapshotter keeps a column with values outside its type as text (integers as
    ``str``, reals as ``repr``, blobs as hex), so across such a change a number and its
    text are the same value.
    """
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return ("n", int(value))
    if isinstance(value, int | float):
        return ("n", value)
    if loose and isinstance(value, bytes | bytearray | memoryview):
        return ("s", bytes(value).hex())
    if loose and isinstance(value, str):
        number = _as_number(value)
        if number is not None:
            return _canonical(number, False)
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return _NULL
    return ("o", repr(value))


def _as_number(text: str) -> int | float | None:
    """The number whose text the snapshotter wrote (``str(int)``, ``repr(float)``), if any."""
    if _INTEGER_TEXT.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return None
    return number if repr(number) == text else None


def _sort_key(row: Row) -> tuple[Any, ...]:
    return tuple(_canonical(v, False) for v in row.values())


def summary_lines(diff: BackupDiff) -> Iterable[str]:
    """The text form: one summary line per table, then its rows (+ added, - removed, ~)."""
    yield (
        f"from backup {diff.before.marker_id} (the primary at {diff.before.t1}) "
        f"to backup {diff.after.marker_id} (the primary at {diff.after.t1})"
    )
    for name, d in diff.tables.items():
        counts = f"{len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed"
        if d.only_in == "to":
            yield f"{name}: only in backup {diff.after.marker_id} (new table): {counts}"
        elif d.only_in == "from":
            yield f"{name}: only in backup {diff.before.marker_id} (table gone): {counts}"
        else:
            yield f"{name}: {counts}"
        for row in d.added:
            yield f"  + {_show(row)}"
        for row in d.removed:
            yield f"  - {_show(row)}"
        for change, differ in zip(d.changed, d.changed_columns, strict=True):
            fields = [
                f"{c}: {_show_value(change['before'].get(c))} -> "
                f"{_show_value(change['after'].get(c))}"
                for c in differ
            ]
            yield f"  ~ {_show(change['key'])}: {', '.join(fields)}"


def _show(row: Row) -> str:
    return "{" + ", ".join(f"{k}: {_show_value(v)}" for k, v in row.items()) + "}"


def _show_value(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "x'" + value.hex() + "'"
    return repr(value)
