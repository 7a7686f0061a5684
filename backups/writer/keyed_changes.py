"""An incremental that costs what changed: the keys the shards recorded, not a full diff.

For table T and parent backup P (see :mod:`consumers.changed_keys`): read the keys touched
after P's cut and their current rows from the pinned shards (key lookups); take P's rows
of those keys from P's chain (its base restricted to the touched keys, then each link's
changes, in a scratch DuckDB); the incremental is the same diff as a full comparison
(:func:`backups.incremental.write_changes`) restricted to the touched keys, which is the
same result: a key nobody touched since P holds the row it held at P.

The table's digest comes from the same rows: the parent's digest, minus P's rows of the
touched keys, plus their rows now (``backups.writer.table_proof.DigestDerivation``, which
argues why that is exact), so no other row of the table is read.

Returns a reason instead when this cannot be exact (no record, NULLs or rowid as key, a
column type that might change, a key that moved shards, a digest that cannot be derived);
the snapshotter then diffs the whole table as before.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from backups.catalog import Backup
from backups.chain import DELETED_SCHEMA, MATCH_KEY, apply_link_table, chain_of
from backups.writer.column_types import ColumnType, column_type, stable_type
from backups.writer.table_proof import DigestDerivation
from backups.writer.table_stream import arrow_schema, to_array
from consumers import changed_keys
from producers.sqlite_changelog import quote_identifier, quote_text
from schemas.records import TableDefinition

_CURRENT = "_cutline_current"
_PREVIOUS = "_cutline_previous_rows"
_TOUCHED = "_cutline_touched"
SCRATCH_MEMORY = "64MB"  # DuckDB's memory_limit for looking up the parent's rows


@dataclass(frozen=True)
class KeyedChanges:
    types: list[ColumnType]
    rows: int  # the table's full row count at the cut (the digest's)
    fields: dict[str, Any]  # match, changed, deleted, deleted_columns (as write_changes)
    proof: dict[str, Any]  # the manifest's ``digest`` of the table, derived from the parent's


def write_keyed_changes(
    db: duckdb.DuckDBPyConnection,
    connections: Sequence[sqlite3.Connection],
    definition: TableDefinition,
    parent: Backup,
) -> KeyedChanges | str:
    """Create T and ``_cutline_deleted.T`` in ``db`` from the recorded keys, or say why not.

    The touched keys and rows are read in slices (``changed_keys.SLICE_ROWS``): each slice
    is checked, added to the derived digest and turned into Arrow, so what stays in memory
    for the whole table is columnar (tens of bytes per touched row, not a Python tuple).
    """
    for conn in connections:
        problem = changed_keys.coverage_problem(conn, definition, parent.marker_id)
        if problem:
            return problem
    names = list(definition.column_names)
    keys = list(definition.key_columns)
    parent_table = parent.manifest["tables"][definition.table]
    types = []
    for column, before in zip(definition.columns, parent_table["columns"], strict=True):
        # Only the affinity's own type is stable (``stable_type``), and its contents are
        # closed under unions: every slice giving it is the same as all rows giving it.
        default = column_type(column.declared_type, [])
        if not stable_type(
            column.declared_type, before["type"], before.get("text_fallback"), default
        ):
            return f"column {column.name!r} might not keep its type {before['type']}"
        types.append(default)
    schema = arrow_schema(names, types)
    derivation = DigestDerivation(parent_table, definition, types)
    batches = []
    for conn in connections:
        for rows in changed_keys.touched_rows(conn, definition, parent.marker_id):
            columns = list(zip(*rows, strict=True))
            checks = zip(definition.columns, parent_table["columns"], columns, types, strict=True)
            for column, before, values, ctype in checks:
                if column_type(column.declared_type, list(values)) is not ctype:
                    return f"column {column.name!r} might not keep its type {before['type']}"
            derivation.add_now(rows, columns)
            arrays = [to_array(v, t) for v, t in zip(columns, types, strict=True)]
            batches.append(pa.record_batch(arrays, schema=schema))
    if derivation.problem is not None:  # known before any lookup in the parent
        return f"its digest cannot be derived: {derivation.problem}"
    current = pa.Table.from_batches(batches, schema=schema)
    key_types = [types[names.index(k)] for k in keys]
    key_schema = arrow_schema(keys, key_types)
    key_batches = []
    try:
        for conn in connections:
            for touched in changed_keys.touched_keys(conn, definition, parent.marker_id):
                values = zip(*touched, strict=True)
                arrays = [to_array(v, t) for v, t in zip(values, key_types, strict=True)]
                key_batches.append(pa.record_batch(arrays, schema=key_schema))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return "a changed key does not fit its column's backup type"
    touched_table = pa.Table.from_batches(key_batches, schema=key_schema)
    target = quote_identifier(definition.table)
    key_list = ", ".join(quote_identifier(k) for k in keys)
    db.register(_CURRENT, current)
    try:
        distinct = db.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT {key_list} FROM {_CURRENT})"
        ).fetchall()[0][0]
    finally:
        db.unregister(_CURRENT)
    if distinct != current.num_rows:
        return "a key is held by two shards"
    if touched_table.num_rows == 0:  # nothing changed: nothing of P to look up
        previous = current
    else:
        previous = _previous_rows(parent, definition.table, keys, touched_table)
    digest = derivation.result(previous)
    if isinstance(digest, str):
        return f"its digest cannot be derived: {digest}"
    db.register(_CURRENT, current)
    db.register(_PREVIOUS, previous)
    try:
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {DELETED_SCHEMA}")
        db.execute(
            f"CREATE TABLE {target} AS SELECT * FROM {_CURRENT} EXCEPT ALL "
            f"SELECT * FROM {_PREVIOUS}"
        )
        db.execute(
            f"CREATE TABLE {DELETED_SCHEMA}.{target} AS SELECT {key_list} FROM {_PREVIOUS} "
            f"EXCEPT ALL SELECT {key_list} FROM {_CURRENT}"
        )
        changed_count = db.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0]
        deleted_count = db.execute(f"SELECT count(*) FROM {DELETED_SCHEMA}.{target}").fetchall()[0][
            0
        ]
    finally:
        db.unregister(_CURRENT)
        db.unregister(_PREVIOUS)
    fields = {
        "match": MATCH_KEY,
        "changed": int(changed_count),
        "deleted": int(deleted_count),
        "deleted_columns": keys,
    }
    return KeyedChanges(types, digest.rows, fields, {"digest": digest.as_json()})


def _previous_rows(parent: Backup, table: str, keys: list[str], touched: pa.Table) -> pa.Table:
    """P's rows of the touched keys: its chain, each link restricted to those keys.

    Looked up within ``SCRATCH_MEMORY`` first: unbounded, DuckDB keeps every block of the
    parent's file it scanned cached until the connection closes, which at 10M rows made
    ``replicate``'s peak RSS jump by ~170 MB for a 1 % incremental. A set of touched rows
    too large for that bound to hold is looked up again without it, as before.
    """
    try:
        return _previous_rows_within(parent, table, keys, touched, SCRATCH_MEMORY)
    except duckdb.OutOfMemoryException:
        return _previous_rows_within(parent, table, keys, touched, None)


def _previous_rows_within(
    parent: Backup, table: str, keys: list[str], touched: pa.Table, memory: str | None
) -> pa.Table:
    target = quote_identifier(table)
    on = " AND ".join(f"t.{quote_identifier(k)} = x.{quote_identifier(k)}" for k in keys)
    with tempfile.TemporaryDirectory(prefix="cutline-lookup-") as spill:
        config = {} if memory is None else {"memory_limit": memory, "temp_directory": spill}
        scratch = duckdb.connect(config=config)
        try:
            scratch.register(_TOUCHED, touched)
            for i, link in enumerate(chain_of(parent)):
                alias = f"link{i}"
                scratch.execute(
                    f"ATTACH {quote_text(str(link.duckdb_path))} AS {alias} (READ_ONLY)"
                )
                if i == 0:
                    scratch.execute(
                        f"CREATE TABLE {target} AS SELECT t.* FROM {alias}.main.{target} t "
                        f"SEMI JOIN {_TOUCHED} x ON {on}"
                    )
                else:
                    apply_link_table(scratch, alias, table, link.manifest["tables"][table])
                scratch.execute(f"DETACH {alias}")
            relation = scratch.sql(f"SELECT t.* FROM {target} t SEMI JOIN {_TOUCHED} x ON {on}")
            if hasattr(relation, "to_arrow_table"):  # DuckDB >= 1.4
                return relation.to_arrow_table()
            return relation.arrow()
        finally:
            scratch.close()
