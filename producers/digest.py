"""The row digest: one order-independent fingerprint per table, the same on both sides.

The primary computes it at a marker's commit and the snapshotter over the replica rows it
backs up; equal digests mean equal tables. It is written down here so that anyone can
recompute it from a SQLite file or a restored backup:

* every row is encoded canonically, value by value in the table's column order
  (``PRAGMA table_info``)::

      NULL     0x00
      INTEGER  0x01 + 8-byte big-endian two's complement
      REAL     0x02 + 8-byte big-endian IEEE-754 bits (every NaN as 0x7ff8000000000000)
      TEXT     0x03 + 4-byte big-endian length + the UTF-8 bytes
      BLOB     0x04 + 4-byte big-endian length + the bytes

  so 1 and 1.0, 0.0 and -0.0, 'a' and x'61' all differ (the storage class is part of
  the value), and the length prefixes make the encoding of a row unambiguous;
* a row's hash is BLAKE2b with an 8-byte digest of that encoding, read as an unsigned
  little-endian integer;
* a table's digest is (row count, sum of its rows' hashes mod 2^64), the sum shown as 16
  hex digits. A sum does not depend on row order (shards hold rows in any order) and,
  unlike XOR, a duplicated row does not cancel out.

TEXT that is not valid UTF-8 is hashed as a BLOB of its bytes, because capture carries it
as one (``sqlite_changelog.text_from_bytes``); the primary side reads TEXT with
``surrogateescape`` to see such bytes at all.
"""

from __future__ import annotations

import math
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from itertools import pairwise

import pyarrow as pa

from producers.digest_columns import encode_columns, encode_rows
from producers.sqlite_changelog import quote_identifier

MOD = 1 << 64
_NULL = b"\x00"
_INT = struct.Struct(">Bq").pack
_REAL = struct.Struct(">Bd").pack
_HEAD = struct.Struct(">BI").pack
_NAN = b"\x02\x7f\xf8\x00\x00\x00\x00\x00\x00"
TEXT_TAG, BLOB_TAG = 3, 4
CHUNK_ROWS = 50_000
_HASHER = blake2b(digest_size=8)  # never updated: every row hash starts from a copy of it
# Rows encoded at once: the column path's numpy temporaries take ~25 bytes per encoded
# byte, so an incremental's 100k touched rows hashed in one go took ~150 MB (10M-row scale
# run); slices of this size cost the same time per row as one batch.
ENCODE_ROWS = 16_384
COLUMN_PATH_MIN_ROWS = 64  # below this the column path's fixed cost outweighs its gain


@dataclass(frozen=True, slots=True)
class TableDigest:
    """One table's digest: how many rows, and the sum of their hashes mod 2^64."""

    table: str
    rows: int
    hash: int

    @property
    def hex(self) -> str:
        return f"{self.hash:016x}"

    def as_json(self) -> dict[str, object]:
        return {"rows": self.rows, "hash": self.hex}

    @classmethod
    def from_json(cls, table: str, data: dict[str, object]) -> TableDigest:
        """A digest as :meth:`as_json` wrote it (e.g. a manifest's ``tables[t].digest``)."""
        return cls(table, int(str(data["rows"])), int(str(data["hash"]), 16))

    def changed(self, removed: TableDigest, added: TableDigest) -> TableDigest:
        """This table's digest with ``removed``'s rows taken out and ``added``'s put in.

        Exact because a digest is a count and a sum mod 2^64: taking out a row that was
        in the table subtracts its hash and one from the count.
        """
        return TableDigest(
            self.table,
            self.rows - removed.rows + added.rows,
            (self.hash - removed.hash + added.hash) % MOD,
        )


def _text(value: str) -> bytes:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:  # read with surrogateescape: TEXT that is not UTF-8
        raw = value.encode("utf-8", "surrogateescape")
        return _HEAD(BLOB_TAG, len(raw)) + raw
    return _HEAD(TEXT_TAG, len(raw)) + raw


def _real(value: float) -> bytes:
    return _NAN if math.isnan(value) else _REAL(2, value)


def _blob(value: bytes | bytearray | memoryview) -> bytes:
    raw = bytes(value)
    return _HEAD(BLOB_TAG, len(raw)) + raw


_ENCODERS = {
    int: lambda v: _INT(1, v),
    float: _real,
    str: _text,
    bytes: _blob,
    bytearray: _blob,
    memoryview: _blob,
    type(None): lambda v: _NULL,
}


