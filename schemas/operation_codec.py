"""A hand-written Avro binary encoder for the one hot record, ``Operation``.

Why: fastavro's writer spends ~25 µs per call on a 100-byte record (per-call set-up
dominates), which made encoding the largest cost of capture. The Operation schema is
fixed, so its Avro binary form is written here directly, following the specification
(zig-zag varints, length-prefixed strings and bytes, map blocks, union branch indexes):
~9 µs. Unit tests check it byte for byte against fastavro on random records.

The decoder (:func:`decode_operation`) reads the same form back. It is a *fast path*
only: whatever it does not recognise as exactly what the encoder writes (a map in several
blocks, a varint over 64 bits, an unknown branch, a truncated datum, invalid UTF-8, trailing
bytes) makes it raise :class:`NotFastPath`, and the caller decodes the value with fastavro
instead, so any datum fastavro rejects is still rejected with the same error, and any
unusual datum fastavro accepts decodes to the same record. Why: fastavro's
``schemaless_reader`` has a per-call set-up cost that made decoding replication's top cost.
"""

from __future__ import annotations

import struct

from schemas.records import Operation, OpType, RowImage

_DOUBLE = struct.Struct("<d")
_unpack_double = _DOUBLE.unpack_from
OP_INDEX = {OpType.INSERT: 0, OpType.UPDATE: 2, OpType.DELETE: 4}  # zig-zag of 0, 1, 2
# value union ["null", "long", "double", "string", "bytes"]: branch index, zig-zag encoded
_NULL, _LONG, _DOUBLE_BRANCH, _STRING, _BYTES = 0, 2, 4, 6, 8


# 14 bits of a varint that has more to follow, as its two continued bytes: a long's
# varint then takes one table lookup per 14 bits instead of a loop step per 7 bits
_FOURTEEN = tuple(bytes([(x & 0x7F) | 0x80, (x >> 7) | 0x80]) for x in range(1 << 14))


def _write_long(n: int, out: bytearray) -> None:
    z = (n << 1) ^ (n >> 63)
    if 0 <= z <= 0x7F:
        out.append(z)
        return
    while z > 0x3FFF:
        out += _FOURTEEN[z & 0x3FFF]
        z >>= 14
    if z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


_NAMES: dict[str, bytes] = {}


def _name(s: str) -> bytes:
    """The encoded form of a string that repeats (column, table, source names), cached."""
    encoded = _NAMES.get(s)
    if encoded is None:
        out = bytearray()
        _write_string(s, out)
        encoded = bytes(out)
        if len(_NAMES) < 100_000:
            _NAMES[s] = encoded
    return encoded


def _write_string(s: str, out: bytearray) -> None:
    b = s.encode("utf-8")
    size = len(b)
    if size < 64:
        out.append(size << 1)
    else:
        _write_long(size, out)
    out += b


def varint(n: int) -> bytes:
    """An Avro long: zig-zag, then a varint (what every encoder of records here writes)."""
    out = bytearray()
    _write_long(n, out)
    return bytes(out)


_SMALL = 1 << 13  # longs in [-8192, 8192): their value-union encoding, precomputed
_SMALL_LONGS = tuple(bytes([_LONG]) + varint(n) for n in range(-_SMALL, _SMALL))
_COUNTS = tuple(varint(n) for n in range(256))  # map block counts
_SHORT_STRINGS = tuple(bytes([_STRING, n << 1]) for n in range(64))  # branch + length < 64
_pack_branch_double = struct.Struct("<Bd").pack  # branch index byte, then the double


def _write_map(m: RowImage, out: bytearray) -> None:
    """One map block and its end."""
    names = _NAMES
    _write_entries([names.get(k) or _name(k) for k in m], m.values(), len(m), out)


