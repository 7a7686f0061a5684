"""Incremental backups: the size of an incremental against a full backup of the same table.

Shards of an ``accounts`` table are built directly and held at marker 1 (as in
``bench.backup_bench``); a full backup is written. Then a fraction of the rows changes
(mostly updates, some deletes and inserts), the shards are held at marker 2, and the
next backup, with ``full_every=2``, is an incremental. The incremental is resolved
through its chain and checked against the expected rows, so the saving is never bought
with a wrong answer.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import duckdb

from backups.chain import resolved_database
from bench.backup_bench import MARKER_ID, build_held_shards, directory_bytes
from bench.common import PARTITIONS, TABLE, BenchError, Row, account_rows, log, timed
from consumers.replica import Shard, shard_path
from consumers.snapshotter import CutPlan, write_backup
from producers.operations import message_key, partition_for
from schemas.records import ConsistencyMarker

FULL_EVERY = 2  # marker 1 full, marker 2 incremental


def change_rows(
    replica_dir: Path, source: str, rows: list[Row], fraction: float, plan: CutPlan
) -> tuple[CutPlan, dict[str, int]]:
    """Change ``fraction`` of ``rows`` in the held shards; hold them at the next marker."""
    rng = random.Random(13)
    touched = rng.sample(range(len(rows)), max(1, int(len(rows) * fraction)))
    deletes = touched[: len(touched) // 10]
    updates = touched[len(touched) // 10 :]
    inserts = [
        (len(rows) + i + 1, f"owner-new-{i:07d}", float(i)) for i in range(len(touched) // 10)
    ]
    by_partition: dict[int, list[tuple[str, tuple]]] = {p: [] for p in range(PARTITIONS)}

    def route(row_id: int) -> int:
        return partition_for(message_key(TABLE, [str(row_id)]), PARTITIONS)

    for i in updates:
        row_id = rows[i][0]
        by_partition[route(row_id)].append(
            (f"UPDATE {TABLE} SET balance = balance + 1 WHERE id = ?", (row_id,))
        )
    for i in deletes:
        row_id = rows[i][0]
        by_partition[route(row_id)].append((f"DELETE FROM {TABLE} WHERE id = ?", (row_id,)))
    for row in inserts:
        by_partition[route(row[0])].append((f"INSERT INTO {TABLE} VALUES (?, ?, ?)", row))
    marker = ConsistencyMarker(
        source=source,
        marker_id=MARKER_ID + 1,
        t1_us=time.time_ns() // 1000,
        seq=len(rows) + len(touched),
        partitions=PARTITIONS,
        counts=tuple(len(by_partition[p]) for p in range(PARTITIONS)),
        tables=(TABLE,),
    )
    offsets: dict[int, int] = {}
    for p in range(PARTITIONS):
        shard = Shard(shard_path(replica_dir, source, p), p)
        try:
            shard.release()
            shard.begin()
            for sql, params in by_partition[p]:
                shard.conn.execute(sql, params)
            offsets[p] = plan.offsets[p] + len(by_partition[p]) + 1
            shard.commit(offsets[p] - 1)
            shard.reach_marker(marker, offsets[p], hold=True)
        finally:
            shard.close()
    counts = {"updated": len(updates), "deleted": len(deletes), "inserted": len(inserts)}
    next_plan = CutPlan(source, marker.marker_id, marker.t1_us, PARTITIONS, offsets, (TABLE,))
    return next_plan, counts


def incremental_phase(
    workdir: Path, source: str, count: int, changed_fraction: float = 0.01
) -> dict[str, Any]:
    """Full backup of ``count`` rows, change ``changed_fraction`` of them, incremental."""
    rows = account_rows(count, seed=17)
    replica_dir, backups_dir = workdir / "incremental-replica", workdir / "incremental-out"
    plan = build_held_shards(replica_dir, source, rows)
    log(f"incremental: {count} rows, full backup of marker {plan.marker_id}")
    with timed() as full_t:
        full = write_backup(replica_dir, backups_dir, plan, writer="bench", full_every=FULL_EVERY)
    next_plan, counts = change_rows(replica_dir, source, rows, changed_fraction, plan)
    log(f"incremental: changed {counts}, incremental backup of marker {next_plan.marker_id}")
    with timed() as inc_t:
        incremental = write_backup(
            replica_dir, backups_dir, next_plan, writer="bench", full_every=FULL_EVERY
        )
    if full.kind != "full" or incremental.kind != "incremental":
        raise BenchError(
            f"incremental: expected a full then an incremental, got {full.kind} then "
            f"{incremental.kind} ({incremental.manifest.get('kind_reason')})"
        )
    expected = count - counts["deleted"] + counts["inserted"]
    with resolved_database(incremental) as path:
        db = duckdb.connect(str(path), read_only=True)
        try:
            resolved = db.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0][0]
        finally:
            db.close()
    if resolved != expected or incremental.tables[TABLE]["rows"] != expected:
        raise BenchError(f"incremental: resolves to {resolved} rows, expected {expected}")
    full_bytes = directory_bytes(full.path)
    incremental_bytes = directory_bytes(incremental.path)
    log(
        f"incremental: full {full_bytes} bytes in {full_t.elapsed:.2f} s, incremental "
        f"{incremental_bytes} bytes in {inc_t.elapsed:.2f} s"
    )
    info = incremental.tables[TABLE]
    return {
        "rows": count,
        "changed_fraction": changed_fraction,
        "changes": counts,
        "incremental_changed_rows": info["changed"],
        "incremental_deleted_keys": info["deleted"],
        "full_bytes": full_bytes,
        "incremental_bytes": incremental_bytes,
        "ratio": round(incremental_bytes / full_bytes, 4),
        "full_s": round(full_t.elapsed, 3),
        "incremental_s": round(inc_t.elapsed, 3),
    }


def main() -> None:  # python -m bench.incremental_bench: this phase alone, no Kafka
    import json
    import sys
    import tempfile

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory(prefix="cutline-incremental-") as workdir:
        print(json.dumps(incremental_phase(Path(workdir), "bench-incremental", count), indent=2))


if __name__ == "__main__":
    main()
