"""The apply step replicate and replay share, on a real shard, without a broker."""

from __future__ import annotations

from operator import itemgetter

from consumers.apply_path import Applied, apply_records
from consumers.replica import Shard, iter_rows, open_readonly, shard_path
from schemas.codec import encode
from schemas.records import Column, ConsistencyMarker, Operation, OpType, TableDefinition

SOURCE = "shop"
ACCOUNTS = TableDefinition(
    SOURCE,
    "accounts",
    "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER)",
    (Column("id", "INTEGER"), Column("balance", "INTEGER")),
    ("id",),
)


def _op(account: int, balance: int, kind: OpType = OpType.INSERT, source: str = SOURCE) -> bytes:
    image = {"id": account, "balance": balance}
    return encode(Operation(source, 1, "accounts", kind, {"id": account}, None, image, 1))


def _marker(marker_id: int, count: int) -> bytes:
    return encode(ConsistencyMarker(SOURCE, marker_id, 1_000 + marker_id, 1, 1, (count,), ()))


def _run(shard: Shard, values: list[bytes], done_up_to: int = -1):
    rejected: list[tuple[int, str]] = []
    records = list(enumerate(values))
    shard.begin()
    result: Applied = apply_records(
        shard,
        SOURCE,
        records,
        offset_of=itemgetter(0),
        value_of=itemgetter(1),
        done_up_to=done_up_to,
        reject=lambda item, reason: rejected.append((item[0], reason)),
    )
    if result.last is not None:
        shard.commit(result.last)
    else:
        shard.rollback()
    return result, rejected


def _balances(shard_file) -> list[tuple]:
    conn = open_readonly(shard_file)
    try:
        chunks = iter_rows(conn, "accounts", ("id", "balance"))
        return sorted(row for rows in chunks for row in rows)
    finally:
        conn.close()


def test_records_apply_in_order_bad_ones_are_rejected_and_the_run_stops_at_a_marker(tmp_path):
    path = shard_path(tmp_path, SOURCE, 0)
    shard = Shard(path, 0)
    values = [
        encode(ACCOUNTS),  # 0
        _op(1, 10),  # 1
        b"not avro at all",  # 2: cannot be decoded
        _op(2, 20, source="elsewhere"),  # 3: another source's record
        _op(3, 30),  # 4
        _op(9, 90, OpType.UPDATE),  # 5: updates a row that is not there
        _marker(1, 2),  # 6
        _op(4, 40),  # 7: after the marker, not looked at
    ]
    result, rejected = _run(shard, values)
    assert (result.applied, result.rejected, result.last) == (2, 3, 5)
    assert result.marker is not None and result.marker.marker_id == 1
    assert result.marker_offset == 6
    assert list(result.rest) == [(7, values[7])]
    assert [offset for offset, _ in rejected] == [2, 3, 5]
    assert "of source 'elsewhere'" in rejected[1][1]
    assert rejected[2][1].startswith("cannot apply operation")
    shard.close()
    assert _balances(path) == [(1, 10), (3, 30)]


def test_redelivered_records_are_passed_over_and_a_stale_marker_is_set_aside(tmp_path):
    path = shard_path(tmp_path, SOURCE, 0)
    shard = Shard(path, 0)
    first = [encode(ACCOUNTS), _op(1, 10), _marker(1, 1)]
    result, _ = _run(shard, first)
    assert result.marker is not None
    shard.reach_marker(result.marker, result.marker_offset, hold=False)
    # the same history again (a redelivery), then a duplicate of marker 1 and a new row
    again = [*first, _marker(1, 1), _op(2, 20)]
    result, rejected = _run(shard, again, done_up_to=2)
    assert result.marker is None and result.applied == 1 and result.last == 4
    assert [offset for offset, _ in rejected] == [3]
    assert "duplicated marker id 1" in rejected[0][1]
    shard.close()
    assert _balances(path) == [(1, 10), (2, 20)]


