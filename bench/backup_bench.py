"""Backup write speed: ``write_backup`` over held shards vs DuckDB loading an Arrow table.

The shards are built directly (``Shard`` + ``reach_marker(hold=True)``), so the size of the
backup does not depend on how long replication ran. The baseline is the least work that
yields a DuckDB file with the same rows: Python tuples to a pyarrow Table, then
``CREATE TABLE AS SELECT`` into a fresh file. cutline additionally reads the shards,
infers column types, writes an Avro file, hashes everything and fsyncs before publishing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from bench.common import (
    DDL,
    PARTITIONS,
    TABLE,
    BenchError,
    Row,
    account_rows,
    log,
    per_second,
    ratio,
    timed,
)
from consumers.replica import Shard, shard_path
from consumers.snapshotter import CutPlan, write_backup
from producers.operations import message_key, partition_for
from schemas.records import Column, ConsistencyMarker, TableDefinition

MARKER_ID = 1


def build_held_shards(replica_dir: Path, source: str, rows: list[Row]) -> CutPlan:
    """Shards holding ``rows`` (split by capture's own key hashing), held at one marker."""
    definition = TableDefinition(
        source=source,
        table=TABLE,
        ddl=DDL,
        columns=(Column("id", "INTEGER"), Column("owner", "TEXT"), Column("balance", "REAL")),
        key_columns=("id",),
    )
    split: list[list[Row]] = [[] for _ in range(PARTITIONS)]
    for row in rows:
        split[partition_for(message_key(TABLE, [str(row[0])]), PARTITIONS)].append(row)
    counts = tuple(len(part) for part in split)
    marker = ConsistencyMarker(
        source=source,
        marker_id=MARKER_ID,
        t1_us=time.time_ns() // 1000,
        seq=len(rows),
        partitions=PARTITIONS,
        counts=counts,
        tables=(TABLE,),
    )
    offsets: dict[int, int] = {}
    for p, part in enumerate(split):
        shard = Shard(shard_path(replica_dir, source, p), p)
        try:
            shard.begin()
            shard.define(definition)
            shard.conn.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?)", part)
            offsets[p] = len(part) + 1  # definition + rows, then the marker
            shard.commit(offsets[p] - 1)
            shard.reach_marker(marker, offsets[p], hold=True)
        finally:
            shard.close()
    return CutPlan(source, MARKER_ID, marker.t1_us, PARTITIONS, offsets, (TABLE,))


def duckdb_from_arrow(rows: list[Row], path: Path) -> float:
    """Seconds to turn ``rows`` into an Arrow table and load it into a new DuckDB file."""
    with timed() as t:
        ids, owners, balances = zip(*rows, strict=True)
        table = pa.Table.from_arrays(
            [
                pa.array(ids, type=pa.int64()),
                pa.array(owners, type=pa.string()),
                pa.array(balances, type=pa.float64()),
            ],
            names=["id", "owner", "balance"],
        )
        db = duckdb.connect(str(path))
        try:
            db.register("arrow_table", table)
            db.execute(f"CREATE TABLE {TABLE} AS SELECT * FROM arrow_table")
            db.execute("CHECKPOINT")
        finally:
            db.close()
    return t.elapsed


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def backup_phase(workdir: Path, source: str, count: int) -> dict[str, Any]:
    """Measure both writers on the same ``count`` rows; check the backup holds them all."""
    rows = account_rows(count, seed=5)
    replica_dir, backups_dir = workdir / "backup-replica", workdir / "backup-out"
    plan = build_held_shards(replica_dir, source, rows)
    log(f"backup: {count} rows in {PARTITIONS} held shards, writing the backup")
    with timed() as t:
        backup = write_backup(replica_dir, backups_dir, plan, writer="bench")
    written = backup.tables[TABLE]["rows"]
    if written != count:
        raise BenchError(f"backup: wrote {written} rows, the shards hold {count}")
    baseline_path = workdir / "baseline.duckdb"
    baseline_s = duckdb_from_arrow(rows, baseline_path)
    cutline = per_second(count, t.elapsed)
    baseline = per_second(count, baseline_s)
    log(f"backup: cutline {t.elapsed:.2f} s, DuckDB from Arrow {baseline_s:.2f} s")
    files = {f["path"]: f["bytes"] for f in backup.manifest["files"]}
    return {
        "rows": count,
        "cutline_rows_per_s": cutline,
        "duckdb_from_arrow_rows_per_s": baseline,
        "ratio": ratio(cutline, baseline),
        "bytes": directory_bytes(backup.path),
        "files_bytes": files,
        "duckdb_from_arrow_bytes": baseline_path.stat().st_size,
        "cutline_s": round(t.elapsed, 3),
        "duckdb_from_arrow_s": round(baseline_s, 3),
    }
