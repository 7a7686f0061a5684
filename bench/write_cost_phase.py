"""What capture costs the primary's own writes: throughput with capture installed ÷ without.

Two SQLite files with the same table and rows (WAL, ``synchronous = NORMAL``, as a busy
application runs it): one bare, one with cutline's capture installed. The application
updates rows by primary key, 1 or 100 updates per transaction. Runs alternate bare and
captured, so load from other work on a shared machine falls on both alike; the ratio is
taken per run and the median reported. Rates are per second of the writer's own CPU time
(what a write costs, which other processes do not inflate) and, beside them, of wall time.
No capture process drains the change log here: the primary pays for the triggers only.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import log
from bench.scale import SCALE_TABLE, build_scale_primary
from producers.sqlite_changelog import connect, install

ROWS = 20_000


def _updates(path: Path, per_txn: int, writes: int, seed: int) -> tuple[float, float]:
    """CPU and wall seconds for ``writes`` updates by key, ``per_txn`` per transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = NORMAL")
        rng = random.Random(seed)
        sql = f"UPDATE {SCALE_TABLE} SET balance = balance + 1, updated_us = ? WHERE id = ?"
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(writes // per_txn):
            conn.execute("BEGIN")
            for _ in range(per_txn):
                conn.execute(sql, (rng.randrange(1 << 40), rng.randint(1, ROWS)))
            conn.execute("COMMIT")
        return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        conn.close()


def write_cost_phase(workdir: Path, writes: int, runs: int) -> dict[str, Any]:
    """Median over ``runs`` of captured ÷ bare update throughput, at 1 and 100 per txn."""
    workdir.mkdir(parents=True, exist_ok=True)
    bare, captured = workdir / "bare.sqlite", workdir / "captured.sqlite"
    for path in (bare, captured):
        build_scale_primary(path, ROWS)
    conn = connect(captured)
    try:
        install(conn, "bench-write-cost", [SCALE_TABLE])
    finally:
        conn.close()
    out: dict[str, Any] = {"rows": ROWS, "writes_per_run": writes, "runs": runs}
    for per_txn in (1, 100):
        rates: dict[str, list[float]] = {"bare_cpu": [], "capture_cpu": [], "bare_wall": []}
        rates["capture_wall"] = []
        cpu_ratios, wall_ratios = [], []
        for run in range(runs):
            bare_cpu, bare_wall = _updates(bare, per_txn, writes, seed=run)
            cap_cpu, cap_wall = _updates(captured, per_txn, writes, seed=run)
            rates["bare_cpu"].append(writes / bare_cpu)
            rates["capture_cpu"].append(writes / cap_cpu)
            rates["bare_wall"].append(writes / bare_wall)
            rates["capture_wall"].append(writes / cap_wall)
            cpu_ratios.append(bare_cpu / cap_cpu)
            wall_ratios.append(bare_wall / cap_wall)
        key = f"updates_x{per_txn}_per_txn"
        out[key] = {
            "updates_per_txn": per_txn,
            **{f"{k}_per_s": round(statistics.median(v)) for k, v in rates.items()},
            "ratio_cpu": round(statistics.median(cpu_ratios), 3),
            "ratio_wall": round(statistics.median(wall_ratios), 3),
            "ratio_cpu_runs": [round(r, 3) for r in cpu_ratios],
        }
        log(
            f"write cost x{per_txn}/txn: capture ÷ bare {out[key]['ratio_cpu']} (CPU), "
            f"{out[key]['ratio_wall']} (wall)"
        )
    return out
