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
from collections.abc import Iterator

from producers.initial_snapshot import Chunk
from producers.operations import KEY_SEPARATOR
from producers.sqlite_changelog import raw_text_value
from schemas.records import Value

_pack_double = struct.Struct("<d").pack
_NULL, _LONG, _DOUBLE, _STRING, _BYTES = 0, 2, 4, 6, 8  # zig-zag union branch indexes


def _long(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return _long(len(b)) + b


def _put(v: Value, out: bytearray) -> None:
    t = type(v)
    if t is int:
        if not -(2**63) <= v < 2**63:  # type: ignore[operator]
            raise ValueError(f"integer {v} does not fit an Avro long")
        out.append(_LONG)
        z = (v << 1) ^ (v >> 63)  # type: ignore[operator]
        while z > 0x7F:
            out.append((z & 0x7F) | 0x80)
            z >>= 7
        out.append(z)
    elif t is str:
        b = v.encode("utf-8")  # type: ignore[union-attr]
        out.append(_STRING)
        out += _long(len(b)) if len(b) >= 64 else bytes((len(b) << 1,))
        out += b
    elif t is float:
        out.append(_DOUBLE)
        out += _pack_double(v)  # type: ignore[arg-type]
    elif v is None:
        out.append(_NULL)
    elif t is bytes:
        out.append(_BYTES)
        out += _long(len(v))  # type: ignore[arg-type]
        out += v  # type: ignore[operator]
    else:
        raise TypeError(f"value of type {t.__name__} is not a SQLite storage class")


def chunk_records(
    chunk: Chunk, source: str, header: bytes, commit_time_us: int
) -> Iterator[tuple[bytes, bytes]]:
    """(Kafka key, single-object encoded Operation INSERT) for each row of ``chunk``."""
    names = [_string(c) for c in chunk.columns]
    count = len(chunk.columns)
    keys = chunk.key_positions
    key_head = _long(len(keys))
    key_names = [(names[i], i) for i in keys]
    prefix = header + _string(source) + _long(chunk.seq) + _string(chunk.table) + b"\x00"
    middle = b"\x00\x00\x02" + _long(count)  # end of key map, no before, an after map
    tail = b"\x00" + _long(commit_time_us)
    table_key = chunk.table + KEY_SEPARATOR
    put = _put
    columns = list(zip(names, range(count), strict=True))
    for row in chunk.rows:
        if chunk.raw_text:
            literals = [str(v) for v in row[count:]]
            row = tuple(raw_text_value(v) for v in row[:count])
        else:
            literals = row[count:]
        out = bytearray(prefix)
        out += key_head
        for name, i in key_names:
            out += name
            put(row[i], out)
        out += middle
        for name, i in columns:
            out += name
            put(row[i], out)
        out += tail
        if chunk.rowid_alias:
            key = f"{table_key}{row[keys[0]]}"
        else:
            key = table_key + KEY_SEPARATOR.join(literals)
        yield key.encode("utf-8", "surrogateescape"), bytes(out)
