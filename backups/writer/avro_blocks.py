"""Avro object container files written from Arrow record batches, one block per batch.

fastavro's writer takes one Python dict per row (~90k rows/s here, the slowest stage of a
backup). This encoder builds each block's bytes from the Arrow columns with numpy: a
nullable field is the union ``["null", T]`` (index byte 0 for NULL, 2 for T, zigzag), a
long a zigzag varint, a double 8 little-endian bytes, a string or bytes a varint length
and the raw bytes. The header (magic, ``avro.schema``, ``avro.codec``, the caller's
metadata, sync marker) is written by fastavro itself, so the file is the same standard
object container file fastavro and the Apache Avro reader read
(https://avro.apache.org/docs/1.11.1/specification/#object-container-files).

Memory: a block's encoded and compressed bytes (at most two blocks at once), and while
encoding, an int64 index per byte of ``ENCODE_ROWS`` rows (a few MB).
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import fastavro
import numpy as np
import pyarrow as pa

CODECS = ("null", "deflate")
# zlib's fastest level. Why: at the default (6) deflate took 1.35 us a row of the scale
# table against 0.26 us at 1, for a block 7 % smaller (375 KB against 403 KB for 32,768
# rows); in a full backup that was a third of the writer's CPU, on a core replication and
# the primary's digest need. Readers do not care: any level is the same RFC 1951 stream.
DEFLATE_LEVEL = 1
ENCODE_ROWS = 8192  # rows encoded at once (see encode_rows)
_NULL_INDEX = 0  # zigzag(0): the union's first branch, "null"
_VALUE_INDEX = 2  # zigzag(1): the union's second branch, the column's type


class AvroEncodeError(ValueError):
    """An Arrow column whose type has no Avro encoding here."""


@dataclass(frozen=True)
class _Segment:
    """Per row, ``lengths[r]`` bytes; all rows' bytes back to back in ``data``."""

    lengths: np.ndarray  # int64, one per row
    data: np.ndarray  # uint8


