"""The streaming backup writer: column types decided before reading, Avro blocks from Arrow.

The oracle for the encoder is fastavro's own per-record encoder (byte for byte) and the
two readers a backup's user has (fastavro and the Apache ``avro`` package); the oracle for
the typing is the whole-column decision :func:`column_type` the writer used before.
"""

from __future__ import annotations

import io
import math
import random
import sqlite3
from pathlib import Path

import avro.datafile
import avro.io
import duckdb
import fastavro
import pyarrow as pa
import pytest

from backups.writer.avro_blocks import ContainerWriter, encode_rows
from backups.writer.column_types import column_type, column_types_of, fits, presumed_types
from consumers import snapshotter
from consumers.replica import Shard, shard_path
from consumers.snapshotter import CutPlan, write_backup
from producers.operations import message_key, partition_for
from schemas.records import Column, ConsistencyMarker, Operation, OpType, TableDefinition

ARROW = {"long": pa.int64(), "double": pa.float64(), "string": pa.string(), "bytes": pa.binary()}
EDGE_INTS = [0, 1, -1, 63, 64, -64, -65, 2**53, -(2**53), 2**53 + 1, 2**63 - 1, -(2**63)]
EDGE_FLOATS = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-308, 5e-324, 1.5, -2.25e300]
EDGE_TEXT = ["", "a", "é", "日本語", "\U0001f600", "nul\x00inside", "x" * 200]
EDGE_BYTES = [b"", b"\x00", b"\xff" * 130, bytes(range(256))]


def _char(rng: random.Random) -> str:
    """A printable ASCII or any non-surrogate code point (surrogates are not UTF-8)."""
    if rng.random() < 0.5:
        return chr(rng.randint(32, 126))
    code = rng.randint(160, 0x10FFFF)
    return chr(code if not 0xD800 <= code <= 0xDFFF else 0xE000)


def random_value(rng: random.Random, avro_type: str):
    if rng.random() < 0.2:
        return None
    if avro_type == "long":
        return rng.choice(EDGE_INTS) if rng.random() < 0.3 else rng.randint(-(2**63), 2**63 - 1)
    if avro_type == "double":
        return rng.choice(EDGE_FLOATS) if rng.random() < 0.3 else rng.uniform(-1e9, 1e9)
    if avro_type == "string":
        if rng.random() < 0.4:
            return rng.choice(EDGE_TEXT)
        return "".join(_char(rng) for _ in range(rng.randint(0, 40)))
    if rng.random() < 0.4:
        return rng.choice(EDGE_BYTES)
    return rng.randbytes(rng.randint(0, 300))


def random_table(rng: random.Random) -> tuple[dict, list[str], list[dict]]:
    types = [rng.choice(list(ARROW)) for _ in range(rng.randint(1, 6))]
    names = [f"c{i}" for i in range(len(types))]
    schema = {
        "type": "record",
        "name": "t",
        "namespace": "io.cutline.backup",
        "fields": [
            {"name": n, "type": ["null", t], "default": None, "cutline.column": f"col {n}"}
            for n, t in zip(names, types, strict=True)
        ],
    }
    records = [
        {n: random_value(rng, t) for n, t in zip(names, types, strict=True)}
        for _ in range(rng.choice([0, 1, 2, rng.randint(3, 400)]))
    ]
    return schema, types, records


def to_batch(types: list[str], names: list[str], records: list[dict]) -> pa.RecordBatch:
    arrays = [
        pa.array([r[n] for r in records], type=ARROW[t]) for n, t in zip(names, types, strict=True)
    ]
    return pa.record_batch(arrays, names=names)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, float) and isinstance(b, float) and a == 0.0:
        return b == 0.0 and math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


def same_records(got: list[dict], want: list[dict]) -> bool:
    return len(got) == len(want) and all(
        g.keys() == w.keys() and all(same(g[k], w[k]) for k in w)
        for g, w in zip(got, want, strict=True)
    )


@pytest.mark.parametrize("seed", range(60))
def test_encoded_rows_are_byte_for_byte_fastavros(seed):
    rng = random.Random(seed)
    schema, types, records = random_table(rng)
    names = [f["name"] for f in schema["fields"]]
    parsed = fastavro.parse_schema(schema)
    want = io.BytesIO()
    for record in records:
        fastavro.schemaless_writer(want, parsed, record)
    assert encode_rows(to_batch(types, names, records), types) == want.getvalue()


