"""A run of change-log rows of one table as Kafka records, encoded a column at a time.

Why: capture turned each change into records with a Python call per value (the image's
untagging, then the Avro union of every value of both images): that was most of its time
per operation. Here the images of a run are parsed by the C JSON scanner one by one, then
transposed, and each column of the run is untagged and encoded at once (as an initial
snapshot's chunk is: ``chunk_records.column_bytes``); every record is its columns' bytes
joined between constant pieces (source, table, column names).

The records are exactly :meth:`operations.RecordBuilder.records`' for each row (a unit test
compares them on random rows), and so are the errors: a row this path does not take as it
is (an image in the earlier literal format, TEXT that is not UTF-8, an image that does not
decode or has the wrong number of values, an UPDATE that moves its key) is handed to that
per-row builder when its turn comes, and if encoding any column of the run fails (a value
no Avro long holds, a malformed tag), the whole run goes through the builder row by row.
Records are given row by row, in order, so capture's own checks between rows (a record too
large for the topic) still come first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import itemgetter

from producers.chunk_records import avro_string, column_bytes, varints
from producers.operations import RecordBuilder, message_key
from producers.row_images import (
    ImageFormatError,
    element_literal,
    is_json_image,
    json_elements,
    untagged,
)
from producers.sqlite_changelog import KIND_DELETE, KIND_INSERT, KIND_UPDATE, ChangeRow
from schemas.operation_codec import OP_INDEX, varint
from schemas.records import OpType, Value

Record = tuple[bytes, bytes]  # (Kafka key, value)

_KINDS = {KIND_INSERT: OpType.INSERT, KIND_UPDATE: OpType.UPDATE, KIND_DELETE: OpType.DELETE}
_first = itemgetter(0)


class _NotThisPath(Exception):
    """The row goes to the per-row builder."""


def _elements(image: str, columns: int) -> list:
    """The image's elements after the format tag (still tagged), when it is a JSON image of
    ``columns`` values; anything else is the per-row builder's (its errors included)."""
    if not is_json_image(image):
        raise _NotThisPath  # the earlier literal format
    try:
        elements = json_elements(image)
    except ImageFormatError:
        raise _NotThisPath from None
    if len(elements) != columns:
        raise _NotThisPath
    return elements


def _untagged(column: Sequence[object]) -> Sequence[Value]:
    """``row_images.untagged`` of one column's elements: a tagged REAL (a one-string list)
    is that float, a tagged BLOB (``{"x": hex}``) those bytes, anything else itself."""
    kinds = set(map(type, column))
    if list not in kinds and dict not in kinds:
        return column  # type: ignore[return-value]
    if kinds == {list}:
        return list(map(float, map(_first, column)))
    return untagged(column)  # type: ignore[arg-type]


class _Row:
    """A row this path takes: where it goes in the run, and its images' elements."""

    __slots__ = ("after", "at", "before", "row")

    def __init__(self, at: int, row: ChangeRow, before: list | None, after: list | None):
        self.at, self.row, self.before, self.after = at, row, before, after


class RunEncoder:
    """Encodes runs of one table's change rows; falls back to ``builder`` row by row."""

    def __init__(self, builder: RecordBuilder, source: str, header: bytes):
        self.builder = builder
        layout = builder.layout
        self._table = layout.definition.table
        self._width = len(layout.columns)
        self._key_positions = layout.key_positions
        self._names = [avro_string(c) for c in layout.columns]
        self._head = header + avro_string(source)
        self._table_name = avro_string(self._table)

    def records(self, rows: Sequence[ChangeRow]) -> Iterator[list[Record]]:
        """Per row of ``rows`` (all of this encoder's table), its records, in order."""
        taken = [self._take(i, row) for i, row in enumerate(rows)]
        groups: dict[str, list[_Row]] = {}
        for t in taken:
            if t is not None:
                groups.setdefault(t.row.kind, []).append(t)
        encoded: dict[int, list[Record]] = {}
        try:
            for kind, members in groups.items():
                members, keys = self._keys(kind, members)
                values = self._encode(kind, members) if members else []
                for m, key, value in zip(members, keys, values, strict=True):
                    encoded[m.at] = [(key, value)]
        except Exception:  # the builder raises the same, at the same row, or encodes it
            encoded = {}
        builder = self.builder
        for i, row in enumerate(rows):
            records = encoded.get(i)
            yield builder.records(row) if records is None else records

    def _take(self, at: int, row: ChangeRow) -> _Row | None:
        """The row with its images decoded, or None for the per-row builder."""
        kind = row.kind
        if row.raw_text or kind not in _KINDS:
            return None
        if (row.before is None) != (kind == KIND_INSERT):
            return None
        if (row.after is None) != (kind == KIND_DELETE):
            return None
        try:
            before = None if row.before is None else _elements(row.before, self._width)
            after = None if row.after is None else _elements(row.after, self._width)
        except _NotThisPath:
            return None
        return _Row(at, row, before, after)

    def _keys(self, kind: str, members: list[_Row]) -> tuple[list[_Row], list[bytes]]:
        """The Kafka key of each member (its key columns' literals), a column at a time. An
        UPDATE that moves its key (a DELETE and an INSERT) goes to the builder instead."""
        images = [m.before if kind == KIND_DELETE else m.after for m in members]
        positions = self._key_positions
        literals = [list(map(element_literal, map(itemgetter(p), images))) for p in positions]
        if kind == KIND_UPDATE:
            befores = [m.before for m in members]
            moved = set()
            for p, column in zip(positions, literals, strict=True):
                old = list(map(element_literal, map(itemgetter(p), befores)))
                if old != column:
                    pairs = enumerate(zip(column, old, strict=True))
                    moved.update(i for i, (a, b) in pairs if a != b)
            if moved:  # the builder takes these in their turn
                keep = [i for i in range(len(members)) if i not in moved]
                members = [members[i] for i in keep]
                literals = [[column[i] for i in keep] for column in literals]
        table = self._table
        return members, [message_key(table, list(lits)) for lits in zip(*literals, strict=True)]

    def _encode(self, kind: str, members: list[_Row]) -> list[bytes]:
        """The record values of rows of one kind, a column at a time."""
        images: list[list[list[bytes]] | None] = []
        for image_rows in (
            None if kind == KIND_INSERT else [m.before for m in members],
            None if kind == KIND_DELETE else [m.after for m in members],
        ):
            if image_rows is None:
                images.append(None)
            else:
                columns = zip(*image_rows, strict=True)
                images.append([column_bytes(tuple(_untagged(c))) for c in columns])
        keyed = images[1] if images[1] is not None else images[0]
        assert keyed is not None
        positions = self._key_positions
        pieces: list = [
            repeat(self._head),
            varints([m.row.seq for m in members]),
            repeat(self._table_name + bytes((OP_INDEX[_KINDS[kind]],)) + varint(len(positions))),
        ]
        for p in positions:
            pieces += [repeat(self._names[p]), keyed[p]]
        constant = b"\x00"  # the key map's end
        for image in images:
            if image is None:
                constant += b"\x00"  # no image
                continue
            constant += b"\x02" + varint(self._width)  # an image: a map in one block
            for name, values in zip(self._names, image, strict=True):
                pieces += [repeat(constant + name), values]
                constant = b""
            constant += b"\x00"  # the map's end
        pieces += [repeat(constant), varints([m.row.at_us for m in members])]
        return list(map(b"".join, zip(*pieces, strict=False)))  # the constants repeat
