"""What each part of capture's UPDATE trigger costs the primary: ``python -m bench.trigger_parts``.

The scale table (``bench.scale``) in one SQLite file per variant; each variant replaces
cutline's triggers with one AFTER UPDATE trigger doing part of the work (an empty body;
the change-log insert with no images; with JSON images, guarded or not; with the earlier
literal images), next to no triggers and cutline's triggers as installed. Each run is
``--writes`` single-row UPDATE statements in one transaction (``executemany``, so Python's
per-call cost stays small next to SQLite's); variants alternate, and the best run's CPU
time per update is printed, with its ratio to no triggers, as one JSON document.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.scale import SCALE_TABLE, build_scale_primary
from producers.row_images import json_image_sql
from producers.sqlite_changelog import (
    CHANGES,
    connect,
    install,
    literal_image_sql,
    quote_identifier,
)
from producers.triggers import trigger_names
from schemas.records import TableDefinition

ROWS = 20_000
_NOW_US = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
_LOG = f"INSERT INTO {CHANGES}(kind, tbl, before, after, at_us)"


def _plain_json(d: TableDefinition, alias: str) -> str:
    """JSON images without the REAL/BLOB guards (inexact: for the cost only)."""
    values = ", ".join(f"{alias}.{quote_identifier(c)}" for c in d.column_names)
    return f"json_array({values})"


def _logged(image: Callable[[TableDefinition, str], str]) -> Callable[[TableDefinition], str]:
    return lambda d: f"{_LOG} VALUES ('U', 't', {image(d, 'OLD')}, {image(d, 'NEW')}, {_NOW_US});"


BODIES: dict[str, Callable[[TableDefinition], str] | None] = {
    "empty_trigger": lambda d: "SELECT 1;",
    "log_without_images": lambda d: f"{_LOG} VALUES ('U', 't', NULL, NULL, {_NOW_US});",
    "log_json_unguarded": _logged(_plain_json),
    "log_json_images": _logged(lambda d, a: json_image_sql(d, a) or "NULL"),
    "log_literal_images": _logged(literal_image_sql),
}
VARIANTS = ["no_triggers", *BODIES, "cutline"]


def _prepare(path: Path, variant: str) -> None:
    build_scale_primary(path, ROWS)
    if variant == "no_triggers":
        return
    conn = connect(path)
    try:
        (definition,) = install(conn, "bench-trigger-parts", [SCALE_TABLE])
        body = BODIES.get(variant)
        if body is not None:
            for name in trigger_names(SCALE_TABLE):
                conn.execute(f"DROP TRIGGER {quote_identifier(name)}")
            conn.execute(
                f"CREATE TRIGGER bench_part AFTER UPDATE ON {SCALE_TABLE} "
                f"BEGIN {body(definition)} END"
            )
    finally:
        conn.close()


def _cpu_seconds(path: Path, writes: int, seed: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = NORMAL")
        rng = random.Random(seed)
        params = [(rng.randrange(1 << 40), rng.randint(1, ROWS)) for _ in range(writes)]
        sql = f"UPDATE {SCALE_TABLE} SET balance = balance + 1, updated_us = ? WHERE id = ?"
        start = time.process_time()
        conn.execute("BEGIN")
        conn.executemany(sql, params)
        conn.execute("COMMIT")
        return time.process_time() - start
    finally:
        conn.close()


def measure(writes: int, runs: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = {v: Path(tmp) / f"{v}.sqlite" for v in VARIANTS}
        for variant, path in paths.items():
            _prepare(path, variant)
        best = {v: float("inf") for v in VARIANTS}
        for run in range(runs):
            for variant, path in paths.items():
                best[variant] = min(best[variant], _cpu_seconds(path, writes, run))
    bare = best["no_triggers"]
    return {
        v: {"us_per_update": round(s / writes * 1e6, 2), "ratio_to_no_triggers": round(bare / s, 3)}
        for v, s in best.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=20_000, help="updates per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per variant (best kept)")
    args = parser.parse_args()
    print(json.dumps(measure(args.writes, args.runs), indent=2))


if __name__ == "__main__":
    main()
