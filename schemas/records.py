"""Frozen records that both sides exchange. Kafka messages become these at the edge.

Field names match the ``.avsc`` files beside this module one to one, so converting to
and from Avro datums is ``dataclasses.asdict`` and a constructor call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# SQLite's storage classes, which Avro carries as ["null", "long", "double", "string", "bytes"].
Value = None | int | float | str | bytes
RowImage = dict[str, Value]


class OpType(StrEnum):
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class ControlKind(StrEnum):
    REACHED = "REACHED"
    PUBLISHED = "PUBLISHED"
    ABANDONED = "ABANDONED"
    FAILED = "FAILED"
    PINNED = "PINNED"  # the writer pinned the cut's snapshots: held partitions may resume


@dataclass(frozen=True, slots=True)
class Operation:
    source: str
    seq: int
    table: str
    op: OpType
    key: RowImage
    before: RowImage | None
    after: RowImage | None
    commit_time_us: int


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    declared_type: str
    not_null: bool = False


@dataclass(frozen=True, slots=True)
class TableDefinition:
    source: str
    table: str
    ddl: str
    columns: tuple[Column, ...]
    key_columns: tuple[str, ...]
    incarnation: int = 0  # the source's incarnation; a higher one replaces the replica's rows
    reinstalled: bool = False  # sent after a schema change: replicas rebuild the table

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True, slots=True)
class ConsistencyMarker:
    source: str
    marker_id: int
    t1_us: int
    seq: int
    partitions: int
    counts: tuple[int, ...]
    tables: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class ControlEvent:
    kind: ControlKind
    source: str
    marker_id: int
    partitions: int
    member: str
    at_us: int
    partition: int | None = None
    offset: int | None = None
    detail: str | None = None
    t1_us: int | None = None
    tables: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class SnapshotProgress:
    """How far one chunked initial snapshot got (``producers/initial_snapshot.py``)."""

    table: str
    id: str
    after_key: tuple[str, ...] = ()  # the last published row's key literals; (): none yet
    rows: int = 0
    done: bool = False


@dataclass(frozen=True, slots=True)
class CapturePosition:
    source: str
    seq: int
    marker_id: int
    partitions: int
    counts: tuple[int, ...]
    database_id: str = ""  # the captured database's identity ("" before it was recorded)
    incarnation: int = 0
    snapshots: tuple[SnapshotProgress, ...] = ()  # initial snapshots in chunks under way


@dataclass(frozen=True, slots=True)
class DigestEntry:
    table: str
    rows: int
    hash: str  # 16 lowercase hex digits (producers/digest.py)


@dataclass(frozen=True, slots=True)
class MarkerDigest:
    source: str
    marker_id: int
    skipped: bool
    tables: tuple[DigestEntry, ...]
    at_us: int
    note: str | None = None


Record = (
    Operation | TableDefinition | ConsistencyMarker | ControlEvent | CapturePosition | MarkerDigest
)
