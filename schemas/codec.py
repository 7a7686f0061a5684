"""The one codec both sides use: Avro single-object encoding, no registry needed.

Every value is ``0xC3 0x01`` + the schema's 8-byte little-endian CRC-64-AVRO fingerprint +
the Avro binary datum (Avro specification, "Single-object encoding"). Any Avro reader
holding our ``.avsc`` files can tell which schema a value uses from its first 10 bytes.

``encode`` and ``decode`` are plain callables, as in confluent-kafka-python's serializers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas.operation_codec import NotFastPath, decode_operation, encode_operation
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
    Record,
    SnapshotProgress,
    TableDefinition,
)

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


class CodecError(ValueError):
    """A value that is not a well-formed cutline record; ``reason`` is one short phrase."""

    reason = "malformed record"


class NotSingleObject(CodecError):
    reason = "not an Avro single-object encoded value"


class UnknownSchema(CodecError):
    reason = "unknown schema fingerprint"


class MalformedDatum(CodecError):
    reason = "truncated or malformed Avro datum"


def load_schema(file_name: str) -> dict[str, Any]:
    """Read one of the ``.avsc`` files shipped with this package."""
    text = resources.files("schemas").joinpath(file_name).read_text(encoding="utf-8")
    return json.loads(text)


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO of the schema's parsing canonical form, little-endian, as on the wire."""
    return bytes.fromhex(avro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@dataclass(frozen=True)
class _Binding:
    record_type: type
    parsed: Any
    header: bytes
    to_datum: Callable[[Any], dict[str, Any]]
    from_datum: Callable[[dict[str, Any]], Record]
    reader: Any = None  # for an older writer schema: the current schema, to resolve to


def _operation_datum(r: Operation) -> dict[str, Any]:
    return {
        "source": r.source,
        "seq": r.seq,
        "table": r.table,
        "op": r.op.value,
        "key": r.key,
        "before": r.before,
        "after": r.after,
        "commit_time_us": r.commit_time_us,
    }


def _operation(d: dict[str, Any]) -> Operation:
    return Operation(
        source=d["source"],
        seq=d["seq"],
        table=d["table"],
        op=OpType(d["op"]),
        key=d["key"],
        before=d["before"],
        after=d["after"],
        commit_time_us=d["commit_time_us"],
    )


def _table_datum(r: TableDefinition) -> dict[str, Any]:
    return {
        "source": r.source,
        "table": r.table,
        "ddl": r.ddl,
        "columns": [
            {"name": c.name, "declared_type": c.declared_type, "not_null": c.not_null}
            for c in r.columns
        ],
        "key_columns": list(r.key_columns),
        "incarnation": r.incarnation,
        "reinstalled": r.reinstalled,
    }


def _table(d: dict[str, Any]) -> TableDefinition:
    return TableDefinition(
        source=d["source"],
        table=d["table"],
        ddl=d["ddl"],
        columns=tuple(Column(c["name"], c["declared_type"], c["not_null"]) for c in d["columns"]),
        key_columns=tuple(d["key_columns"]),
        incarnation=d["incarnation"],
        reinstalled=d["reinstalled"],
    )


def _marker_datum(r: ConsistencyMarker) -> dict[str, Any]:
    return {
        "source": r.source,
        "marker_id": r.marker_id,
        "t1_us": r.t1_us,
        "seq": r.seq,
        "partitions": r.partitions,
        "counts": list(r.counts),
        "tables": list(r.tables),
    }


def _marker(d: dict[str, Any]) -> ConsistencyMarker:
    return ConsistencyMarker(
        source=d["source"],
        marker_id=d["marker_id"],
        t1_us=d["t1_us"],
        seq=d["seq"],
        partitions=d["partitions"],
        counts=tuple(d["counts"]),
        tables=tuple(d["tables"]),
    )


def _control_datum(r: ControlEvent) -> dict[str, Any]:
    return {
        "kind": r.kind.value,
        "source": r.source,
        "marker_id": r.marker_id,
        "partitions": r.partitions,
        "partition": r.partition,
        "offset": r.offset,
        "member": r.member,
        "detail": r.detail,
        "t1_us": r.t1_us,
        "tables": None if r.tables is None else list(r.tables),
        "at_us": r.at_us,
    }


def _control(d: dict[str, Any]) -> ControlEvent:
    return ControlEvent(
        kind=ControlKind(d["kind"]),
        source=d["source"],
        marker_id=d["marker_id"],
        partitions=d["partitions"],
        member=d["member"],
        at_us=d["at_us"],
        partition=d["partition"],
        offset=d["offset"],
        detail=d["detail"],
        t1_us=d["t1_us"],
        tables=None if d["tables"] is None else tuple(d["tables"]),
    )


def _position_datum(r: CapturePosition) -> dict[str, Any]:
    return {
        "source": r.source,
        "seq": r.seq,
        "marker_id": r.marker_id,
        "partitions": r.partitions,
        "counts": list(r.counts),
        "database_id": r.database_id,
        "incarnation": r.incarnation,
        "snapshots": [
            {
                "table": s.table,
                "id": s.id,
                "after_key": list(s.after_key),
                "rows": s.rows,
                "done": s.done,
            }
            for s in r.snapshots
        ],
    }


def _position(d: dict[str, Any]) -> CapturePosition:
    return CapturePosition(
        source=d["source"],
        seq=d["seq"],
        marker_id=d["marker_id"],
        partitions=d["partitions"],
        counts=tuple(d["counts"]),
        database_id=d["database_id"],
        incarnation=d["incarnation"],
        snapshots=tuple(
            SnapshotProgress(s["table"], s["id"], tuple(s["after_key"]), s["rows"], s["done"])
            for s in d["snapshots"]
        ),
    )


def _digest_datum(r: MarkerDigest) -> dict[str, Any]:
    return {
        "source": r.source,
        "marker_id": r.marker_id,
        "skipped": r.skipped,
        "tables": [{"table": t.table, "rows": t.rows, "hash": t.hash} for t in r.tables],
        "note": r.note,
        "at_us": r.at_us,
    }


def _digest(d: dict[str, Any]) -> MarkerDigest:
    return MarkerDigest(
        source=d["source"],
        marker_id=d["marker_id"],
        skipped=d["skipped"],
        tables=tuple(DigestEntry(t["table"], t["rows"], t["hash"]) for t in d["tables"]),
        at_us=d["at_us"],
        note=d["note"],
    )


SCHEMA_FILES: dict[type, str] = {
    Operation: "operation.avsc",
    TableDefinition: "table_definition.avsc",
    ConsistencyMarker: "marker.avsc",
    ControlEvent: "control_event.avsc",
    CapturePosition: "capture_position.avsc",
    MarkerDigest: "marker_digest.avsc",
}

# Earlier versions of a schema, still decoded (resolved to the current one, whose added
# fields have defaults): records written before the change stay readable.
OLDER_SCHEMA_FILES: dict[type, tuple[str, ...]] = {
    TableDefinition: ("table_definition.v1.avsc",),
    CapturePosition: ("capture_position.v1.avsc", "capture_position.v2.avsc"),  # v2: no snapshots
    ControlEvent: ("control_event.v1.avsc",),  # before PINNED
}

_CONVERTERS: dict[type, tuple[Callable[[Any], dict[str, Any]], Callable[..., Record]]] = {
    Operation: (_operation_datum, _operation),
    TableDefinition: (_table_datum, _table),
    ConsistencyMarker: (_marker_datum, _marker),
    ControlEvent: (_control_datum, _control),
    CapturePosition: (_position_datum, _position),
    MarkerDigest: (_digest_datum, _digest),
}


def _bind() -> tuple[dict[type, _Binding], dict[bytes, _Binding]]:
    by_type: dict[type, _Binding] = {}
    by_header: dict[bytes, _Binding] = {}
    for record_type, file_name in SCHEMA_FILES.items():
        schema = load_schema(file_name)
        header = MAGIC + schema_fingerprint(schema)
        to_datum, from_datum = _CONVERTERS[record_type]
        binding = _Binding(record_type, fastavro.parse_schema(schema), header, to_datum, from_datum)
        by_type[record_type] = binding
        by_header[header] = binding
        for old_file in OLDER_SCHEMA_FILES.get(record_type, ()):
            old = load_schema(old_file)
            old_header = MAGIC + schema_fingerprint(old)
            by_header[old_header] = _Binding(
                record_type,
                fastavro.parse_schema(old),
                old_header,
                to_datum,
                from_datum,
                reader=binding.parsed,
            )
    return by_type, by_header


_BY_TYPE, _BY_HEADER = _bind()


OPERATION_HEADER = _BY_TYPE[Operation].header  # for callers that encode Operations directly
_OPERATION_HEADER = OPERATION_HEADER


def encode(record: Record) -> bytes:
    """Serialize one record as a single-object encoded Avro value."""
    if type(record) is Operation:
        return encode_operation(record, _OPERATION_HEADER)
    binding = _BY_TYPE[type(record)]
    out = io.BytesIO()
    out.write(binding.header)
    fastavro.schemaless_writer(out, binding.parsed, binding.to_datum(record))
    return out.getvalue()


def decode(data: bytes | None) -> Record:
    """Parse a value written by :func:`encode`; raise a :class:`CodecError` subclass if not."""
    if data is None or len(data) < HEADER_SIZE or data[:2] != MAGIC:
        raise NotSingleObject(
            "value does not start with the Avro single-object marker 0xC3 0x01"
            if data is None or data[:2] != MAGIC
            else f"value is {len(data)} bytes, shorter than the 10-byte single-object header"
        )
    if type(data) is bytes and data[:HEADER_SIZE] == _OPERATION_HEADER:
        try:
            return decode_operation(data, HEADER_SIZE)
        except NotFastPath:
            pass  # not in the encoder's own form: fastavro decides, and names any error
    binding = _BY_HEADER.get(bytes(data[:HEADER_SIZE]))
    if binding is None:
        raise UnknownSchema(
            f"schema fingerprint {bytes(data[2:HEADER_SIZE]).hex()} is not one of cutline's"
        )
    stream = io.BytesIO(data)
    stream.seek(HEADER_SIZE)
    try:
        datum = fastavro.schemaless_reader(stream, binding.parsed, binding.reader)
    except (EOFError, ValueError, IndexError, KeyError, UnicodeDecodeError, TypeError) as exc:
        raise MalformedDatum(f"cannot read {binding.record_type.__name__}: {exc}") from exc
    if stream.tell() != len(data):
        raise MalformedDatum(
            f"{len(data) - stream.tell()} trailing bytes after a {binding.record_type.__name__}"
        )
    return binding.from_datum(datum)


def fingerprints() -> dict[str, str]:
    """Schema name to fingerprint (hex), for docs and for other readers."""
    return {b.record_type.__name__: b.header[2:].hex() for b in _BY_TYPE.values()}