def test_a_sliced_batch_with_bytes_under_its_nulls_encodes_only_its_rows():
    array = pa.array(["drop", "keep", None, "me", "tail"]).slice(1, 3)
    got = encode_rows(pa.record_batch([array], names=["s"]), ["string"])
    want = io.BytesIO()
    parsed = fastavro.parse_schema(
        {"type": "record", "name": "t", "fields": [{"name": "s", "type": ["null", "string"]}]}
    )
    for value in ["keep", None, "me"]:
        fastavro.schemaless_writer(want, parsed, {"s": value})
    assert got == want.getvalue()


@pytest.mark.parametrize("codec", ["deflate", "null"])
@pytest.mark.parametrize("seed", range(8))
def test_container_files_read_the_same_with_fastavro_and_apache_avro(seed, codec):
    rng = random.Random(1000 + seed)
    schema, types, records = random_table(rng)
    names = [f["name"] for f in schema["fields"]]
    metadata = {"cutline.source": "shop", "cutline.columns": '["a"]'}
    out = io.BytesIO()
    writer = ContainerWriter(out, schema, codec, metadata)
    cut = rng.randint(0, len(records))  # two blocks (or one, or none)
    writer.write(to_batch(types, names, records[:cut]))
    writer.write(to_batch(types, names, records[cut:]))
    writer.close()

    out.seek(0)
    reader = fastavro.reader(out)
    assert same_records(list(reader), records)
    assert {k: reader.metadata[k] for k in metadata} == metadata
    assert reader.metadata["avro.codec"] == codec
    assert reader.writer_schema["fields"][0]["cutline.column"] == "col c0"

    out.seek(0)
    apache = avro.datafile.DataFileReader(out, avro.io.DatumReader())
    assert same_records(list(apache), records)
    assert apache.get_meta("cutline.source") == b"shop"


def _shards_with(tmp_path: Path, declared: str, values: list, shards: int) -> list:
    tmp_path.mkdir(parents=True, exist_ok=True)
    connections = []
    for s in range(shards):
        conn = sqlite3.connect(tmp_path / f"shard{s}.db")
        conn.execute(f'CREATE TABLE t (v "{declared}")' if declared else "CREATE TABLE t (v)")
        conn.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values[s::shards]])
        conn.commit()
        connections.append(conn)
    return connections


def _random_column(tmp_path, declared: str, seed: int, most_kinds: int):
    """A column ``v`` of up to 30 values of up to ``most_kinds`` storage classes, spread
    over 1-3 shards: (shard connections, the values as stored, its definition)."""
    rng = random.Random(seed)
    pools = {
        "int": [*EDGE_INTS, rng.randint(-(10**6), 10**6)],
        "float": [1.5, -0.25, 1e300, 2.0**60],
        "text": ["a", "", "12", "é"],
        "bytes": [b"", b"\x01"],
        "null": [None],
    }
    kinds = rng.sample(list(pools), rng.randint(1, most_kinds))
    values = [rng.choice(pools[rng.choice(kinds)]) for _ in range(rng.randint(0, 30))]
    connections = _shards_with(tmp_path, declared, values, rng.randint(1, 3))
    stored = [v for conn in connections for (v,) in conn.execute("SELECT v FROM t")]
    definition = TableDefinition("s", "t", "", (Column("v", declared),), ("rowid",))
    return connections, stored, definition


@pytest.mark.parametrize("declared", ["INTEGER", "REAL", "TEXT", "BLOB", "NUMERIC", "", "DATE"])
@pytest.mark.parametrize("seed", range(12))
def test_types_from_the_sql_summary_equal_the_whole_column_decision(tmp_path, declared, seed):
    connections, stored, definition = _random_column(tmp_path, declared, seed, 3)
    assert column_types_of(connections, definition) == [column_type(declared, stored)]