def _mixed_stream(rng) -> list[bytes]:
    """Long runs of INSERTs, UPDATEs and DELETEs with every kind of trouble inside them: a
    duplicate key, a change of a key that is not there, a record of another source, bytes
    that are no record, an image that lacks a column, then a marker."""
    values = [encode(ACCOUNTS)]
    present: list[int] = []
    next_id = 1
    for _ in range(16):
        kind = rng.choice([OpType.INSERT, OpType.INSERT, OpType.UPDATE, OpType.DELETE])
        length = rng.choice([1, 15, 16, 40, 300])
        failing = rng.randrange(length) if rng.random() < 0.5 else -1
        for at in range(length):
            if at == failing and present:  # one that fails inside a run of its own kind
                missing = next_id + 10_000 if kind is not OpType.INSERT else present[0]
                values.append(_op(missing, 1, kind))
            if kind is OpType.INSERT or not present:
                values.append(_op(next_id, rng.randrange(1000)))
                present.append(next_id)
                next_id += 1
            elif kind is OpType.UPDATE:
                values.append(_op(rng.choice(present), rng.randrange(1000), OpType.UPDATE))
            else:
                gone = present.pop(rng.randrange(len(present)))
                values.append(_op(gone, 0, OpType.DELETE))
        trouble = rng.randrange(7)
        if trouble == 0:
            values.append(_op(rng.randrange(1, next_id), 5))  # a key maybe already there
        elif trouble == 1:
            values.append(_op(next_id, 5, source="elsewhere"))
        elif trouble == 2:
            values.append(b"\xc3\x01 not a record")
        elif trouble == 3:
            values.append(_op(next_id + 10_000, 7, rng.choice([OpType.UPDATE, OpType.DELETE])))
        elif trouble == 4:
            image = {"id": next_id, "balance": "text where an integer goes"}
            values.append(
                encode(Operation(SOURCE, 1, "accounts", OpType.INSERT, {"id": 1}, None, image, 1))
            )
            next_id += 1
        elif trouble == 5:
            kind = rng.choice(list(OpType))
            values.append(  # lacks a column
                encode(Operation(SOURCE, 1, "accounts", kind, {"id": 1}, None, {"id": next_id}, 1))
            )
            next_id += 1
        else:  # an UPDATE without an after image
            values.append(
                encode(Operation(SOURCE, 1, "accounts", OpType.UPDATE, {"id": 1}, None, None, 1))
            )
    values.append(_marker(1, len(values)))
    return values


def test_runs_of_operations_apply_exactly_as_one_by_one(tmp_path, monkeypatch):
    """The column path (``schemas.operation_runs``) leaves the same shard and sets aside
    the same records with the same reasons as applying every record on its own."""
    import random

    from consumers import apply_path

    taken: list[int] = []
    original = Shard.apply_run

    def counted(self, layout, run):
        applied = original(self, layout, run)
        taken.append((layout.op, run.count if applied else 0))
        return applied

    monkeypatch.setattr(Shard, "apply_run", counted)
    default = apply_path.MIN_RUN
    for seed in range(6):
        values = _mixed_stream(random.Random(seed))
        outcomes = []
        for min_run in (default, len(values) + 1):  # with runs, then without
            monkeypatch.setattr(apply_path, "MIN_RUN", min_run)
            path = shard_path(tmp_path / f"{seed}-{min_run}", SOURCE, 0)
            result, rejected = _run(Shard(path, 0), values)
            outcomes.append(
                (
                    result.applied,
                    result.rejected,
                    result.last,
                    rejected,
                    result.marker_offset,
                    _balances(path),
                )
            )
        assert outcomes[0] == outcomes[1]
    for kind in OpType:
        assert sum(n for k, n in taken if k is kind) > 300, f"no {kind} run was taken"
        assert (kind, 0) in taken, f"no {kind} run failed and went one by one"


def test_changes_without_a_row_image_are_rejected_in_runs_and_groups_too(tmp_path):
    """An UPDATE without an after image is set aside one by one (``Shard.apply``); on a
    table of key columns only, the bulk paths would not notice the missing image, so they
    must refuse it themselves."""
    tags = TableDefinition(
        SOURCE,
        "tags",
        "CREATE TABLE tags(name TEXT PRIMARY KEY)",
        (Column("name", "TEXT"),),
        ("name",),
    )

    def change(i: int, kind: OpType, after: bool) -> bytes:
        image = {"name": f"t{i}"}
        return encode(Operation(SOURCE, i, "tags", kind, image, image, image if after else None, 1))

    for updates in (5, 15, 40):  # one by one, a bulk group, a run
        values = [encode(tags)] + [change(i, OpType.INSERT, True) for i in range(40)]
        values += [change(i, OpType.UPDATE, True) for i in range(2)]  # caches the group's plan
        values += [change(i, OpType.UPDATE, False) for i in range(updates)]
        result, rejected = _run(Shard(shard_path(tmp_path / str(updates), SOURCE, 0), 0), values)
        assert (result.applied, result.rejected) == (42, updates)
        assert all("without a row image" in reason for _, reason in rejected)
