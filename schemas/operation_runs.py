"""Runs of Operations that share one layout, decoded at once into columns.

Why: decoding one record at a time (``operation_codec.decode_operation``: ~16 µs for a
five-column row, a dict and a dataclass per record) was the top cost of replication; the
initial load is nothing but INSERTs of one table in one layout, and a burst of changes is
mostly long stretches of one kind on one table. Records that differ only in their values
(source, table, kind, and the names of the key, before and after images all identical, in
the encoder's own form) are parsed here column by column with numpy: one pass per field
over every record of the run, no Python per byte.

It is a fast path only, like ``decode_operation``: a record it does not read exactly as the
template says (another table or kind, another layout, a map in several blocks, a varint
over 64 bits, an unknown branch, invalid UTF-8, a truncated or longer datum) ends the run,
and the caller decodes that record one at a time. Every value it returns equals what
``schemas.codec.decode`` gives for the same bytes (a unit test compares them on random
records).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from schemas.operation_codec import OP_INDEX, varint
from schemas.records import Operation, OpType, Value

_NULL, _LONG, _DOUBLE, _STRING, _BYTES = 0, 2, 4, 6, 8  # zig-zag union branch indexes
_BRANCHES = np.array([_NULL, _LONG, _DOUBLE, _STRING, _BYTES], dtype=np.uint8)
_VARINT_BYTES = 10  # 64 bits in 7-bit groups


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return varint(len(b)) + b


@dataclass(frozen=True)
class RunLayout:
    """What every record of a run shares, taken from one decoded Operation."""

    source: str
    table: str
    op: OpType
    key_names: tuple[str, ...]
    before_names: tuple[str, ...] | None
    after_names: tuple[str, ...] | None

    @classmethod
    def of(cls, op: Operation) -> RunLayout:
        return cls(
            op.source,
            op.table,
            op.op,
            tuple(op.key),
            None if op.before is None else tuple(op.before),
            None if op.after is None else tuple(op.after),
        )


@dataclass
class Run:
    """The first ``count`` records of the window: their key and after images as columns
    (``after`` is empty when the layout has no after image)."""

    count: int
    key: dict[str, list[Value]]
    after: dict[str, list[Value]]


class _Cursor:
    """Read positions in many records at once; ``ok`` drops a record at its first misfit."""

    def __init__(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        self.data = data
        self.pos = starts.copy()
        self.ends = ends
        self.ok = np.ones(len(starts), dtype=bool)
        self.last = len(data) - 1

    def shrink(self) -> None:
        """Keep only the leading records that still fit: the run ends at the first misfit."""
        if not self.ok.all():
            count = int(np.argmin(self.ok))
            self.pos, self.ends, self.ok = self.pos[:count], self.ends[:count], self.ok[:count]

    def _at(self, pos: np.ndarray) -> np.ndarray:
        return self.data[np.minimum(pos, self.last)]

    def constant(self, expected: bytes) -> None:
        if not expected:
            return
        want = np.frombuffer(expected, dtype=np.uint8)
        stop = self.pos + len(want)
        inside = stop <= self.ends
        window = self.data[np.minimum(self.pos[:, None] + np.arange(len(want)), self.last)]
        self.ok &= inside & (window == want).all(axis=1)
        self.pos = stop

    def long(self, rows: np.ndarray) -> np.ndarray:
        """The zig-zag varint at each of ``rows``' positions (int64); advances them."""
        pos = self.pos[rows]
        value = np.zeros(len(rows), dtype=np.uint64)
        going = np.ones(len(rows), dtype=bool)
        too_big = np.zeros(len(rows), dtype=bool)
        for k in range(_VARINT_BYTES):
            byte = self._at(pos).astype(np.uint64)
            bits = byte & np.uint64(0x7F)
            if k == _VARINT_BYTES - 1:
                too_big = going & (bits > 1)  # a tenth byte may carry the 64th bit only
            value |= np.where(going, bits << np.uint64(7 * k), np.uint64(0))
            pos = pos + going
            going &= (byte & np.uint64(0x80)) != 0
            if not going.any():
                break
        # over 64 bits, still going after ten bytes, or past the record's end
        bad = too_big | going | (pos > self.ends[rows])
        self.ok[rows[bad]] = False
        self.pos[rows] = pos
        signed = (value >> np.uint64(1)).astype(np.int64)
        return signed ^ -(value & np.uint64(1)).astype(np.int64)

    def value(self) -> list[Value]:
        """One union value ``["null", "long", "double", "string", "bytes"]`` per record."""
        self.shrink()
        n = len(self.pos)
        if n == 0:
            return []
        branch = self._at(self.pos)
        self.pos = self.pos + 1
        self.ok &= np.isin(branch, _BRANCHES)
        kinds = [b for b in (_LONG, _DOUBLE, _STRING, _BYTES) if (branch == b).any()]
        if not kinds:
            return [None] * n
        if len(kinds) == 1 and (branch == kinds[0]).all():
            return self._values(kinds[0], np.arange(n))
        out = np.full(n, None, dtype=object)
        for kind in kinds:
            rows = np.flatnonzero(branch == kind)
            values = self._values(kind, rows)
            holder = np.empty(len(rows), dtype=object)
            holder[:] = values
            out[rows] = holder
        return out.tolist()

    def _values(self, kind: int, rows: np.ndarray) -> list[Value]:
        if kind == _LONG:
            return self.long(rows).tolist()
        pos = self.pos[rows]
        if kind == _DOUBLE:
            stop = pos + 8
            self.ok[rows[stop > self.ends[rows]]] = False
            raw = self.data[np.minimum(pos[:, None] + np.arange(8), self.last)]
            self.pos[rows] = stop
            return raw.copy().view("<f8").ravel().tolist()
        sizes = self.long(rows)
        pos = self.pos[rows]
        bad = (sizes < 0) | (sizes > self.ends[rows] - pos)  # no overflow: compare the room
        self.ok[rows[bad]] = False
        sizes = np.where(bad, 0, sizes)
        self.pos[rows] = pos + sizes
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        gather = np.repeat(pos - offsets[:-1], sizes) + np.arange(offsets[-1])
        body = self.data[gather]
        arrow_type = pa.large_string() if kind == _STRING else pa.large_binary()
        array = pa.Array.from_buffers(
            arrow_type, len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(body)]
        )
        if kind == _STRING:
            try:
                array.validate(full=True)  # UTF-8, as Python's strict decode wants it
                return array.to_pylist()
            except (pa.ArrowInvalid, UnicodeDecodeError):
                return self._strings_one_by_one(rows, array)
        return array.to_pylist()

    def _strings_one_by_one(self, rows: np.ndarray, array: pa.Array) -> list[Value]:
        out: list[Value] = []
        for i, raw in enumerate(array.cast(pa.large_binary()).to_pylist()):
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                self.ok[rows[i]] = False
                out.append(None)
        return out


