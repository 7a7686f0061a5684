"""A table of the pinned replica, read shard after shard as Arrow record batches.

The read goes through the snapshotter's own connections, each inside the read transaction
that pinned the cut (a second connection, e.g. ADBC's, would see a later state of the
shard). At most ``batch_rows`` rows are held as Python objects at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa

from backups.writer.column_types import DOUBLE, ColumnType, fits
from consumers.replica import iter_rows
from schemas.records import TableDefinition

BATCH_ROWS = 32_768

# Called with (table, batch) for every batch a backup writes, in order (e.g. a digest).
BatchObserver = Callable[[str, pa.RecordBatch], None]
# Called with each chunk's native rows, the same rows as columns, and per column the Arrow
# array built from those very values (None where the backup converted them first).
RowsObserver = Callable[[list[tuple], Sequence[Sequence[object]], Sequence[pa.Array | None]], None]


class PresumptionFailed(Exception):
    """A value does not fit the type presumed from the declaration: scan, then start over."""


def arrow_schema(names: Sequence[str], types: Sequence[ColumnType]) -> pa.Schema:
    return pa.schema([pa.field(n, t.arrow) for n, t in zip(names, types, strict=True)])


def _unconverted(ctype: ColumnType) -> bool:
    """``to_array`` hands the column's own values to Arrow (no Python conversion first)."""
    return ctype.convert is None or ctype is DOUBLE


def to_array(values: tuple, ctype: ColumnType) -> pa.Array:
    # DOUBLE's conversion is float(v) of ints that are exact in a double: Arrow does that
    # itself. Only the text fallback needs Python per value.
    if _unconverted(ctype):
        return pa.array(values, type=ctype.arrow)
    return pa.array([ctype.convert(v) for v in values], type=ctype.arrow)


def shard_batches(
    connections: Sequence[sqlite3.Connection],
    definition: TableDefinition,
    types: Sequence[ColumnType],
    batch_rows: int = BATCH_ROWS,
    on_rows: RowsObserver | None = None,
    presumed: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Every row of ``definition.table`` in every shard, in shard order, as batches.

    ``on_rows`` sees each chunk of native rows, with the arrays built from them (the
    table's digest is taken in the same pass, see ``backups.writer.table_proof``, and
    reads unconverted columns from the arrays). ``presumed``: the
    types come from the declaration (``column_types.presumed_types``), so every column of
    every chunk is checked against them first, and the first misfit raises
    :class:`PresumptionFailed`.
    """
    names = definition.column_names
    schema = arrow_schema(names, types)
    for conn in connections:
        for rows in iter_rows(conn, definition.table, names, chunk=batch_rows):
            columns = list(zip(*rows, strict=True))
            if presumed:
                for name, values, ctype in zip(names, columns, types, strict=True):
                    if not fits(ctype, values):
                        raise PresumptionFailed(f"column {name!r} holds a value beyond {ctype}")
            arrays = [to_array(values, t) for values, t in zip(columns, types, strict=True)]
            if on_rows is not None:
                pairs = zip(arrays, types, strict=True)
                on_rows(rows, columns, [a if _unconverted(t) else None for a, t in pairs])
            yield pa.record_batch(arrays, schema=schema)
