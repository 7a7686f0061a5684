"""The column-at-a-time encoding gives exactly the row path's digest, or steps aside."""

from __future__ import annotations

import math
import random

import pyarrow as pa
import pytest

from producers.digest import COLUMN_PATH_MIN_ROWS, MOD, DigestAccumulator, encode_row, row_hash
from producers.digest_columns import encode_columns, encode_rows

EDGE_VALUES = {
    "int": [0, -1, 1, 2**63 - 1, -(2**63), 10**12],
    "real": [0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 1e308, 5e-324, 0.1],
    "text": ["", "a", "é漢字🙂", "x" * 300, "\x00inside"],
    "blob": [b"", b"\x00\xff", bytes(range(256))],
}


def _column_values(rng: random.Random, kind: str, rows: int) -> list[object]:
    if kind == "mixed":  # SQLite lets one column hold every storage class
        return [rng.choice([1, 1.0, "1", b"1", None]) for _ in range(rows)]
    values = EDGE_VALUES[kind]
    nulls = rng.random() < 0.5
    return [None if nulls and rng.random() < 0.2 else rng.choice(values) for _ in range(rows)]


def _random_columns(rng: random.Random, width: int, least: int, most: int) -> list[list]:
    """``width`` columns of random kinds, all of one random length in [least, most]."""
    kinds = [rng.choice(["int", "real", "text", "blob", "mixed"]) for _ in range(width)]
    count = rng.randint(least, most)
    return [_column_values(rng, k, count) for k in kinds]


def _reference(rows: list[tuple]) -> int:
    return sum(row_hash(r) for r in rows) % MOD


@pytest.mark.parametrize("seed", range(40))
def test_random_batches_digest_exactly_as_row_by_row(seed: int) -> None:
    rng = random.Random(seed)
    columns = _random_columns(rng, rng.randint(1, 6), COLUMN_PATH_MIN_ROWS, 400)
    count = len(columns[0])
    rows = list(zip(*columns, strict=True))
    acc = DigestAccumulator()
    acc.add(rows)
    assert (acc.rows, acc.total) == (count, _reference(rows))


def test_the_buffer_holds_each_rows_documented_encoding() -> None:
    rows = [(i, f"t{i}", i / 3, None, bytes([i % 256])) for i in range(100)]
    encoded = encode_rows(rows)
    assert encoded is not None
    buffer, bounds = encoded
    assert [buffer[bounds[i] : bounds[i + 1]] for i in range(100)] == [encode_row(r) for r in rows]


@pytest.mark.parametrize(
    "column",
    [
        [1, "1"] * 40,  # two storage classes
        ["ok", "\udcff"] * 40,  # TEXT read with surrogateescape: a BLOB of its bytes
        [True, False] * 40,  # not a SQLite value
        [bytearray(b"x")] * 80,
    ],
)
def test_a_column_the_fast_path_does_not_cover_falls_back_to_the_row_path(column) -> None:
    rows = [(i, v) for i, v in enumerate(column)]
    assert encode_rows(rows) is None
    try:
        expected = _reference(rows)
    except TypeError:
        with pytest.raises(TypeError):
            DigestAccumulator().add(rows)
        return
    acc = DigestAccumulator()
    acc.add(rows)
    assert acc.total == expected


def test_a_column_of_only_nulls_is_covered() -> None:
    rows = [(i, None) for i in range(80)]
    assert encode_rows(rows) is not None
    acc = DigestAccumulator()
    acc.add(rows)
    assert acc.total == _reference(rows)


ARROW_TYPES = [pa.int64(), pa.float64(), pa.string(), pa.binary(), pa.large_string(), None]


def _array_of(rng: random.Random, values: list[object], arrow_type) -> pa.Array | None:
    """An Arrow array built from ``values`` (any type Arrow accepts them as, even a lossy
    one such as ints as doubles), sliced or chunked at random; None if Arrow refuses."""
    if arrow_type is None:
        return None
    padded = [None, *values, None]
    try:
        array = pa.array(padded, type=arrow_type).slice(1, len(values))
    except (pa.ArrowException, OverflowError, UnicodeEncodeError):
        return None
    if rng.random() < 0.3 and len(values) > 2:
        cut = rng.randint(1, len(values) - 1)
        return pa.chunked_array([array.slice(0, cut), array.slice(cut)])
    return array


@pytest.mark.parametrize("seed", range(60))
def test_columns_read_from_arrow_arrays_digest_exactly_as_row_by_row(seed: int) -> None:
    rng = random.Random(seed)
    columns = _random_columns(rng, rng.randint(1, 6), COLUMN_PATH_MIN_ROWS, 400)
    count = len(columns[0])
    if rng.random() < 0.3:  # ints only, in a column a backup would store as DOUBLE
        columns[0] = [rng.choice([None, 1, 2**53]) for _ in range(count)]
    arrays = [_array_of(rng, c, rng.choice(ARROW_TYPES)) for c in columns]
    rows = list(zip(*columns, strict=True))
    acc = DigestAccumulator()
    acc.add(rows, columns, arrays)
    assert (acc.rows, acc.total) == (count, _reference(rows))


def test_a_column_is_read_from_its_arrow_array_when_the_types_match() -> None:
    """The array's buffers are what is encoded (the column is not converted again): an
    array holding other values than the column shows it."""
    column = list(range(100))
    other = pa.array([v + 1 for v in column], type=pa.int64())
    assert _buffer(encode_columns([column], [other])) == _buffer(
        encode_rows([(v + 1,) for v in column])
    )
    as_doubles = pa.array(column, type=pa.float64())  # another type: the values are encoded
    assert _buffer(encode_columns([column], [as_doubles])) == _buffer(
        encode_rows([(v,) for v in column])
    )


def _buffer(encoded) -> bytes:
    assert encoded is not None
    return encoded[0]


@pytest.mark.parametrize("seed", range(6))
def test_a_batch_beyond_encode_rows_is_hashed_in_slices_with_the_same_digest(
    seed: int, monkeypatch
) -> None:
    """Slices bound the column path's temporaries; the digest is that of the whole batch,
    whether the rows come alone or with their columns and Arrow arrays."""
    from producers import digest

    monkeypatch.setattr(digest, "ENCODE_ROWS", 100)
    rng = random.Random(seed)
    columns = _random_columns(rng, 4, 101, 1000)
    count = len(columns[0])
    arrays = [_array_of(rng, c, rng.choice(ARROW_TYPES)) for c in columns]
    rows = list(zip(*columns, strict=True))
    alone, with_columns = DigestAccumulator(), DigestAccumulator()
    alone.add(iter(rows))
    with_columns.add(rows, columns, arrays)
    expected = (count, _reference(rows))
    assert (alone.rows, alone.total) == expected == (with_columns.rows, with_columns.total)
