"""Runs of Operations decoded as columns: every value a run gives is what ``decode`` gives.

Soundness: each record a run takes decodes (one at a time, ``schemas.codec.decode``) to an
Operation of the run's layout with the very same key and after values. Completeness:
records in the encoder's own form of that layout are all taken; a record of any other form
ends the run.
"""

from __future__ import annotations

import random

from schemas.codec import OPERATION_HEADER, decode, encode
from schemas.operation_runs import Run, RunLayout, decode_run
from schemas.records import Operation, OpType
from tests.unit.test_operation_decoder import _comparable, _value


def _layout(rng: random.Random) -> RunLayout:
    names = [
        rng.choice(["id", "c", "ünï", "x" * 70, "😀"]) + str(i)
        for i in range(rng.choice([0, 1, 5, 63, 64, 100]))
    ]
    keys = rng.choice([[], names[:1], names[:2], ["k"]])
    return RunLayout(
        rng.choice(["default", "shöp", "s" * 100, ""]),
        rng.choice(["accounts", 'x"; DROP TABLE y; --', "t" * 64, "ταβ"]),
        rng.choice(list(OpType)),
        tuple(keys),
        rng.choice([None, (), tuple(names)]),
        rng.choice([None, (), tuple(names)]),
    )


def _operation(rng: random.Random, layout: RunLayout, same_kind: bool = False) -> Operation:
    """An Operation of ``layout``; ``same_kind``: each column keeps one storage class."""

    def image(names):
        if names is None:
            return None
        if same_kind:
            return {n: (i * 7919 + rng.getrandbits(40)) for i, n in enumerate(names)}
        return {n: _value(rng) for n in names}

    return Operation(
        layout.source,
        rng.choice([0, 1, 2**63 - 1, rng.getrandbits(rng.choice([3, 20, 62]))]),
        layout.table,
        layout.op,
        image(layout.key_names),
        image(layout.before_names),
        image(layout.after_names),
        rng.choice([0, -1, -(2**63), rng.getrandbits(52)]),
    )


def assert_sound(values: list[bytes], layout: RunLayout) -> Run:
    run = decode_run(values, layout, OPERATION_HEADER)
    assert set(run.key) == set(layout.key_names)
    assert set(run.after) == set(layout.after_names or ())
    for column in [*run.key.values(), *run.after.values()]:
        assert len(column) == run.count
    for i in range(run.count):
        record = decode(values[i])
        assert type(record) is Operation and RunLayout.of(record) == layout, i
        key = {name: run.key[name][i] for name in layout.key_names}
        assert _comparable(key) == _comparable(record.key), i
        after = {name: run.after[name][i] for name in layout.after_names or ()}
        assert _comparable(after) == _comparable(record.after or {}), i
    return run


def test_records_of_one_layout_decode_like_decode_one_by_one():
    rng = random.Random(3)
    for _ in range(60):
        layout = _layout(rng)
        values = [encode(_operation(rng, layout)) for _ in range(rng.choice([1, 2, 17, 300]))]
        run = assert_sound(values, layout)
        assert run.count == len(values)


def test_columns_of_one_kind_take_the_whole_column_path():
    rng = random.Random(4)
    names = tuple(f"a{i}" for i in range(5))
    layout = RunLayout("shop", "t", OpType.UPDATE, ("a0",), names, names)
    values = [encode(_operation(rng, layout, same_kind=True)) for _ in range(500)]
    assert assert_sound(values, layout).count == 500


def test_a_record_of_another_form_ends_the_run_there():
    rng = random.Random(5)
    layout = RunLayout("shop", "accounts", OpType.INSERT, ("id",), None, ("id", "name", "balance"))

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
    layout = RunLayout("s", "t", OpType.INSERT, ("k",), None, ("k", "v"))
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
    assert run.after["v"] == extremes


def test_corrupted_records_are_never_taken_with_other_values():
    """Flipped, inserted and dropped bytes anywhere: whatever the run still takes is what
    ``decode`` reads from the same bytes."""
    rng = random.Random(12)
    checked = 0
    for _ in range(40):
        layout = _layout(rng)
        values = [encode(_operation(rng, layout)) for _ in range(8)]
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


def test_a_tenth_varint_byte_beyond_64_bits_ends_the_run():
    """A seq whose tenth byte carries more than the 64th bit is over 64 bits: the run
    must end there even when the bytes after it happen to read as the table's name."""
    layout = RunLayout("s", "t", OpType.INSERT, ("k",), None, ("k",))
    values = [
        encode(Operation("s", -(2**63), "t", OpType.INSERT, {"k": i}, None, {"k": i}, 0))
        for i in range(40)
    ]
    seq = b"\xff" * 9 + b"\x01"  # zig-zag of -(2**63): ten bytes, the last one bit
    assert seq + b"\x02t" in values[20]
    # the tenth byte 0x02 (bit 64 set), then the table name without its length byte: read
    # as a 64-bit seq the tenth byte would look like the name's length
    values[20] = values[20].replace(seq + b"\x02t", b"\xff" * 9 + b"\x02" + b"t")
    run = assert_sound(values, layout)
    assert run.count == 20
