"""The wire codec: Avro single-object encoding of every record type, checked against an
independent CRC-64-AVRO implementation and a second Avro reader (Apache ``avro``)."""

from __future__ import annotations

import io
import math
import struct
from importlib import resources

import avro.io
import avro.schema
import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form

from schemas import codec
from schemas.codec import (
    CodecError,
    MalformedDatum,
    NotSingleObject,
    UnknownSchema,
    decode,
    encode,
    load_schema,
)
from schemas.records import (
    CapturePosition,
    Column,
    ConsistencyMarker,
    ControlEvent,
    ControlKind,
    DigestEntry,
    MarkerDigest,
    Operation,
    OpType,
    SnapshotProgress,
    TableDefinition,
)

# -- an independent CRC-64-AVRO, transcribed from the Avro specification ("Schema Fingerprints")

EMPTY = 0xC15D213AA4D7A795
MASK = 0xFFFFFFFFFFFFFFFF


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp & MASK)
    return table


FP_TABLE = _fp_table()


def crc64_avro(data: bytes) -> int:
    fp = EMPTY
    for byte in data:
        fp = (fp >> 8) ^ FP_TABLE[(fp ^ byte) & 0xFF]
    return fp & MASK


def test_reference_crc64_matches_the_spec_test_vector():
    assert crc64_avro(b'"null"') == 7195948357588979594


# -- sample records, one per type, with every value kind


VALUES = {
    "none": None,
    "zero": 0,
    "max_long": 2**63 - 1,
    "min_long": -(2**63),
    "negative": -42,
    "tenth": 0.1,
    "huge": 1e300,
    "negative_float": -2.5,
    "integral_float": 1.0,
    "text": "héllo, wörld ✓ 日本 \U0001f600",
    "empty_text": "",
    "blob": b"\x00\xff",
    "empty_blob": b"",
}

OPERATIONS = [
    Operation("shop", 1, "accounts", OpType.INSERT, {"id": 1}, None, dict(VALUES), 1_700_000),
    Operation(
        "shop",
        2**62,
        "accounts",
        OpType.UPDATE,
        {"id": 1, "k": "é"},
        dict(VALUES),
        {**VALUES, "tenth": 0.2},
        -1,
    ),
    Operation("shop", 3, "t", OpType.DELETE, {"rowid": -7}, {"x": b"\x00\xff"}, None, 0),
    Operation("s", 0, "", OpType.INSERT, {}, {}, {}, 0),
]

OTHER_RECORDS = [
    TableDefinition(
        "shop",
        'x"; DROP TABLE y; --',
        'CREATE TABLE "x""; DROP TABLE y; --"("first name" TEXT NOT NULL, v)',
        (Column("first name", "TEXT", True), Column("v", "", False)),
        ("rowid",),
    ),
    TableDefinition("shop", "empty", "CREATE TABLE empty(a)", (), ()),
    ConsistencyMarker("shop", 7, 1_764_000_000_000_000, 99, 3, (0, 5, 2**40), ("a", "b")),
    ConsistencyMarker("shop", 1, 0, 0, 1, (0,)),
    ControlEvent(ControlKind.REACHED, "shop", 7, 3, "host:1", 5, 2, 2**40, None, 10, ("a",)),
    ControlEvent(ControlKind.PUBLISHED, "shop", 7, 3, "m", 6, detail="done ✓"),
    ControlEvent(ControlKind.ABANDONED, "shop", 8, 3, "m", 7),
    ControlEvent(ControlKind.FAILED, "shop", 9, 3, "m", 8, tables=()),
    CapturePosition("shop", 10, 0, 4, (1, 2, 3, 4)),
    CapturePosition(
        "shop", 11, 0, 2, (1, 2), "db", 1, (SnapshotProgress("t", "x", ("i:9", "t:61"), 9),)
    ),
    MarkerDigest("shop", 7, False, (DigestEntry("a", 2**40, "ffffffffffffffff"),), 5, None),
    MarkerDigest("shop", 8, True, (), 6, "--digest-every 2: this marker has no digest"),
]

ALL_RECORDS = OPERATIONS + OTHER_RECORDS


