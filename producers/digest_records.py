"""A ``G`` change-log row as the ``MarkerDigest`` record capture puts on the control topic."""

from __future__ import annotations

from producers.marker_digest import DigestPayload
from producers.sqlite_changelog import ChangeRow
from schemas.codec import encode
from schemas.records import DigestEntry, MarkerDigest

CONTROL_PARTITION = 0  # the control topic has one partition: one total order


def to_marker_digest(source: str, row: ChangeRow) -> MarkerDigest:
    # the G row is for every source of the database: this source's own tables only
    payload = DigestPayload.from_json(row.marker_id or 0, row.after or "").for_source(source)
    return MarkerDigest(
        source=source,
        marker_id=payload.marker_id,
        skipped=payload.skipped,
        tables=tuple(DigestEntry(t.table, t.rows, t.hex) for t in payload.tables),
        at_us=row.at_us,
        note=payload.note,
    )


def digest_record(source: str, row: ChangeRow) -> tuple[bytes, bytes, int]:
    """(value, key, partition) of the control record for one ``G`` row."""
    record = to_marker_digest(source, row)
    return encode(record), str(record.marker_id).encode(), CONTROL_PARTITION
