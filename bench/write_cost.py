"""What capture's triggers cost the primary's own writes: ``python -m bench.write_cost``.

The application's write throughput on one SQLite file (WAL, synchronous=NORMAL, as a busy
application runs it) with no triggers, with only the AFTER triggers that log each change
(capture before REPLACE was handled), and with cutline's triggers as installed now (which
also stage the rows a REPLACE removes). Updates by primary key and inserts, 1 and 100
per transaction, on a table keyed by its primary key only and on one with a UNIQUE
column. Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from producers.sqlite_changelog import CHANGES, connect, image_sql, install, quote_identifier
from producers.triggers import trigger_names

ROWS = 20_000
TABLES = {
    "pk_only": "CREATE TABLE t (id INTEGER PRIMARY KEY, owner TEXT, balance INT, rate REAL)",
    "with_unique": "CREATE TABLE t (id INTEGER PRIMARY KEY, owner TEXT UNIQUE, balance INT, "
    "rate REAL)",
}


def _primary(path: Path, ddl: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(ddl)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?)", [(i, f"owner-{i}", 1000, i / 7) for i in range(ROWS)]
    )
    conn.execute("COMMIT")
    conn.close()


def _after_only(path: Path) -> None:
    """Capture as it was before REPLACE was handled: three AFTER triggers, no staging."""
    capture = connect(path)
    (definition,) = install(capture, "bench", ["t"])
    for name in trigger_names("t"):
        capture.execute(f"DROP TRIGGER {quote_identifier(name)}")
    new, old = image_sql(definition, "NEW"), image_sql(definition, "OLD")
    log = f"INSERT INTO {CHANGES}(kind, tbl, before, after, at_us)"
    for kind, event, images in (
        ("I", "INSERT", f"NULL, {new}"),
        ("U", "UPDATE", f"{old}, {new}"),
        ("D", "DELETE", f"{old}, NULL"),
    ):
        capture.execute(
            f"CREATE TRIGGER old_{kind} AFTER {event} ON t BEGIN "
            f"{log} VALUES ('{kind}', 't', {images}, 0); END"
        )
    capture.close()


def _writes_per_second(path: Path, per_txn: int, writes: int, insert: bool) -> float:
    """Writes per second of the writer's own CPU time (best of three runs): a machine
    shared with other work slows wall time, not the CPU a write costs."""
    best = float("inf")
    next_id = ROWS
    for run in range(3):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA synchronous = NORMAL")
        rng = random.Random(run)
        start = time.process_time()
        for _ in range(writes // per_txn):
            conn.execute("BEGIN")
            for _ in range(per_txn):
                if insert:
                    next_id += 1
                    conn.execute("INSERT INTO t VALUES (?, ?, 0, 0.5)", (next_id, f"new-{next_id}"))
                else:
                    conn.execute(
                        "UPDATE t SET balance = balance + 1, rate = ? WHERE id = ?",
                        (rng.random(), rng.randrange(ROWS)),
                    )
            conn.execute("COMMIT")
        best = min(best, time.process_time() - start)
        conn.close()
    return writes / best


def measure(writes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for table, ddl in TABLES.items():
            for per_txn in (1, 100):
                for kind in ("update", "insert"):
                    rates = {}
                    for setup in ("none", "after_only", "cutline"):
                        path = Path(tmp) / f"{table}-{per_txn}-{kind}-{setup}.sqlite"
                        _primary(path, ddl)
                        if setup == "after_only":
                            _after_only(path)
                        elif setup == "cutline":
                            capture = connect(path)
                            install(capture, "bench", ["t"])
                            capture.close()
                        rates[setup] = _writes_per_second(path, per_txn, writes, kind == "insert")
                    out[f"{table} {kind} x{per_txn}/txn"] = {
                        **{f"{k}_per_s": round(v) for k, v in rates.items()},
                        "cutline_vs_none": round(rates["cutline"] / rates["none"], 3),
                        "cutline_vs_after_only": round(rates["cutline"] / rates["after_only"], 3),
                    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=10_000, help="per measurement")
    args = parser.parse_args()
    print(json.dumps(measure(args.writes), indent=2))


if __name__ == "__main__":
    main()
