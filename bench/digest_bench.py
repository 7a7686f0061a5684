"""The digest's cost: rows/s on the primary side and on the replica side, by table size.

Primary side: ``digest_table`` over one table in a read transaction (what the pinned
snapshot does after each marker; writers are not blocked meanwhile). Replica side: the
snapshotter reads every shard's rows anyway; the digest adds hashing them, so both the
read alone and read + digest are timed over the same held shards.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from bench.backup_bench import build_held_shards
from bench.common import DDL, TABLE, BenchError, account_rows, log, per_second, timed
from consumers.replica import iter_rows, open_readonly, shard_path
from producers.digest import DigestAccumulator, digest_table

SIZES_FULL = (10_000, 100_000, 1_000_000)
SIZES_QUICK = (10_000, 100_000)


def _primary(path: Path, rows: list) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(DDL)
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?)", rows)
    conn.execute("COMMIT")
    return conn


def _replica_pass(replica_dir: Path, source: str, partitions: int, digest: bool) -> tuple[int, Any]:
    acc = DigestAccumulator()
    count = 0
    for p in range(partitions):
        conn = open_readonly(shard_path(replica_dir, source, p))
        try:
            conn.execute("BEGIN")
            for chunk in iter_rows(conn, TABLE, ("id", "owner", "balance")):
                count += len(chunk)
                if digest:
                    acc.add(chunk)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    return count, acc.result(TABLE)


def digest_phase(workdir: Path, source: str, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per size: primary and replica digest rows/s; both sides must agree."""
    out = []
    for size in sizes:
        rows = account_rows(size, seed=3)
        where = workdir / f"digest-{size}"
        where.mkdir()
        conn = _primary(where / "primary.sqlite", rows)
        try:
            conn.execute("BEGIN")
            with timed() as primary_t:
                on_primary = digest_table(conn, TABLE)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        plan = build_held_shards(where / "replica", source, rows)
        with timed() as read_t:
            _replica_pass(where / "replica", source, plan.partitions, digest=False)
        with timed() as replica_t:
            count, on_replica = _replica_pass(where / "replica", source, plan.partitions, True)
        if count != size or on_replica != on_primary:
            raise BenchError(
                f"digest: {size} rows, the replica's digest differs from the primary's"
            )
        hashing_s = max(1e-9, replica_t.elapsed - read_t.elapsed)
        log(
            f"digest: {size} rows, primary {primary_t.elapsed:.2f} s, replica read "
            f"{read_t.elapsed:.2f} s + digest {hashing_s:.2f} s"
        )
        out.append(
            {
                "rows": size,
                "primary_rows_per_s": per_second(size, primary_t.elapsed),
                "primary_s": round(primary_t.elapsed, 3),
                "replica_rows_per_s": per_second(size, replica_t.elapsed),
                "replica_read_only_s": round(read_t.elapsed, 3),
                "replica_read_and_digest_s": round(replica_t.elapsed, 3),
                "replica_digest_added_s": round(hashing_s, 3),
            }
        )
    return out