def _write_entries(names, values, size: int, out: bytearray) -> None:
    """A map's entries (``size`` of them, names already encoded) and its end. The value
    union is written inline: this loop is where an Operation's encoding spends its time."""
    if not size:
        out.append(0)  # an empty map is its end alone
        return
    out += _COUNTS[size] if size < 256 else varint(size)
    small, short, pack = _SMALL_LONGS, _SHORT_STRINGS, _pack_branch_double
    for encoded, v in zip(names, values, strict=True):
        out += encoded
        t = type(v)
        if t is str:
            b = v.encode("utf-8")
            n = len(b)
            if n < 64:
                out += short[n]
            else:
                out.append(_STRING)
                _write_long(n, out)
            out += b
        elif t is int:
            if -_SMALL <= v < _SMALL:
                out += small[v + _SMALL]
                continue
            if not -(2**63) <= v < 2**63:
                raise ValueError(f"integer {v} does not fit an Avro long")
            out.append(_LONG)
            _write_long(v, out)
        elif t is float:
            out += pack(_DOUBLE_BRANCH, v)
        elif v is None:
            out.append(_NULL)
        elif t is bytes:
            out.append(_BYTES)
            _write_long(len(v), out)
            out += v
        else:
            raise TypeError(f"value of type {t.__name__} is not a SQLite storage class")
    out.append(0)


class RowEncoder:
    """Encodes one table's operations straight from value lists, in column order.

    Why: capture has each row image as a list already; this skips building dicts and an
    ``Operation`` per change, and writes the (fixed) names from bytes encoded once. The
    bytes are exactly :func:`encode_operation`'s for the same operation (unit-tested).
    """

    def __init__(self, header: bytes, source: str, table: str, columns, key_positions):
        self._head = bytes(header) + _name(source)
        self._table = _name(table)
        self._names = tuple(_name(c) for c in columns)
        self._key_names = tuple(self._names[i] for i in key_positions)
        self._key_positions = tuple(key_positions)
        self._size = len(self._names)

    def encode(self, seq: int, op: OpType, before, after, commit_time_us: int) -> bytes:
        """``before``/``after``: value lists (None when absent); the key comes from the
        after image, else the before image, as in an ``Operation``."""
        out = bytearray(self._head)
        _write_long(seq, out)
        out += self._table
        out.append(OP_INDEX[op])
        image = after if after is not None else before
        positions = self._key_positions
        _write_entries(self._key_names, [image[i] for i in positions], len(positions), out)
        size = self._size
        if before is None:
            out.append(0)
        else:
            out.append(2)
            _write_entries(self._names, before, size, out)
        if after is None:
            out.append(0)
        else:
            out.append(2)
            _write_entries(self._names, after, size, out)
        _write_long(commit_time_us, out)
        return bytes(out)


def encode_operation(op: Operation, header: bytes) -> bytes:
    out = bytearray(header)
    out += _name(op.source)
    _write_long(op.seq, out)
    out += _name(op.table)
    out.append(OP_INDEX[op.op])
    _write_map(op.key, out)
    before, after = op.before, op.after
    if before is None:
        out.append(0)
    else:
        out.append(2)
        _write_map(before, out)
    if after is None:
        out.append(0)
    else:
        out.append(2)
        _write_map(after, out)
    _write_long(op.commit_time_us, out)
    return bytes(out)


# -- decoding -------------------------------------------------------------------------------


class NotFastPath(Exception):
    """The datum is not in the encoder's own form: decode it with fastavro instead."""


_OPS = (OpType.INSERT, OpType.UPDATE, OpType.DELETE)
_LONG_MAX_BYTES = 10  # an Avro long's zig-zag varint: at most 64 bits in 10 bytes
_STRINGS: dict[bytes, str] = {}  # repeating names (source, table, columns), decoded once


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    z = b & 0x7F
    shift = 7
    start = pos
    while True:
        pos += 1
        b = data[pos]
        z |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    if pos - start >= _LONG_MAX_BYTES - 1 and (pos - start >= _LONG_MAX_BYTES or z >> 64):
        raise NotFastPath  # over 64 bits: leave the overflow rules to fastavro
    return (z >> 1) ^ -(z & 1), pos + 1


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """A string that tends to repeat (names): decoded through a cache."""
    size = data[pos]
    if size < 0x80 and not size & 1:
        size >>= 1  # one byte: a length below 64 (an odd byte is a negative length)
        pos += 1
    else:
        size, pos = _read_long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise NotFastPath
    raw = data[pos:end]
    text = _STRINGS.get(raw)
    if text is None:
        text = raw.decode("utf-8")
        if len(_STRINGS) < 100_000 and size <= 64:
            _STRINGS[raw] = text
    return text, end