def varint_bytes(values: np.ndarray) -> _Segment:
    """Avro ``long`` encodings (zigzag, then little-endian base-128 varint) of int64s."""
    v = values.astype(np.int64, copy=False)
    zig = ((v << 1) ^ (v >> 63)).view(np.uint64)
    if zig.size == 0:
        return _Segment(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8))
    # only as many 7-bit groups as the largest value needs (most columns: 1 to 4)
    width = max(1, (int(zig.max()).bit_length() + 6) // 7)
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    shifted = zig[:, None] >> shifts[None, :]
    nonzero = shifted != 0
    # bytes needed: 1 + the index of the highest non-zero 7-bit group (at least 1)
    lengths = np.maximum(1, width - np.argmax(nonzero[:, ::-1], axis=1))
    lengths = np.where(nonzero[:, 0] | nonzero.any(axis=1), lengths, 1).astype(np.int64)
    cols = np.arange(width)[None, :]
    groups = (shifted & np.uint64(0x7F)).astype(np.uint8)
    groups[cols < (lengths[:, None] - 1)] |= 0x80
    return _Segment(lengths, groups[cols < lengths[:, None]])


def _fixed(matrix: np.ndarray, present: np.ndarray) -> _Segment:
    """Rows of a (n, w) byte matrix, only where ``present`` (others: no bytes)."""
    width = matrix.shape[1]
    return _Segment(np.where(present, width, 0).astype(np.int64), matrix[present].reshape(-1))


def _union_index(valid: np.ndarray) -> _Segment:
    index = np.where(valid, _VALUE_INDEX, _NULL_INDEX).astype(np.uint8)
    return _Segment(np.ones(len(valid), dtype=np.int64), index)


def _binary_parts(array: pa.Array, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, bytes) of a string/binary array's valid values, in row order."""
    if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type):
        offset_type: Any = np.int64
    elif pa.types.is_string(array.type) or pa.types.is_binary(array.type):
        offset_type = np.int32
    else:  # string_view and others: make it a plain array first
        target = pa.large_string() if pa.types.is_string_view(array.type) else pa.large_binary()
        return _binary_parts(array.cast(target), valid)
    buffers = array.buffers()
    n = len(array)
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[array.offset : array.offset + n + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else None
    lengths = np.diff(offsets)
    if data is None or offsets[-1] == offsets[0]:
        return np.where(valid, lengths, 0), np.empty(0, dtype=np.uint8)
    chunk = data[offsets[0] : offsets[-1]]
    if not valid.all():  # a NULL slot may still own bytes: drop them
        chunk = chunk[np.repeat(valid, lengths)]
        lengths = np.where(valid, lengths, 0)
    return lengths, chunk


def _column_segments(array: pa.Array, avro_type: str) -> list[_Segment]:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    n = len(array)
    valid = (
        np.ones(n, dtype=bool)
        if array.null_count == 0
        else np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    )
    segments = [_union_index(valid)]
    if avro_type == "long":
        values = np.asarray(array.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        encoded = varint_bytes(values[valid])
        lengths = np.zeros(n, dtype=np.int64)
        lengths[valid] = encoded.lengths
        segments.append(_Segment(lengths, encoded.data))
    elif avro_type == "double":
        values = np.asarray(array.fill_null(0).to_numpy(zero_copy_only=False), dtype="<f8")
        segments.append(_fixed(values.view(np.uint8).reshape(n, 8), valid))
    elif avro_type in ("string", "bytes"):
        lengths, data = _binary_parts(array, valid)
        prefix = varint_bytes(lengths[valid])
        prefix_lengths = np.zeros(n, dtype=np.int64)
        prefix_lengths[valid] = prefix.lengths
        segments += [_Segment(prefix_lengths, prefix.data), _Segment(lengths, data)]
    else:
        raise AvroEncodeError(f"no Avro encoding for type {avro_type!r}")
    return segments


def interleave(segments: list[_Segment], rows: int) -> bytes:
    """Row 0 of every segment, then row 1 of every segment, ...: Avro's record order."""
    if rows == 0:
        return b""
    lengths = np.stack([s.lengths for s in segments])  # (segments, rows)
    row_lengths = lengths.sum(axis=0)
    row_starts = np.cumsum(row_lengths) - row_lengths
    in_row = np.cumsum(lengths, axis=0) - lengths  # each segment's offset inside its row
    out = np.empty(int(row_lengths.sum()), dtype=np.uint8)
    for i, segment in enumerate(segments):
        if segment.data.size == 0:
            continue
        source_starts = np.cumsum(segment.lengths) - segment.lengths
        shift = row_starts + in_row[i] - source_starts
        out[np.repeat(shift, segment.lengths) + np.arange(segment.data.size)] = segment.data
    return out.tobytes()


def encode_rows(batch: pa.RecordBatch | pa.Table, avro_types: list[str]) -> bytes:
    """The Avro binary encoding of every row of ``batch`` (fields: ``["null", T]``).

    Encoded ``ENCODE_ROWS`` rows at a time: placing the bytes takes an int64 index per
    output byte, so slices keep that transient memory small whatever the batch size.
    """
    parts = []
    for start in range(0, batch.num_rows, ENCODE_ROWS):
        part = batch.slice(start, ENCODE_ROWS)
        segments: list[_Segment] = []
        for column, avro_type in zip(part.columns, avro_types, strict=True):
            segments += _column_segments(column, avro_type)
        parts.append(interleave(segments, part.num_rows))
    return b"".join(parts)


def _long(value: int) -> bytes:
    return varint_bytes(np.array([value], dtype=np.int64)).data.tobytes()


def _block(rows: int, data: bytes, codec: str, sync: bytes) -> bytes:
    if codec == "deflate":  # raw deflate (no zlib header), as the Avro spec says
        compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
        data = compressor.compress(data) + compressor.flush()
    return _long(rows) + _long(len(data)) + data + sync


class ContainerWriter:
    """An object container file: the header by fastavro, then one block per ``write``.

    A block is compressed in a helper thread (zlib releases the GIL) while the caller
    reads and encodes the next batch; at most one block waits, so memory stays at about
    two encoded batches. ``close`` (or leaving the ``with`` block) writes the last one.
    """

    def __init__(
        self, out: IO[bytes], schema: dict[str, Any], codec: str, metadata: dict[str, str]
    ):
        if codec not in CODECS:
            raise AvroEncodeError(f"avro codec {codec!r} is not one of {CODECS}")
        self._out = out
        self._codec = codec
        self._sync = os.urandom(16)
        parsed = fastavro.parse_schema(schema)
        self._types = [_branch(f["type"]) for f in parsed["fields"]]
        fastavro.writer(out, parsed, [], codec=codec, metadata=metadata, sync_marker=self._sync)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avro-deflate")
        self._pending: Future[bytes] | None = None

    def __enter__(self) -> ContainerWriter:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.close()
        else:  # an error: drop the pending block, the file is discarded anyway
            self._pool.shutdown(wait=True, cancel_futures=True)

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        data = encode_rows(batch, self._types)
        self._flush()
        self._pending = self._pool.submit(_block, batch.num_rows, data, self._codec, self._sync)

    def _flush(self) -> None:
        if self._pending is not None:
            self._out.write(self._pending.result())
            self._pending = None

    def close(self) -> None:
        """Write the last block (the file object stays open: the caller owns it)."""
        try:
            self._flush()
        finally:
            self._pool.shutdown(wait=True)


def _branch(field_type: Any) -> str:
    """The non-null branch of a ``["null", T]`` field type."""
    if isinstance(field_type, list) and len(field_type) == 2 and field_type[0] == "null":
        return str(field_type[1])
    raise AvroEncodeError(f"field type {field_type!r} is not ['null', T]")