def encode_row(row: Iterable[object]) -> bytes:
    """The canonical encoding of one row (see the module docstring)."""
    try:
        return b"".join([_ENCODERS[type(v)](v) for v in row])
    except KeyError as exc:
        raise TypeError(f"not a SQLite value: {exc.args[0]!r}") from None


def row_hash(row: Iterable[object]) -> int:
    return int.from_bytes(blake2b(encode_row(row), digest_size=8).digest(), "little")


class DigestAccumulator:
    """Adds rows in any order, in as many batches as needed; memory stays flat."""

    __slots__ = ("rows", "total")

    def __init__(self) -> None:
        self.rows = 0
        self.total = 0

    def add(
        self,
        rows: Iterable[Iterable[object]],
        columns: Sequence[Sequence[object]] | None = None,
        arrays: Sequence[pa.Array | None] | None = None,
    ) -> None:
        """Add ``rows``; ``columns`` (the same rows transposed) and ``arrays`` (Arrow arrays
        built from those columns) spare the column path building them again."""
        batch = rows if isinstance(rows, list | tuple) else list(rows)
        if len(batch) > ENCODE_ROWS:  # the column path's temporaries grow with the batch
            for start in range(0, len(batch), ENCODE_ROWS):
                stop = start + ENCODE_ROWS
                self.add(
                    batch[start:stop],
                    None if columns is None else [c[start:stop] for c in columns],
                    None
                    if arrays is None
                    else [None if a is None else a.slice(start, ENCODE_ROWS) for a in arrays],
                )
            return
        if len(batch) < COLUMN_PATH_MIN_ROWS:
            encoded = None
        elif columns is not None:
            encoded = encode_columns(columns, arrays)
        else:
            encoded = encode_rows(batch)
        if encoded is None:
            self._add_row_by_row(batch)
            return
        buffer, bounds = encoded
        view, edges = memoryview(buffer), bounds.tolist()
        from_bytes, total, fresh = int.from_bytes, self.total, _HASHER.copy
        for start, stop in pairwise(edges):
            hasher = fresh()  # copying a set-up hasher skips the constructor's keyword parsing
            hasher.update(view[start:stop])
            total += from_bytes(hasher.digest(), "little")
        self.total = total % MOD
        self.rows += len(batch)

    def _add_row_by_row(self, rows: Iterable[Iterable[object]]) -> None:
        total, count = self.total, 0
        encoders = _ENCODERS
        from_bytes = int.from_bytes
        try:
            for row in rows:
                data = b"".join([encoders[type(v)](v) for v in row])
                total += from_bytes(blake2b(data, digest_size=8).digest(), "little")
                count += 1
        except KeyError as exc:
            raise TypeError(f"not a SQLite value: {exc.args[0]!r}") from None
        self.total = total % MOD
        self.rows += count

    def result(self, table: str) -> TableDigest:
        return TableDigest(table, self.rows, self.total)


def digest_rows(table: str, rows: Iterable[Iterable[object]]) -> TableDigest:
    acc = DigestAccumulator()
    acc.add(rows)
    return acc.result(table)


def table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({quote_identifier(table)})")]


def _text_keeping_bytes(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def digest_table(conn: sqlite3.Connection, table: str) -> TableDigest:
    """The digest of ``table`` as ``conn`` sees it (inside the caller's read transaction).

    TEXT that is not UTF-8 cannot be read as ``str``: then the table is read again with
    ``surrogateescape`` (slower, a Python call per value), so such TEXT is hashed as the
    bytes capture carries, never an error.
    """
    try:
        return _digest_table(conn, table)
    except sqlite3.OperationalError as exc:
        if "decode" not in str(exc):
            raise
    previous = conn.text_factory
    conn.text_factory = _text_keeping_bytes
    try:
        return _digest_table(conn, table)
    finally:
        conn.text_factory = previous


def _digest_table(conn: sqlite3.Connection, table: str) -> TableDigest:
    columns = table_columns(conn, table)
    acc = DigestAccumulator()
    cursor = conn.execute(
        f"SELECT {','.join(map(quote_identifier, columns))} FROM {quote_identifier(table)}"
    )
    try:
        while chunk := cursor.fetchmany(CHUNK_ROWS):
            acc.add(chunk)
    finally:
        cursor.close()
    return acc.result(table)


def digest_tables(conn: sqlite3.Connection, tables: Iterable[str]) -> list[TableDigest]:
    return [digest_table(conn, t) for t in sorted(tables)]
