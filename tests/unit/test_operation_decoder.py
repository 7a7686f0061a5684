"""The hand-written Operation decoder against fastavro: same records, same errors.

The fast path must never decode a value differently from fastavro, nor accept one that
fastavro rejects: anything outside the encoder's own form falls back to fastavro.
"""

from __future__ import annotations

import io
import math
import random
import re
import struct

import fastavro
import pytest

from schemas import codec
from schemas.codec import _BY_TYPE, HEADER_SIZE, CodecError, decode, encode
from schemas.operation_codec import NotFastPath, decode_operation
from schemas.records import Operation, OpType

BINDING = _BY_TYPE[Operation]


def _value(rng: random.Random):
    kind = rng.randrange(8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice(
            [0, -1, 1, 63, -64, 64, -65, 2**31, -(2**63), 2**63 - 1, 2**62, -(2**62) - 1]
        )
    if kind == 2:
        return rng.getrandbits(rng.choice([6, 13, 40, 63])) * rng.choice([1, -1])
    if kind == 3:
        return rng.choice([0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, 1e300, rng.random()])
    if kind == 4:
        return "".join(rng.choice("aZ é€😀,'\"\x00\n") for _ in range(rng.randrange(90)))
    if kind == 5:
        return rng.randbytes(rng.choice([0, 1, 63, 64, 200]))
    if kind == 6:
        return ""
    return b""


def random_operation(rng: random.Random) -> Operation:
    columns = [
        rng.choice(["id", "c", "ünï", "x" * 70, "😀"]) + str(i)
        for i in range(rng.choice([0, 1, 5, 63, 64, 100]))
    ]
    image = {c: _value(rng) for c in columns}
    return Operation(
        source=rng.choice(["default", "shöp", "s" * 100, ""]),
        seq=rng.choice([0, 1, 2**63 - 1, rng.getrandbits(rng.choice([3, 20, 62]))]),
        table=rng.choice(["accounts", 'x"; DROP TABLE y; --', "t" * 64, "ταβ"]),
        op=rng.choice(list(OpType)),
        key=rng.choice([{}, {"id": _value(rng)}, {"a": _value(rng), "b": _value(rng)}]),
        before=rng.choice([None, {}, image]),
        after=rng.choice([None, {}, dict(image)]),
        commit_time_us=rng.choice([0, -1, -(2**63), rng.getrandbits(52)]),
    )


def _comparable(value):
    """Records as plain data, floats by their bits (NaN == NaN, -0.0 != 0.0)."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, Operation):
        return tuple(
            _comparable(getattr(value, f))
            for f in ("source", "seq", "table", "op", "key", "before", "after", "commit_time_us")
        )
    return (type(value).__name__, value)


def fastavro_decode(data: bytes):
    """What ``decode`` answers with the fast path switched off: a record or its error."""
    original = codec.decode_operation

    def never(data: bytes, pos: int) -> Operation:
        raise NotFastPath

    codec.decode_operation = never
    try:
        return _outcome(data)
    finally:
        codec.decode_operation = original


def _outcome(data: bytes):
    try:
        return _comparable(decode(data))
    except CodecError as exc:  # fastavro's messages may name an object's address
        return (type(exc), re.sub(r" at 0x[0-9a-f]+", "", str(exc)))


def test_fast_path_decodes_every_value_kind_like_fastavro():
    rng = random.Random(9)
    for _ in range(400):
        op = random_operation(rng)
        data = encode(op)
        stream = io.BytesIO(data[HEADER_SIZE:])
        datum = fastavro.schemaless_reader(stream, BINDING.parsed, None)
        fast = decode_operation(data, HEADER_SIZE)  # taken: never NotFastPath for our form
        assert _comparable(fast) == _comparable(BINDING.from_datum(datum))
        assert _comparable(fast) == _comparable(op)
        assert type(fast.op) is OpType


def test_corrupted_values_get_fastavros_answer():
    """Truncations, flipped bytes, inserted and appended bytes: the same record or error."""
    rng = random.Random(11)
    checked = 0
    for _ in range(150):
        data = encode(random_operation(rng))
        variants = [data[:end] for end in range(HEADER_SIZE, len(data), 1 + len(data) // 40)]
        for _ in range(20):
            at = rng.randrange(HEADER_SIZE, len(data))
            flipped = bytearray(data)
            flipped[at] = rng.randrange(256)
            variants.append(bytes(flipped))
            variants.append(data[:at] + bytes([rng.randrange(256)]) + data[at:])
        variants += [data + b"\x00", data + rng.randbytes(3)]
        for variant in variants:
            assert _outcome(variant) == fastavro_decode(variant), variant.hex()
            checked += 1
    assert checked > 5000


def _long(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return _long(len(raw)) + raw


def test_valid_forms_the_encoder_never_writes_fall_back_to_fastavro():
    """Maps in two blocks, a block with its byte size, varints over 64 bits: still decoded."""
    head = BINDING.header + _string("src") + _long(7) + _string("t") + _long(0)
    tail = b"\x00" + b"\x00" + _long(99)  # before and after null, commit time
    entry_a = _string("a") + b"\x02" + _long(1)
    entry_b = _string("b") + b"\x06" + _string("two")
    forms = {
        "two blocks": head + _long(1) + entry_a + _long(1) + entry_b + b"\x00" + tail,
        "negative count with size": head
        + _long(-2)
        + _long(len(entry_a + entry_b))
        + entry_a
        + entry_b
        + b"\x00"
        + tail,
        "11-byte varint": BINDING.header
        + _string("src")
        + b"\x8e\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00"
        + _string("t")
        + _long(0)
        + _long(2)
        + entry_a
        + entry_b
        + b"\x00"
        + tail,
    }
    for name, data in forms.items():
        with pytest.raises(NotFastPath):
            decode_operation(data, HEADER_SIZE)
        record = decode(data)
        assert isinstance(record, Operation), name
        assert record.key == {"a": 1, "b": "two"}, name
        assert _outcome(data) == fastavro_decode(data), name


def test_an_over_long_varint_within_64_bits_reads_as_fastavro_reads_it():
    seq = b"\x8e\x80\x80\x80\x80\x80\x80\x80\x80\x00"  # 7, padded to 10 bytes
    data = BINDING.header + _string("src") + seq + _string("t") + b"\x00\x00\x00\x00" + _long(5)
    assert decode_operation(data, HEADER_SIZE).seq == 7
    assert _outcome(data) == fastavro_decode(data)


def test_non_bytes_values_take_the_fastavro_path():
    data = encode(random_operation(random.Random(3)))
    assert _comparable(decode(bytearray(data))) == _comparable(decode(data))
