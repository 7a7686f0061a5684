"""From change-log rows to operation records and the Kafka key that places them.

All changes of one row share one key, so they land in one partition in commit order. An
UPDATE that changes the primary key becomes a DELETE of the old key and an INSERT of the
new one: each then travels with its own key, and per-key order still holds.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

from producers.sqlite_changelog import (
    KIND_DELETE,
    KIND_INSERT,
    ChangeRow,
    image_columns,
    parse_literal,
    raw_text_value,
    split_literals,
)
from schemas.records import Operation, OpType, TableDefinition, Value

KEY_SEPARATOR = "\x1f"

log = logging.getLogger("cutline.capture")


@dataclass(frozen=True)
class TableLayout:
    """What capture needs per table to turn literal images into records, precomputed."""

    definition: TableDefinition
    columns: tuple[str, ...]
    key_positions: tuple[int, ...]

    @classmethod
    def of(cls, definition: TableDefinition) -> TableLayout:
        columns = image_columns(definition)
        return cls(definition, columns, tuple(columns.index(k) for k in definition.key_columns))


def _parse_raw_text(text: str) -> Value:
    return raw_text_value(parse_literal(text))


def message_key(table: str, key_literals: list[str]) -> bytes:
    return KEY_SEPARATOR.join([table, *key_literals]).encode("utf-8", "surrogateescape")


def partition_for(key: bytes, partitions: int) -> int:
    """Stable across processes and restarts (CRC-32 of the key), unlike Python's hash()."""
    return zlib.crc32(key) % partitions


def to_operations(
    change: ChangeRow, layout: TableLayout, source: str
) -> list[tuple[bytes, Operation]]:
    """One change-log row as (Kafka key, operation) pairs: one, or two for a key change."""
    columns = layout.columns
    before_lits = split_literals(change.before) if change.before is not None else None
    after_lits = split_literals(change.after) if change.after is not None else None
    for lits in (before_lits, after_lits):
        if lits is not None and len(lits) != len(columns):
            raise ValueError(
                f"change {change.seq} on {change.table!r} has {len(lits)} values for "
                f"{len(columns)} columns"
            )
    parse = parse_literal
    if change.raw_text:
        parse = _parse_raw_text
        log.warning(
            "change %s on table %r holds TEXT that is not valid UTF-8: it is captured byte "
            "for byte as a BLOB (Avro and DuckDB strings must be UTF-8)",
            change.seq,
            change.table,
        )
    before = dict(zip(columns, map(parse, before_lits), strict=True)) if before_lits else None
    after = dict(zip(columns, map(parse, after_lits), strict=True)) if after_lits else None
    table = layout.definition.table
    keys = layout.definition.key_columns

    def op(kind: OpType, lits: list[str], b, a) -> tuple[bytes, Operation]:
        key_lits = [lits[i] for i in layout.key_positions]
        image = a if a is not None else b
        record = Operation(
            source=source,
            seq=change.seq,
            table=table,
            op=kind,
            key={k: image[k] for k in keys},
            before=b,
            after=a,
            commit_time_us=change.at_us,
        )
        return message_key(table, key_lits), record

    if change.kind == KIND_INSERT:
        return [op(OpType.INSERT, after_lits, None, after)]
    if change.kind == KIND_DELETE:
        return [op(OpType.DELETE, before_lits, before, None)]
    old_key = [before_lits[i] for i in layout.key_positions]
    new_key = [after_lits[i] for i in layout.key_positions]
    if old_key == new_key:
        return [op(OpType.UPDATE, after_lits, before, after)]
    return [
        op(OpType.DELETE, before_lits, before, None),
        op(OpType.INSERT, after_lits, None, after),
    ]