def test_edge_integers_decide_double_or_text_exactly(tmp_path):
    for values, expected in [
        ([2**53, -(2**53), 0.5], "DOUBLE"),
        ([2**53 + 1, 0.5], "VARCHAR"),
        ([-(2**63), 0.5], "VARCHAR"),  # abs() of this would overflow in SQLite
    ]:
        # no declared type, so SQLite stores the integers as integers (REAL would convert)
        connections = _shards_with(tmp_path / f"{values[0]}", "", values, 1)
        definition = TableDefinition("s", "t", "", (Column("v", ""),), ("rowid",))
        assert column_types_of(connections, definition)[0].duckdb == expected


ITEMS = TableDefinition(
    "shop",
    "items",
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, tag, raw BLOB)",
    (
        Column("id", "INTEGER"),
        Column("name", "TEXT"),
        Column("price", "REAL"),
        Column("tag", ""),
        Column("raw", "BLOB"),
    ),
    ("id",),
)


def _item(i: int) -> dict:
    tag = [None, i, f"t{i}", b"\x00" * (i % 3), 2.5][i % 5]  # a mixed column: text fallback
    return {"id": i, "name": f"n{i}é", "price": i / 4, "tag": tag, "raw": bytes([i % 256])}


def _replica(root: Path, rows: int, partitions: int = 3) -> CutPlan:
    m = ConsistencyMarker(
        "shop", 7, 1_764_065_700_000_000, 1, partitions, (0,) * partitions, ("items",)
    )
    by_partition: dict[int, list[Operation]] = {p: [] for p in range(partitions)}
    for i in range(rows):
        op = Operation("shop", i, "items", OpType.INSERT, {"id": i}, None, _item(i), 1)
        by_partition[partition_for(message_key("items", [str(i)]), partitions)].append(op)
    offsets = {}
    for p in range(partitions):
        shard = Shard(shard_path(root, "shop", p), p)
        shard.define(ITEMS)
        shard.begin()
        for op in by_partition[p]:
            shard.apply(op)
        shard.commit(max(0, len(by_partition[p]) - 1))
        offsets[p] = len(by_partition[p])
        shard.reach_marker(m, offsets[p], hold=True)
        shard.close()
    return CutPlan("shop", 7, m.t1_us, partitions, offsets, ("items",))


def _content(backup) -> tuple[list, list]:
    db = duckdb.connect(str(backup.duckdb_path), read_only=True)
    try:
        table = db.execute("SELECT * FROM items").fetchall()
    finally:
        db.close()
    with open(backup.path / backup.manifest["tables"]["items"]["avro"], "rb") as f:
        records = [tuple(r.values()) for r in fastavro.reader(f)]
    return table, records


def test_a_backup_written_in_many_small_batches_equals_one_batch(tmp_path, monkeypatch):
    plan = _replica(tmp_path / "replica", 100)
    one = write_backup(tmp_path / "replica", tmp_path / "one", plan, writer="t")
    monkeypatch.setattr(snapshotter, "BATCH_ROWS", 7)
    seen: list[tuple[str, pa.RecordBatch]] = []
    many = write_backup(
        tmp_path / "replica",
        tmp_path / "many",
        plan,
        writer="t",
        on_batch=lambda table, batch: seen.append((table, batch)),
    )
    table, records = _content(many)
    assert (table, records) == _content(one)
    assert len(table) == 100 and sorted(r[0] for r in table) == list(range(100))
    assert [c["type"] for c in many.manifest["tables"]["items"]["columns"]] == [
        "BIGINT",
        "VARCHAR",
        "DOUBLE",
        "VARCHAR",
        "BLOB",
    ]
    # the observer saw every row written, once, in the written order, in batches of <= 7
    assert {t for t, _ in seen} == {"items"} and all(b.num_rows <= 7 for _, b in seen)
    observed = [tuple(r.values()) for _, b in seen for r in b.to_pylist()]
    assert observed == table


@pytest.mark.parametrize("declared", ["INTEGER", "REAL", "TEXT", "BLOB", "NUMERIC", "", "DATE"])
@pytest.mark.parametrize("seed", range(12))
def test_a_presumed_type_that_every_value_fits_is_the_whole_column_decision(
    tmp_path, declared, seed
):
    """``presumed_types`` + ``fits`` never keep a type the scan would not give."""
    _, stored, definition = _random_column(tmp_path, declared, seed, 2)
    presumed = presumed_types(definition)
    if declared in ("NUMERIC", "", "DATE"):
        assert presumed is None  # their type comes from the data even when it is uniform
        return
    assert presumed is not None
    if fits(presumed[0], stored):
        assert presumed == [column_type(declared, stored)]


