"""From change-log rows to operation records and the Kafka key that places them.

All changes of one row share one key, so they land in one partition in commit order. An
UPDATE that changes the primary key becomes a DELETE of the old key and an INSERT of the
new one: each then travels with its own key, and per-key order still holds.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

from producers.row_images import (
    element_literal,
    is_json_image,
    json_elements,
    needs_untagging,
    untagged,
)
from producers.sqlite_changelog import (
    KIND_DELETE,
    KIND_INSERT,
    ChangeRow,
    image_columns,
    parse_literal,
    raw_text_value,
    split_literals,
)
from schemas.operation_codec import RowEncoder
from schemas.records import Operation, OpType, TableDefinition, Value

KEY_SEPARATOR = "\x1f"

log = logging.getLogger("cutline.capture")


@dataclass(frozen=True)
class TableLayout:
    """What capture needs per table to turn row images into records, precomputed."""

    definition: TableDefinition
    columns: tuple[str, ...]
    key_positions: tuple[int, ...]

    @classmethod
    def of(cls, definition: TableDefinition) -> TableLayout:
        columns = image_columns(definition)
        return cls(definition, columns, tuple(columns.index(k) for k in definition.key_columns))


def message_key(table: str, key_literals: list[str]) -> bytes:
    return KEY_SEPARATOR.join([table, *key_literals]).encode("utf-8", "surrogateescape")


def partition_for(key: bytes, partitions: int) -> int:
    """Stable across processes and restarts (CRC-32 of the key), unlike Python's hash()."""
    return zlib.crc32(key) % partitions


def _image(text: str, layout: TableLayout, change: ChangeRow) -> tuple[list[Value], list[str]]:
    """An image's values and its key columns' literals, in either change-log format."""
    if is_json_image(text):
        elements = json_elements(text)
        values = untagged(elements) if needs_untagging(text) else elements
        literals = [element_literal(elements[i]) for i in layout.key_positions]
    else:
        literals = split_literals(text)
        values = [parse_literal(x) for x in literals]
        literals = [literals[i] for i in layout.key_positions]
    if len(values) != len(layout.columns):
        raise ValueError(
            f"change {change.seq} on {change.table!r} has {len(values)} values for "
            f"{len(layout.columns)} columns"
        )
    if change.raw_text:
        values = [raw_text_value(v) for v in values]
    return values, literals


def image_key_literals(text: str, layout: TableLayout, change: ChangeRow) -> list[str]:
    """The SQL literals of an image's key columns (what its Kafka key is built from)."""
    return _image(text, layout, change)[1]


def _warn_raw_text(change: ChangeRow) -> None:
    log.warning(
        "change %s on table %r holds TEXT that is not valid UTF-8: it is captured byte "
        "for byte as a BLOB (Avro and DuckDB strings must be UTF-8)",
        change.seq,
        change.table,
    )


def to_operations(
    change: ChangeRow, layout: TableLayout, source: str
) -> list[tuple[bytes, Operation]]:
    """One change-log row as (Kafka key, operation) pairs: one, or two for a key change."""
    columns = layout.columns
    before = after = None
    before_key: list[str] = []
    after_key: list[str] = []
    if change.raw_text:
        _warn_raw_text(change)
    if change.before is not None:
        values, before_key = _image(change.before, layout, change)
        before = dict(zip(columns, values, strict=True))
    if change.after is not None:
        values, after_key = _image(change.after, layout, change)
        after = dict(zip(columns, values, strict=True))
    table = layout.definition.table
    keys = layout.definition.key_columns
    seq, at_us = change.seq, change.at_us

    def op(kind: OpType, key_lits: list[str], b, a) -> tuple[bytes, Operation]:
        image = a if a is not None else b
        key = {k: image[k] for k in keys}
        return message_key(table, key_lits), Operation(source, seq, table, kind, key, b, a, at_us)

    if change.kind == KIND_INSERT:
        return [op(OpType.INSERT, after_key, None, after)]
    if change.kind == KIND_DELETE:
        return [op(OpType.DELETE, before_key, before, None)]
    if before_key == after_key:
        return [op(OpType.UPDATE, after_key, before, after)]
    return [
        op(OpType.DELETE, before_key, before, None),
        op(OpType.INSERT, after_key, None, after),
    ]


class RecordBuilder:
    """One table's change-log rows straight to Kafka (key, value) pairs, for capture.

    The same records as :func:`to_operations` then ``encode_operation`` (unit-tested),
    without a dict or an ``Operation`` per change: the per-operation path of capture.
    """

    def __init__(self, layout: TableLayout, source: str, header: bytes):
        self.layout = layout
        self._table = layout.definition.table
        self._encoder = RowEncoder(
            header, source, self._table, layout.columns, layout.key_positions
        )

    def records(self, change: ChangeRow) -> list[tuple[bytes, bytes]]:
        layout, encode, table = self.layout, self._encoder.encode, self._table
        if change.raw_text:
            _warn_raw_text(change)
        before = after = None
        before_key: list[str] = []
        after_key: list[str] = []
        if change.before is not None:
            before, before_key = _image(change.before, layout, change)
        if change.after is not None:
            after, after_key = _image(change.after, layout, change)
        seq, at_us, kind = change.seq, change.at_us, change.kind
        if kind == KIND_INSERT:
            return [(message_key(table, after_key), encode(seq, OpType.INSERT, None, after, at_us))]
        if kind == KIND_DELETE:
            return [
                (message_key(table, before_key), encode(seq, OpType.DELETE, before, None, at_us))
            ]
        if before_key == after_key:
            value = encode(seq, OpType.UPDATE, before, after, at_us)
            return [(message_key(table, after_key), value)]
        return [
            (message_key(table, before_key), encode(seq, OpType.DELETE, before, None, at_us)),
            (message_key(table, after_key), encode(seq, OpType.INSERT, None, after, at_us)),
        ]
