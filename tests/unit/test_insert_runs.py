"""Runs of INSERTs decoded as columns: every value the run gives is what ``decode`` gives.

Soundness: each record a run takes decodes (one at a time, ``schemas.codec.decode``) to an
INSERT of the run's layout with the very same values. Completeness: records in the
encoder's own form of that layout are all taken; a record of any other form ends the run.
"""

from __future__ import annotations

import random

from schemas.codec import OPERATION_HEADER, decode, encode
from schemas.insert_runs import InsertLayout, InsertRun, decode_inserts
from schemas.records import Operation, OpType
from tests.unit.test_operation_decoder import _comparable, _value


def _layout(rng: random.Random) -> InsertLayout:
    names = [
        rng.choice(["id", "c", "ünï", "x" * 70, "😀"]) + str(i)
        for i in range(rng.choice([0, 1, 5, 63, 64, 100]))
    ]
    keys = rng.choice([[], names[:1], names[:2]])
    return InsertLayout(
        rng.choice(["default", "shöp", "s" * 100, ""]),
        rng.choice(["accounts", 'x"; DROP TABLE y; --', "t" * 64, "ταβ"]),
        tuple(keys),
        tuple(names),
    )


def _insert(rng: random.Random, layout: InsertLayout, same_kind: bool = False) -> Operation:
    """An INSERT of ``layout``; ``same_kind``: each column keeps one storage class."""
    if same_kind:
        after = {n: (i * 7919 + rng.getrandbits(40)) for i, n in enumerate(layout.after_names)}
    else:
        after = {n: _value(rng) for n in layout.after_names}
    key = {k: after[k] for k in layout.key_names}
    return Operation(
        layout.source,
        rng.choice([0, 1, 2**63 - 1, rng.getrandbits(rng.choice([3, 20, 62]))]),
        layout.table,
        OpType.INSERT,
        key,
        None,
        after,
        rng.choice([0, -1, -(2**63), rng.getrandbits(52)]),
    )


def assert_sound(values: list[bytes], layout: InsertLayout) -> InsertRun:
    run = decode_inserts(values, layout, OPERATION_HEADER)
    assert set(run.columns) == set(layout.after_names)
    for name in layout.after_names:
        assert len(run.columns[name]) == run.count
    for i in range(run.count):
        record = decode(values[i])
        assert type(record) is Operation and InsertLayout.of(record) == layout, i
        assert record.after is not None
        got = {name: run.columns[name][i] for name in layout.after_names}
        assert _comparable(got) == _comparable(record.after), i
    return run


def test_records_of_one_layout_decode_like_decode_one_by_one():
    rng = random.Random(3)
    for _ in range(60):
        layout = _layout(rng)
        values = [encode(_insert(rng, layout)) for _ in range(rng.choice([1, 2, 17, 300]))]
        run = assert_sound(values, layout)
        assert run.count == len(values)


def test_columns_of_one_kind_take_the_whole_column_path():
    rng = random.Random(4)
    layout = InsertLayout("shop", "t", ("a0",), tuple(f"a{i}" for i in range(5)))
    values = [encode(_insert(rng, layout, same_kind=True)) for _ in range(500)]
    assert assert_sound(values, layout).count == 500


def test_a_record_of_another_form_ends_the_run_there():
    rng = random.Random(5)
    layout = InsertLayout("shop", "accounts", ("id",), ("id", "name", "balance"))

    def insert(i: int, **after) -> Operation:
        image = {"id": i, "name": f"n{i}", "balance": 1.5, **after}
        return Operation("shop", i, "accounts", OpType.INSERT, {"id": i}, None, image, 7)

    good = encode(insert(1, name="QQ"))
    others = {
        "another table": encode(
            Operation(
                "shop",
                1,
                "other",
                OpType.INSERT,
                {"id": 1},
                None,
                {"id": 1, "name": "a", "balance": 1.0},
                7,
            )
        ),
        "another source": encode(
            Operation(
                "elsewhere",
                1,
                "accounts",
                OpType.INSERT,
                {"id": 1},
                None,
                {"id": 1, "name": "a", "balance": 1.0},
                7,
            )
        ),
        "an update": encode(
            Operation(
                "shop",
                1,
                "accounts",
                OpType.UPDATE,
                {"id": 1},
                {"id": 1},
                {"id": 1, "name": "a", "balance": 1.0},
                7,
            )
        ),
        "a delete": encode(
            Operation("shop", 1, "accounts", OpType.DELETE, {"id": 1}, None, None, 7)
        ),
        "columns in another order": encode(
            Operation(
                "shop",
                1,
                "accounts",
                OpType.INSERT,
                {"id": 1},
                None,
                {"name": "a", "id": 1, "balance": 1.0},
                7,
            )
        ),
        "one more column": encode(insert(2, extra=1)),
        "a trailing byte": good + b"\x00",
        "truncated": good[:-1],
        "invalid UTF-8": good.replace(b"QQ", b"\xff\xfe"),
        "a surrogate": good.replace(b"\x06\x04QQ", b"\x06\x06\xed\xa0\x80"),
        "a negative length": good.replace(b"\x06\x04QQ", b"\x06\x03QQ"),
        "an unknown branch": good.replace(b"\x06\x04QQ", b"\x0a\x04QQ"),
        "a varint over 64 bits": good[:-1] + b"\x80" * 10 + b"\x00",
        "a map in two blocks": good.replace(
            b"\x00\x00\x02\x06\x04id", b"\x00\x00\x02\x04\x04id"
        ).replace(b"\x0ebalance", b"\x02\x0ebalance"),
        "not a record": b"not avro at all",
    }
    for why, other in others.items():
        values = [encode(insert(i)) for i in range(40)]
        at = rng.randrange(1, 39)
        values[at] = other
        run = assert_sound(values, layout)
        assert run.count == at, why


def test_the_longest_varints_and_extreme_values_fit():
    layout = InsertLayout("s", "t", ("k",), ("k", "v"))
    extremes = [-(2**63), 2**63 - 1, 0, -1, 1, 2**62, -(2**62) - 1]
    values = [
        encode(
            Operation(
                "s", 2**63 - 1, "t", OpType.INSERT, {"k": v}, None, {"k": v, "v": v}, -(2**63)
            )
        )
        for v in extremes
    ]
    run = assert_sound(values, layout)
    assert run.count == len(extremes)
    assert run.columns["v"] == extremes


def test_corrupted_records_are_never_taken_with_other_values():
    """Flipped, inserted and dropped bytes anywhere: whatever the run still takes is what
    ``decode`` reads from the same bytes."""
    rng = random.Random(12)
    checked = 0
    for _ in range(40):
        layout = _layout(rng)
        values = [encode(_insert(rng, layout)) for _ in range(8)]
        for _ in range(12):
            variant = list(values)
            at = rng.randrange(len(variant))
            data = bytearray(variant[at])
            spot = rng.randrange(len(data))
            choice = rng.randrange(3)
            if choice == 0:
                data[spot] = rng.randrange(256)
            elif choice == 1:
                data.insert(spot, rng.randrange(256))
            else:
                del data[spot]
            variant[at] = bytes(data)
            assert_sound(variant, layout)
            checked += 1
    assert checked == 480