def _read_map(data: bytes, pos: int) -> tuple[RowImage, int]:
    count = data[pos]
    if count == 0:
        return {}, pos + 1
    if count < 0x80 and not count & 1:
        count >>= 1
        pos += 1
    else:
        count, pos = _read_long(data, pos)
        if count <= 0:
            raise NotFastPath  # a negative count carries a block size: fastavro's case
    out: RowImage = {}
    end = len(data)
    strings = _STRINGS
    for _ in range(count):
        # a column name: one length byte and a cached string, or _read_name's general case
        size = data[pos]
        stop = pos + 1 + (size >> 1)
        name = strings.get(data[pos + 1 : stop]) if not size & 1 and stop <= end else None
        if name is None or size >= 0x80:
            name, stop = _read_name(data, pos)
        pos = stop
        branch = data[pos]
        pos += 1
        if branch == _STRING:
            size = data[pos]
            if size < 0x80 and not size & 1:
                size >>= 1
                pos += 1
            else:
                size, pos = _read_long(data, pos)
                if size < 0:
                    raise NotFastPath
            stop = pos + size
            if stop > end:
                raise NotFastPath
            out[name] = data[pos:stop].decode("utf-8")
            pos = stop
        elif branch == _LONG:
            b = data[pos]
            if b < 0x80:
                out[name] = (b >> 1) ^ -(b & 1)
                pos += 1
            else:
                out[name], pos = _read_long(data, pos)
        elif branch == _NULL:
            out[name] = None
        elif branch == _DOUBLE_BRANCH:
            if pos + 8 > end:
                raise NotFastPath
            (out[name],) = _unpack_double(data, pos)
            pos += 8
        elif branch == _BYTES:
            size, pos = _read_long(data, pos)
            stop = pos + size
            if size < 0 or stop > end:
                raise NotFastPath
            out[name] = data[pos:stop]
            pos = stop
        else:
            raise NotFastPath
    if data[pos] != 0:
        raise NotFastPath  # a second block: fastavro's case
    return out, pos + 1


def _read_optional_map(data: bytes, pos: int) -> tuple[RowImage | None, int]:
    branch = data[pos]
    if branch == 0:
        return None, pos + 1
    if branch == 2:
        return _read_map(data, pos + 1)
    raise NotFastPath


def decode_operation(data: bytes, pos: int) -> Operation:
    """The Operation whose Avro datum starts at ``pos`` and ends exactly at the end of ``data``.

    Raises :class:`NotFastPath` for anything not in the encoder's own form (see the module
    docstring); the caller then decodes with fastavro.
    """
    try:
        source, pos = _read_name(data, pos)
        seq, pos = _read_long(data, pos)
        table, pos = _read_name(data, pos)
        kind = data[pos]
        if kind not in _OP_CODES:
            raise NotFastPath
        key, pos = _read_map(data, pos + 1)
        before, pos = _read_optional_map(data, pos)
        after, pos = _read_optional_map(data, pos)
        commit_time_us, pos = _read_long(data, pos)
    except (IndexError, UnicodeDecodeError) as exc:
        raise NotFastPath from exc
    if pos != len(data):
        raise NotFastPath
    return Operation(source, seq, table, _OPS[kind >> 1], key, before, after, commit_time_us)


_OP_CODES = frozenset(OP_INDEX.values())