def _same(a, b) -> bool:
    """Equality that also requires equal types, so 1 and 1.0 or b"" and "" never match."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def _ids(records):
    return [f"{type(r).__name__}-{i}" for i, r in enumerate(records)]


@pytest.mark.parametrize("record", ALL_RECORDS, ids=_ids(ALL_RECORDS))
def test_every_record_type_round_trips(record):
    decoded = decode(encode(record))
    assert type(decoded) is type(record)
    assert decoded == record


@pytest.mark.parametrize("name", sorted(VALUES))
def test_operation_value_kinds_keep_their_type_and_value(name):
    value = VALUES[name]
    op = Operation("s", 1, "t", OpType.INSERT, {"k": value}, {"k": value}, {"k": value}, 1)
    decoded = decode(encode(op))
    for image in (decoded.key, decoded.before, decoded.after):
        assert _same(image["k"], value), (image["k"], value)


def test_special_floats_round_trip():
    for value in (float("inf"), float("-inf"), float("nan"), -0.0, 5e-324):
        op = Operation("s", 1, "t", OpType.INSERT, {"k": value}, None, None, 1)
        got = decode(encode(op)).key["k"]
        assert _same(got, value)
        assert math.copysign(1.0, got) == math.copysign(1.0, value) or math.isnan(value)


def _schema_text(file_name: str) -> str:
    return resources.files("schemas").joinpath(file_name).read_text(encoding="utf-8")


@pytest.mark.parametrize("record", ALL_RECORDS, ids=_ids(ALL_RECORDS))
def test_header_is_magic_plus_crc64_of_canonical_form(record):
    data = encode(record)
    assert data[:2] == b"\xc3\x01"
    canonical = to_parsing_canonical_form(load_schema(codec.SCHEMA_FILES[type(record)]))
    expected = struct.pack("<Q", crc64_avro(canonical.encode("utf-8")))
    assert data[2:10] == expected


@pytest.mark.parametrize("file_name", sorted(set(codec.SCHEMA_FILES.values())))
def test_fastavro_and_apache_avro_agree_on_canonical_form(file_name):
    apache = avro.schema.parse(_schema_text(file_name))
    assert to_parsing_canonical_form(load_schema(file_name)) == apache.canonical_form


def test_published_fingerprints_are_distinct_and_match_headers():
    prints = codec.fingerprints()
    assert len(set(prints.values())) == len(codec.SCHEMA_FILES)
    for record in ALL_RECORDS:
        assert encode(record)[2:10].hex() == prints[type(record).__name__]


def _apache_read(record, data: bytes):
    schema = avro.schema.parse(_schema_text(codec.SCHEMA_FILES[type(record)]))
    stream = io.BytesIO(data[codec.HEADER_SIZE :])
    datum = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(stream))
    assert stream.tell() == len(data) - codec.HEADER_SIZE, "apache avro left bytes unread"
    return datum


@pytest.mark.parametrize("record", ALL_RECORDS, ids=_ids(ALL_RECORDS))
def test_apache_avro_reads_the_datum(record):
    datum = _apache_read(record, encode(record))
    if isinstance(record, Operation):
        assert datum["source"] == record.source
        assert datum["seq"] == record.seq
        assert datum["table"] == record.table
        assert datum["op"] == record.op.value
        assert _same(datum["key"], record.key)
        assert _same(datum["before"], record.before)
        assert _same(datum["after"], record.after)
        assert datum["commit_time_us"] == record.commit_time_us
    elif isinstance(record, TableDefinition):
        assert datum["table"] == record.table
        assert datum["ddl"] == record.ddl
        assert [(c["name"], c["declared_type"], c["not_null"]) for c in datum["columns"]] == [
            (c.name, c.declared_type, c.not_null) for c in record.columns
        ]
        assert datum["key_columns"] == list(record.key_columns)
    elif isinstance(record, ConsistencyMarker):
        assert (datum["marker_id"], datum["t1_us"], datum["seq"], datum["partitions"]) == (
            record.marker_id,
            record.t1_us,
            record.seq,
            record.partitions,
        )
        assert datum["counts"] == list(record.counts)
        assert datum["tables"] == list(record.tables)
    elif isinstance(record, ControlEvent):
        assert datum["kind"] == record.kind.value
        assert datum["partition"] == record.partition
        assert datum["offset"] == record.offset
        assert datum["detail"] == record.detail
        assert datum["t1_us"] == record.t1_us
        assert datum["tables"] == (None if record.tables is None else list(record.tables))
        assert datum["member"] == record.member
        assert datum["at_us"] == record.at_us
    elif isinstance(record, MarkerDigest):
        assert datum == {
            "source": record.source,
            "marker_id": record.marker_id,
            "skipped": record.skipped,
            "tables": [{"table": t.table, "rows": t.rows, "hash": t.hash} for t in record.tables],
            "note": record.note,
            "at_us": record.at_us,
        }
    else:
        assert datum == {
            "source": record.source,
            "seq": record.seq,
            "marker_id": record.marker_id,
            "partitions": record.partitions,
            "counts": list(record.counts),
            "database_id": record.database_id,
            "incarnation": record.incarnation,
            "snapshots": [
                {
                    "table": s.table,
                    "id": s.id,
                    "after_key": list(s.after_key),
                    "rows": s.rows,
                    "done": s.done,
                }
                for s in record.snapshots
            ],
        }


@pytest.mark.parametrize(
    ("record", "old_file"),
    [
        (CapturePosition("shop", 10, 3, 2, (1, 2)), "capture_position.v1.avsc"),
        (
            TableDefinition(
                "shop", "t", "CREATE TABLE t(a PRIMARY KEY)", (Column("a", ""),), ("a",)
            ),
            "table_definition.v1.avsc",
        ),
    ],
)
def test_records_written_with_the_previous_schema_still_decode(record, old_file) -> None:
    """A topic written by the previous version stays readable: the new fields take defaults."""
    old = codec.load_schema(old_file)
    out = io.BytesIO()
    out.write(codec.MAGIC + codec.schema_fingerprint(old))
    datum = dict(codec._CONVERTERS[type(record)][0](record))
    datum.pop("incarnation")
    datum.pop("reinstalled", None)
    datum.pop("database_id", None)
    fastavro.schemaless_writer(out, fastavro.parse_schema(old), datum)
    assert out.getvalue()[:10] != encode(record)[:10], "the old schema has its own fingerprint"
    assert decode(out.getvalue()) == record


# -- errors


def _sample() -> bytes:
    return encode(OPERATIONS[1])


@pytest.mark.parametrize(
    "data",
    [
        None,
        b"",
        b"\xc3",
        b"garbage that is long enough",
        b"\x01\xc3" + b"\x00" * 20,
        b"\xc3\x01" + b"\x00" * 7,  # right magic, header too short
        b'{"source": "shop"}',
    ],
    ids=["none", "empty", "one-byte", "text", "swapped-magic", "short-header", "json"],
)
def test_not_single_object(data):
    with pytest.raises(NotSingleObject) as info:
        decode(data)
    assert info.value.reason == NotSingleObject.reason
    assert isinstance(info.value, CodecError)
    assert isinstance(info.value, ValueError)


def test_unknown_fingerprint():
    data = _sample()
    unknown = bytes(b ^ 0xFF for b in data[2:10])
    with pytest.raises(UnknownSchema) as info:
        decode(data[:2] + unknown + data[10:])
    assert info.value.reason == UnknownSchema.reason
    assert unknown.hex() in str(info.value)


@pytest.mark.parametrize("record", ALL_RECORDS, ids=_ids(ALL_RECORDS))
def test_every_truncation_is_malformed(record):
    data = encode(record)
    for end in range(codec.HEADER_SIZE, len(data)):
        with pytest.raises(MalformedDatum) as info:
            decode(data[:end])
        assert info.value.reason == MalformedDatum.reason


def test_trailing_bytes_are_malformed():
    data = _sample()
    with pytest.raises(MalformedDatum, match="trailing") as info:
        decode(data + b"\x00")
    assert info.value.reason == MalformedDatum.reason


def test_reasons_are_distinct_short_phrases():
    reasons = {cls.reason for cls in (CodecError, NotSingleObject, UnknownSchema, MalformedDatum)}
    assert len(reasons) == 4
    assert all(r and "\n" not in r for r in reasons)


def _random_value(rng):
    kind = rng.randrange(6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([0, -1, 1, 63, -64, 64, 2**31, -(2**63), 2**63 - 1, rng.getrandbits(40)])
    if kind == 2:
        return rng.choice([0.0, -0.5, 1e300, float("inf"), rng.random()])
    if kind == 3:
        return "".join(rng.choice("aé€😀,'\"\x00") for _ in range(rng.randrange(12)))
    if kind == 4:
        return rng.randbytes(rng.randrange(20))
    return rng.getrandbits(8)


def test_hand_written_operation_encoder_matches_fastavro_byte_for_byte():
    """The fast Operation encoder must produce exactly fastavro's bytes."""
    import io
    import random

    import fastavro

    from schemas.codec import _BY_TYPE

    rng = random.Random(2026)
    binding = _BY_TYPE[Operation]
    for _ in range(500):
        columns = [f"c{i}" for i in range(rng.randrange(0, 8))]
        image = {c: _random_value(rng) for c in columns}
        op = Operation(
            source=rng.choice(["default", "shöp"]),
            seq=rng.getrandbits(rng.choice([3, 20, 62])),
            table=rng.choice(["accounts", 'x"; DROP TABLE y; --']),
            op=rng.choice(list(OpType)),
            key={"id": rng.getrandbits(30)},
            before=rng.choice([None, image]),
            after=rng.choice([None, dict(image)]),
            commit_time_us=rng.getrandbits(52),
        )
        reference = io.BytesIO()
        reference.write(binding.header)
        fastavro.schemaless_writer(reference, binding.parsed, binding.to_datum(op))
        assert encode(op) == reference.getvalue()
        assert decode(encode(op)) == op