def decode_run(values: Sequence[bytes], layout: RunLayout, header: bytes) -> Run:
    """The longest leading run of ``values`` that are Operations in ``layout``, as columns.

    ``header`` is the single-object header of the Operation schema. A run of 0 means the
    first value already does not fit.
    """
    if not values:
        return Run(0, {}, {})
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    data = np.frombuffer(b"".join(values), dtype=np.uint8)
    cur = _Cursor(data, starts, ends)
    cur.constant(header + _string(layout.source))
    cur.shrink()
    cur.long(np.arange(len(cur.pos)))  # seq: any
    cur.constant(_string(layout.table) + bytes((OP_INDEX[layout.op],)))
    key = _map(cur, layout.key_names)
    _optional_map(cur, layout.before_names)  # only checked: no apply reads the before image
    after = _optional_map(cur, layout.after_names)
    cur.shrink()
    cur.long(np.arange(len(cur.pos)))  # commit time: any
    cur.ok &= cur.pos == cur.ends
    cur.shrink()
    count = len(cur.pos)
    return Run(
        count,
        {name: column[:count] for name, column in key.items()},
        {name: column[:count] for name, column in (after or {}).items()},
    )


def _map(cur: _Cursor, names: tuple[str, ...]) -> dict[str, list[Value]]:
    """A map in one block of exactly ``names``, in that order (an empty map is its 0 alone)."""
    cur.constant(varint(len(names)) if names else b"")
    columns: dict[str, list[Value]] = {}
    for name in names:
        cur.constant(_string(name))
        columns[name] = cur.value()
    cur.constant(b"\x00")
    return columns


def _optional_map(cur: _Cursor, names: tuple[str, ...] | None) -> dict[str, list[Value]] | None:
    """The union ``["null", map]``: absent (``names`` None) or that map."""
    if names is None:
        cur.constant(b"\x00")
        return None
    cur.constant(b"\x02")
    return _map(cur, names)