def test_a_value_beyond_the_declared_type_starts_the_table_over_with_the_scan(
    tmp_path, monkeypatch
):
    """A full backup that presumed the declared types and met a misfit in its last batch
    equals the backup written with the scanned types from the start."""
    declared = TableDefinition(
        "shop",
        "items",
        "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, raw BLOB)",
        (
            Column("id", "INTEGER"),
            Column("name", "TEXT"),
            Column("price", "REAL"),
            Column("raw", "BLOB"),
        ),
        ("id",),
    )
    monkeypatch.setattr(snapshotter, "BATCH_ROWS", 16)
    # values SQLite keeps as they are in these columns (a REAL column makes 2**53 + 1 a
    # real, a TEXT column makes 7.5 text): none fits the declared type
    misfits = ({"price": "not a number"}, {"raw": "text in a BLOB column"}, {"name": b"\x00"})
    for misfit in (*misfits, {}):
        root = tmp_path / str(len(str(misfit)))
        m = ConsistencyMarker("shop", 7, 1_764_065_700_000_000, 1, 1, (0,), ("items",))
        shard = Shard(shard_path(root / "replica", "shop", 0), 0)
        shard.define(declared)
        shard.begin()
        for i in range(100):
            image = {"id": i, "name": f"n{i}", "price": i / 4, "raw": bytes([i])}
            if i == 95:
                image.update(misfit)
            shard.apply(Operation("shop", i, "items", OpType.INSERT, {"id": i}, None, image, 1))
        shard.commit(99)
        shard.reach_marker(m, 100, hold=True)
        shard.close()
        plan = CutPlan("shop", 7, m.t1_us, 1, {0: 100}, ("items",))
        restarts: list[str] = []
        original = snapshotter._stream_table

        def counted(*args, presumed=False, restarts=restarts, original=original, **kwargs):
            restarts.append("presumed" if presumed else "scanned")
            return original(*args, presumed=presumed, **kwargs)

        monkeypatch.setattr(snapshotter, "_stream_table", counted)
        fast = write_backup(root / "replica", root / "fast", plan, writer="t")
        monkeypatch.setattr(snapshotter, "presumed_types", lambda definition: None)
        scanned = write_backup(root / "replica", root / "scanned", plan, writer="t")
        monkeypatch.undo()
        monkeypatch.setattr(snapshotter, "BATCH_ROWS", 16)
        assert restarts == (
            ["presumed", "scanned", "scanned"] if misfit else ["presumed", "scanned"]
        )
        assert _content(fast) == _content(scanned)
        fast_meta, scanned_meta = (b.manifest["tables"]["items"] for b in (fast, scanned))
        assert fast_meta == scanned_meta


def test_a_full_backup_renewing_its_duckdb_connection_equals_one_that_does_not(
    tmp_path, monkeypatch
):
    """Renewing the connection (to free DuckDB's memory for the rows appended so far)
    every few rows changes nothing in the backup, full or incremental after it."""
    from backups.writer.duckdb_format import DuckDBFile

    plan = _replica(tmp_path / "replica", 100)
    once = write_backup(tmp_path / "replica", tmp_path / "once", plan, writer="t")
    renewed: list[int] = []
    original = DuckDBFile.renew

    def counted(self):
        renewed.append(1)
        return original(self)

    monkeypatch.setattr(snapshotter, "BATCH_ROWS", 7)
    monkeypatch.setattr(DuckDBFile, "RENEW_ROWS", 20)
    monkeypatch.setattr(DuckDBFile, "renew", counted)
    often = write_backup(tmp_path / "replica", tmp_path / "often", plan, writer="t")
    assert len(renewed) >= 3  # after every 20 rows or so, in batches of at most 7
    assert _content(often) == _content(once)
    assert often.manifest["tables"] == once.manifest["tables"]
