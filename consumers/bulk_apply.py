"""Apply a run of operations to a shard with one ``executemany`` per group, exactly.

Why: one ``execute`` per operation made the SQLite call replication's top cost. A *group*
is a maximal stretch of consecutive operations on one table of one kind (INSERT, UPDATE or
DELETE), so the statements still run one after another in the order they arrived, as
they would one by one. A group runs inside a SAVEPOINT; it is kept only if no statement
failed and, for UPDATE and DELETE, every operation matched a row (the keys are the
replica table's PRIMARY KEY, checked once per table, so no operation can match more than
one row and a total equal to the group's size means each matched exactly one). Otherwise
the group is rolled back to the savepoint and applied again one operation at a time by
``Shard.apply``, which names the culprit (its ApplyError goes to the dead letters, for
that operation only) with the very result the per-operation path gives.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING

from producers.sqlite_changelog import ROWID, quote_identifier
from schemas.operation_runs import Run, RunLayout
from schemas.records import Operation, OpType, RowImage, TableDefinition, Value

if TYPE_CHECKING:
    from consumers.replica import ApplyError, Shard

MIN_GROUP = 2  # a single operation goes the per-operation way: no savepoint to pay for
_SAVEPOINT = "cutline_bulk"

Params = Callable[[Operation], tuple[Value, ...]]


def groups(ops: Sequence[Operation]) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each maximal run of consecutive operations of one table and kind."""
    start = 0
    for i in range(1, len(ops) + 1):
        if i == len(ops) or ops[i].table != ops[start].table or ops[i].op is not ops[start].op:
            yield start, i
            start = i


def _getter(names: tuple[str, ...]) -> Callable[[RowImage], tuple[Value, ...]]:
    """The values of ``names`` in an image, as a tuple (``itemgetter`` returns a bare value
    for one name)."""
    if len(names) == 1:
        name = names[0]
        return lambda image: (image[name],)
    return itemgetter(*names) if names else (lambda image: ())


def param_sources(
    definition: TableDefinition, kind: OpType, names: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Where ``Shard.apply`` takes an operation's parameters from, in order: these names
    of the after image, then these of the key (``names``: the statement's own)."""
    keys = definition.key_columns
    if kind is OpType.INSERT:
        return names, ()
    if kind is OpType.UPDATE:
        return names[: -len(keys)], keys
    return (), keys


def params_of(definition: TableDefinition, kind: OpType, names: tuple[str, ...]) -> Params:
    """How ``Shard.apply`` builds one operation's parameters, for a whole group at once."""
    after_names, key_names = param_sources(definition, kind, names)
    row, key_values = _getter(after_names), _getter(key_names)
    if kind is OpType.INSERT:
        return lambda op: row(op.after)  # type: ignore[arg-type]
    if kind is OpType.UPDATE:
        return lambda op: row(op.after) + key_values(op.key)  # type: ignore[arg-type]
    return lambda op: key_values(op.key)


def primary_key(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    """The replica table's own PRIMARY KEY columns, in key order (rowid if it has none)."""
    info = conn.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()
    keyed = sorted((r[5], r[1]) for r in info if r[5] > 0)
    return tuple(name for _, name in keyed) or (ROWID,)


class BulkApplier:
    """Per-shard state of the bulk path: parameter builders and key checks, cached."""

    def __init__(self, shard: Shard):
        self.shard = shard
        self._params: dict[tuple[str, OpType], tuple[str, Params]] = {}
        self._unique_keys: dict[str, bool] = {}

    def apply(self, ops: Sequence[Operation]) -> list[tuple[int, ApplyError]]:
        """Apply ``ops`` in order inside the shard's open batch.

        Returns the operations that could not be applied, as (index in ``ops``, error);
        all others are applied, exactly as ``Shard.apply`` one by one would have.
        """
        from consumers.replica import ApplyError

        failed: list[tuple[int, ApplyError]] = []
        for start, stop in groups(ops):
            group = ops[start:stop]
            if len(group) >= MIN_GROUP and self._try_group(group):
                continue
            for i, op in enumerate(group, start):
                try:
                    self.shard.apply(op)
                except ApplyError as exc:
                    failed.append((i, exc))
        return failed

    def apply_run(self, layout: RunLayout, run: Run) -> bool:
        """A run of one table and kind decoded as columns (``schemas.operation_runs``): one
        executemany under a savepoint, exactly as ``_try_group`` runs the same Operations;
        False (rolled back) if that would not be clean."""
        shard = self.shard
        definition = shard.definition(layout.table)
        kind = layout.op
        if definition is None:
            return False
        if kind is not OpType.INSERT and not self._keys_unique(definition):
            return False
        if kind is not OpType.DELETE and layout.after_names is None:
            return False  # no row image: the per-operation path rejects each one
        sql, names = shard.statement(definition, kind, {})
        after_names, key_names = param_sources(definition, kind, names)
        wanted = [(run.after, n) for n in after_names] + [(run.key, k) for k in key_names]
        if any(name not in image for image, name in wanted):
            return False  # an image lacks a column: the per-operation path says which
        rows = zip(*(image[name] for image, name in wanted), strict=True)
        return self._run(sql, rows, run.count, insert=kind is OpType.INSERT)

    def _run(
        self, sql: str, rows: Iterable[tuple[Value, ...]], count: int, *, insert: bool
    ) -> bool:
        """``rows`` through one executemany under a savepoint, kept only if no statement
        failed and (UPDATE, DELETE) every one matched a row."""
        conn = self.shard.conn
        conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            cursor = conn.executemany(sql, rows)
            clean = insert or cursor.rowcount == count
        except sqlite3.Error:
            clean = False
        if not clean:
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
        conn.execute(f"RELEASE {_SAVEPOINT}")
        if clean:
            self.shard.count_applied(count)
        return clean

    def _try_group(self, group: Sequence[Operation]) -> bool:
        """Run the group as one executemany under a savepoint; False (rolled back) if any
        operation would not apply cleanly on its own."""
        first = group[0]
        shard = self.shard
        definition = shard.definition(first.table)
        if definition is None:
            return False
        kind = first.op
        if kind is not OpType.INSERT and not self._keys_unique(definition):
            return False
        if kind is not OpType.DELETE and any(op.after is None for op in group):
            return False  # no row image (a table of key columns only would not notice)
        prepared = self._prepared(definition, kind, first)
        if prepared is None:
            return False
        sql, params = prepared
        try:
            rows = [params(op) for op in group]
        except (KeyError, TypeError):
            return False  # an image lacks a column: the per-operation path says which
        return self._run(sql, rows, len(group), insert=kind is OpType.INSERT)

    def _prepared(
        self, definition: TableDefinition, kind: OpType, sample: Operation
    ) -> tuple[str, Params] | None:
        cache_key = (definition.table, kind)
        cached = self._params.get(cache_key)
        if cached is None:
            image = sample.after if kind is not OpType.DELETE else sample.key
            if image is None:
                return None
            sql, names = self.shard.statement(definition, kind, image)
            cached = self._params[cache_key] = (sql, params_of(definition, kind, names))
        return cached

    def _keys_unique(self, definition: TableDefinition) -> bool:
        """True if the definition's key is the replica table's PRIMARY KEY: then an UPDATE or
        DELETE by key matches at most one row."""
        known = self._unique_keys.get(definition.table)
        if known is None:
            actual = primary_key(self.shard.conn, definition.table)
            known = self._unique_keys[definition.table] = actual == definition.key_columns
        return known

    def forget(self) -> None:
        """Definitions were reloaded (a rolled-back batch): drop what was derived from them."""
        self._params.clear()
        self._unique_keys.clear()