def test_row_encoder_writes_exactly_the_operation_encoders_bytes():
    """Capture's list-based encoder must match encode_operation (checked above against
    fastavro) for the same operation, keys from the after image, else the before image."""
    import random

    from schemas.codec import OPERATION_HEADER
    from schemas.operation_codec import RowEncoder, encode_operation

    rng = random.Random(2027)
    for _ in range(500):
        columns = [f"c{i}" for i in range(rng.randrange(1, 9))] + ["é 'x'"]
        positions = sorted(rng.sample(range(len(columns)), rng.randrange(1, len(columns) + 1)))
        before = rng.choice([None, [_random_value(rng) for _ in columns]])
        after = (
            [_random_value(rng) for _ in columns]
            if before is None
            else rng.choice([None, [_random_value(rng) for _ in columns]])
        )
        source, table = rng.choice(["default", "shöp"]), rng.choice(["t", 'x"; --'])
        seq, at_us, kind = (
            rng.getrandbits(rng.choice([3, 20, 62])),
            rng.getrandbits(52),
            rng.choice(list(OpType)),
        )
        image = after if after is not None else before
        op = Operation(
            source,
            seq,
            table,
            kind,
            {columns[i]: image[i] for i in positions},
            None if before is None else dict(zip(columns, before, strict=True)),
            None if after is None else dict(zip(columns, after, strict=True)),
            at_us,
        )
        encoder = RowEncoder(OPERATION_HEADER, source, table, columns, positions)
        assert encoder.encode(seq, kind, before, after, at_us) == encode_operation(
            op, OPERATION_HEADER
        )


