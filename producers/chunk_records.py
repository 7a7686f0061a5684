"""A chunk of an initial snapshot as Kafka records: (partition key, Operation value) per row.

Why a writer of its own: every row of a chunk is an INSERT of one table at one change
``seq``, with no before image, so everything but the row's values is the same bytes for
the whole chunk. Writing the Avro datum straight from the native row tuple (no Operation,
no dict, no text image to parse) is where the initial load's speed comes from. The bytes
are exactly what ``schemas.operation_codec.encode_operation`` writes for the same
Operation (a unit test compares them), and the partition key exactly what capture's
change path (``operations.message_key``) gives the same row, so a later change of the row
lands in the same partition.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import repeat
from zlib import crc32

import numpy as np

from producers.initial_snapshot import Chunk
from producers.operations import KEY_SEPARATOR
from producers.sqlite_changelog import raw_text_value
from schemas.operation_codec import varint
from schemas.records import Value

_pack_double = struct.Struct("<d").pack
_NULL, _LONG, _DOUBLE, _STRING, _BYTES = 0, 2, 4, 6, 8  # zig-zag union branch indexes


def avro_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return varint(len(b)) + b


_STRING_HEADS = tuple(bytes((_STRING,)) + varint(n) for n in range(4096))  # branch + length
_ONE_NULL = bytes((_NULL,))


def _value(v: Value) -> bytes:
    """One value's union encoding (branch index, then the datum): the general case."""
    t = type(v)
    if t is int:
        if not -(2**63) <= v < 2**63:  # type: ignore[operator]
            raise ValueError(f"integer {v} does not fit an Avro long")
        return bytes((_LONG,)) + varint(v)  # type: ignore[arg-type]
    if t is str:
        b = v.encode("utf-8")  # type: ignore[union-attr]
        return bytes((_STRING,)) + varint(len(b)) + b
    if t is float:
        return bytes((_DOUBLE,)) + _pack_double(v)  # type: ignore[arg-type]
    if v is None:
        return _ONE_NULL
    if t is bytes:
        return bytes((_BYTES,)) + varint(len(v)) + v  # type: ignore[arg-type, operator]
    raise TypeError(f"value of type {t.__name__} is not a SQLite storage class")


def _zigzag_varints(n: np.ndarray, branch: int | None) -> list[bytes]:
    """Each int64 of ``n`` as a zig-zag varint, after ``branch`` (a union index) if given."""
    z = ((n << 1) ^ (n >> 63)).view(np.uint64)
    first = 0 if branch is None else 1
    width = first + 10  # at most 10 varint bytes
    out = np.zeros((len(n), width), dtype=np.uint8)
    if branch is not None:
        out[:, 0] = branch
    lengths = np.full(len(n), first + 1, dtype=np.int64)
    for k in range(first, width):
        rest = z >> np.uint64(7)
        more = rest != 0
        out[:, k] = (z & np.uint64(0x7F)).astype(np.uint8) | (more.astype(np.uint8) << 7)
        lengths += more
        z = rest
        if not more.any():
            break
    flat = out.tobytes()
    starts = range(0, len(n) * width, width)
    return [flat[s : s + k] for s, k in zip(starts, lengths.tolist(), strict=True)]


def varints(values: Sequence[int]) -> list[bytes]:
    """``operation_codec.varint`` of each value (Avro longs), computed all at once.

    Only ints are taken (numpy would turn 7.9 or "7" into 7 where ``varint`` refuses them);
    one that no Avro long holds raises OverflowError."""
    if set(map(type, values)) - {int}:
        raise TypeError("an Avro long must be an int")
    return _zigzag_varints(np.array(values, dtype=np.int64), None)


def _ints(values: tuple) -> list[bytes]:
    """A column of ints: zig-zag varints computed for the whole column at once."""
    try:
        n = np.array(values, dtype=np.int64)
    except OverflowError:
        return [_value(v) for v in values]  # over 64 bits: _value says so
    return _zigzag_varints(n, _LONG)


def _floats(values: tuple) -> list[bytes]:
    packed = np.empty(len(values), dtype=[("branch", "u1"), ("value", "<f8")])
    packed["branch"] = _DOUBLE
    packed["value"] = values
    flat = packed.tobytes()
    return [flat[s : s + 9] for s in range(0, len(flat), 9)]


def _strings(values: tuple) -> list[bytes]:
    heads, encoded = _STRING_HEADS, [s.encode("utf-8") for s in values]
    return [
        heads[len(b)] + b if len(b) < 4096 else heads[0][:1] + varint(len(b)) + b for b in encoded
    ]


def column_bytes(values: tuple) -> list[bytes]:
    """Each value of one column in its union encoding; whole-column paths for one type."""
    kinds = set(map(type, values))
    if kinds == {int}:
        return _ints(values)
    if kinds == {float}:
        return _floats(values)
    if kinds == {str}:
        return _strings(values)
    return [_value(v) for v in values]


def chunk_records(
    chunk: Chunk, source: str, header: bytes, commit_time_us: int
) -> tuple[list[bytes], list[bytes]]:
    """The Kafka keys and single-object encoded Operation INSERTs of ``chunk``'s rows.

    Column by column: each column's values are encoded at once, then every row's datum is
    its columns' bytes joined between constant pieces (names, the empty before image).
    """
    count = len(chunk.columns)
    rows = chunk.rows
    if chunk.raw_text:
        rows = [(*(raw_text_value(v) for v in r[:count]), *map(str, r[count:])) for r in rows]
    if not rows:
        return [], []
    columns = list(zip(*rows, strict=True))
    encoded = [column_bytes(columns[i]) for i in range(count)]
    names = [avro_string(c) for c in chunk.columns]
    keys = chunk.key_positions
    pieces: list = []
    constant = header + avro_string(source) + varint(chunk.seq) + avro_string(chunk.table) + b"\x00"
    constant += varint(len(keys))  # the key map: one block
    for i in keys:
        pieces += [repeat(constant + names[i]), encoded[i]]
        constant = b""
    constant += b"\x00\x00\x02" + varint(count)  # its end, no before image, an after map
    for i in range(count):
        pieces += [repeat(constant + names[i]), encoded[i]]
        constant = b""
    pieces.append(repeat(b"\x00" + varint(commit_time_us)))
    values = list(map(b"".join, zip(*pieces, strict=False)))  # the constants repeat forever
    table_key = chunk.table + KEY_SEPARATOR
    if chunk.rowid_alias:
        texts = [f"{table_key}{v}" for v in columns[keys[0]]]
    else:
        texts = [
            table_key + KEY_SEPARATOR.join(lits) for lits in zip(*columns[count:], strict=True)
        ]
    return [k.encode("utf-8", "surrogateescape") for k in texts], values


def partitions_of(keys: list[bytes], partitions: int) -> list[int]:
    """``operations.partition_for`` of every key (CRC-32 modulo the partition count)."""
    return [crc32(k) % partitions for k in keys]