def test_operation_encoder_refuses_values_avro_cannot_hold():
    with pytest.raises(ValueError, match="Avro long"):
        encode(Operation("s", 1, "t", OpType.INSERT, {"id": 2**63}, None, None, 0))


def test_table_definitions_written_before_reinstalled_existed_still_decode():
    """Records on topics written by an older cutline use table_definition.v1.avsc."""
    old = load_schema("table_definition.v1.avsc")
    header = codec.MAGIC + codec.schema_fingerprint(old)
    assert header[2:].hex() == "8a468b9c7badbd7d"
    datum = {
        "source": "shop",
        "table": "t",
        "ddl": "CREATE TABLE t(id INTEGER PRIMARY KEY)",
        "columns": [{"name": "id", "declared_type": "INTEGER", "not_null": False}],
        "key_columns": ["id"],
    }
    out = io.BytesIO()
    out.write(header)
    fastavro.schemaless_writer(out, fastavro.parse_schema(old), datum)
    decoded = decode(out.getvalue())
    assert decoded == TableDefinition(
        "shop", "t", datum["ddl"], (Column("id", "INTEGER"),), ("id",), reinstalled=False
    )
    new = TableDefinition(
        "shop", "t", datum["ddl"], (Column("id", "INTEGER"),), ("id",), reinstalled=True
    )
    assert decode(encode(new)) == new


def test_control_events_written_before_pinned_existed_still_decode():
    """Control topics written by an older cutline use control_event.v1.avsc (no PINNED)."""
    old = load_schema("control_event.v1.avsc")
    header = codec.MAGIC + codec.schema_fingerprint(old)
    assert header[2:].hex() == "0fab9c2e2ebb11ef"
    datum = {
        "kind": "PUBLISHED",
        "source": "shop",
        "marker_id": 4,
        "partitions": 2,
        "partition": None,
        "offset": None,
        "member": "m",
        "detail": "done",
        "t1_us": None,
        "tables": None,
        "at_us": 7,
    }
    out = io.BytesIO()
    out.write(header)
    fastavro.schemaless_writer(out, fastavro.parse_schema(old), datum)
    assert decode(out.getvalue()) == ControlEvent(
        ControlKind.PUBLISHED, "shop", 4, 2, member="m", at_us=7, detail="done"
    )
    pinned = ControlEvent(ControlKind.PINNED, "shop", 4, 2, member="m", at_us=8)
    assert decode(encode(pinned)) == pinned
