"""The scale phase: what a cut costs as the database grows (``python -m bench --scale N,M``).

Per size N, on a fresh source: a primary with one five-column table of N rows is written
first (no capture yet). Then, as an operator would start it, ``cutline capture`` (which
installs capture: a big table is then snapshotted in chunks by capture) and ``cutline replicate
--full-every 2`` run as processes of their own, and a marker is requested; the
**initial load** is the time from starting them until a published backup holds all N
rows. Then a light writer (about 200 single-row updates per second) runs while
``markers`` markers are cut one after the other, each after about 1 % of the rows changed
(so the incrementals measure "1 % changed"). Full and incremental backups alternate.

Per marker M, from the control topic and the probe in :mod:`bench.replicate_probe` (which
notes, per partition, when its shard is held at M and when it is released):

* **pause** of a partition: from its replication thread holding it at M (the shard records
  "held at M"; nothing after M is applied from then on) to its release (the shard records
  "released"; the thread applies whatever waits behind the marker in the same turn, so if
  there is anything to apply, this is when it starts). An early partition's pause includes
  waiting for the others to reach M. ``pause_per_marker_ms`` is, per marker, the longest
  pause of its partitions; ``pause_per_partition_ms`` summarises every partition's pause;
  ``reached_to_published`` is the first REACHED to PUBLISHED. Per marker the longest pause
  is split: ``alignment_ms`` (first partition held to last partition held), ``pin_ms``
  (last partition held to PINNED stamped: its REACHED produced and read back by the
  coordinator, READY, the writer lock and the read transaction on every shard) and
  ``release_ms`` (PINNED stamped to the last partition released: PINNED acknowledged by the
  broker, the held threads woken, the shard released); ``all_stopped_ms`` is the window
  where every partition is stopped at once (last held to first released);
* **backup seconds**: the manifest's ``snapshot_ms`` (write_backup, start to publish), and
  **backup bytes**: the size of the published backup directory.

Per size also: the replicate process's peak RSS (``VmHWM``), and the baseline of the
issue's ratio: the same N rows turned from Python lists into an Arrow table and loaded into
a new DuckDB file (as :func:`bench.backup_bench.duckdb_from_arrow` does for three columns).
"""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from backups.catalog import Backup, backup_dir_name, read_backup, source_dir
from bench.backup_bench import directory_bytes
from bench.common import (
    PARTITIONS,
    BenchError,
    log,
    per_second,
    read_topic,
    summary_ms,
    timed,
    wait_until,
)
from bench.processes import CutlineProcess
from bench.replication_bench import Background
from cutline.settings import Topics
from producers.markers import request_marker
from producers.sqlite_changelog import connect, installed_tables
from schemas.codec import decode
from schemas.records import ControlEvent, ControlKind

SCALE_TABLE = "ledger"
SCALE_DDL = (
    f"CREATE TABLE {SCALE_TABLE} (id INTEGER PRIMARY KEY, owner TEXT, balance REAL, "
    "updated_us INTEGER, note TEXT)"
)
DEFAULT_SIZES = (100_000, 1_000_000)
MARKERS = 5
FULL_EVERY = 2  # backup 1 (initial load) full, then incremental, full, incremental, ...
WRITER_UPDATES_PER_S = 200
CHANGED_FRACTION = 0.01
BASE_US = 1_750_000_000_000_000
Row5 = tuple[int, str, float, int, str]


def scale_row(i: int) -> Row5:
    """Row ``i`` of the scale table: about 90 bytes in SQLite, as in the issue's table."""
    return (i, f"owner-{i:08d}", float(i % 10_000), BASE_US + i, f"note {i % 997:03d} for {i}")


def build_scale_primary(path: Path, rows: int) -> None:
    """The primary before capture: ``rows`` rows in one table, WAL, written in chunks."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SCALE_DDL)
        conn.execute("BEGIN")
        for start in range(1, rows + 1, 50_000):
            stop = min(rows, start + 49_999)
            conn.executemany(
                f"INSERT INTO {SCALE_TABLE} VALUES (?, ?, ?, ?, ?)",
                (scale_row(i) for i in range(start, stop + 1)),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def duckdb_from_arrow_5(rows: int, path: Path, chunk: int = 1_000_000) -> float:
    """Seconds to turn the N scale rows (Python lists) into Arrow and load them into DuckDB.

    Lists are built a million rows at a time, outside the clock, so 10M rows do not hold
    gigabytes of Python objects at once; the clock covers list -> Arrow and the DuckDB load.
    """
    batches: list[pa.RecordBatch] = []
    names = ["id", "owner", "balance", "updated_us", "note"]
    elapsed = 0.0
    for first in range(1, rows + 1, chunk):
        ids = list(range(first, min(rows, first + chunk - 1) + 1))
        owners = [f"owner-{i:08d}" for i in ids]
        balances = [float(i % 10_000) for i in ids]
        updated = [BASE_US + i for i in ids]
        notes = [f"note {i % 997:03d} for {i}" for i in ids]
        with timed() as t:
            batches.append(
                pa.RecordBatch.from_arrays(
                    [
                        pa.array(ids, type=pa.int64()),
                        pa.array(owners, type=pa.string()),
                        pa.array(balances, type=pa.float64()),
                        pa.array(updated, type=pa.int64()),
                        pa.array(notes, type=pa.string()),
                    ],
                    names=names,
                )
            )
        elapsed += t.elapsed
        del ids, owners, balances, updated, notes
    with timed() as t:
        table = pa.Table.from_batches(batches)
        db = duckdb.connect(str(path))
        try:
            db.register("arrow_table", table)
            db.execute(f"CREATE TABLE {SCALE_TABLE} AS SELECT * FROM arrow_table")
            db.execute("CHECKPOINT")
        finally:
            db.close()
    return elapsed + t.elapsed


class LightWriter(Background):
    """Single-row updates at a steady ``per_s``: the application keeps writing during cuts."""

    def __init__(self, db_path: Path, rows: int, per_s: float):
        super().__init__("writer", self._loop)
        self.db_path, self.rows, self.per_s = db_path, rows, per_s
        self.halt = threading.Event()
        self.updates = 0
        self.elapsed_s = 0.0

    def _loop(self) -> None:
        conn = connect(self.db_path, timeout_s=60.0)
        rng = random.Random(5)
        sql = f"UPDATE {SCALE_TABLE} SET balance = balance + ?, updated_us = ? WHERE id = ?"
        started = time.monotonic()
        try:
            while not self.halt.is_set():
                if self.updates > (time.monotonic() - started) * self.per_s:
                    self.halt.wait(0.002)
                    continue
                conn.execute(
                    sql, (rng.randint(-5, 5), time.time_ns() // 1000, rng.randint(1, self.rows))
                )
                self.updates += 1
        finally:
            self.elapsed_s = time.monotonic() - started
            conn.close()


def change_fraction(conn: sqlite3.Connection, rows: int, fraction: float, seed: int) -> int:
    """Update ``fraction`` of the rows (distinct keys), in transactions of 1,000."""
    rng = random.Random(seed)
    keys = rng.sample(range(1, rows + 1), max(1, int(rows * fraction)))
    now = time.time_ns() // 1000
    sql = f"UPDATE {SCALE_TABLE} SET balance = balance + 1, updated_us = ? WHERE id = ?"
    for start in range(0, len(keys), 1000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, ((now, k) for k in keys[start : start + 1000]))
        conn.execute("COMMIT")
    return len(keys)


@dataclass
class SizeRun:
    """One size's processes and paths; every wait checks that both processes still run."""

    rows: int
    source: str
    bootstrap: str
    workdir: Path
    capture: CutlineProcess | None = None
    replicate: CutlineProcess | None = None
    resumes: dict[int, dict[int, int]] = field(default_factory=dict)  # marker -> part -> at_us
    holds: dict[int, dict[int, int]] = field(default_factory=dict)  # marker -> part -> at_us

    @property
    def db(self) -> Path:
        return self.workdir / "primary.sqlite"

    @property
    def backups(self) -> Path:
        return self.workdir / "backups"

    @property
    def resumes_path(self) -> Path:
        return self.workdir / "resumes.jsonl"

    def healthy(self) -> None:
        for process in (self.capture, self.replicate):
            if process is not None:
                process.check()

    def start(self, alignment_timeout_s: float) -> None:
        kafka = ["--bootstrap-servers", self.bootstrap, "--source", self.source]
        self.capture = CutlineProcess.capture(
            ["--db", str(self.db), "--tables", SCALE_TABLE, *kafka], self.workdir / "capture.log"
        )
        self.replicate = CutlineProcess.replicate(
            [
                "--replica",
                str(self.workdir / "replica"),
                "--backups",
                str(self.backups),
                "--full-every",
                str(FULL_EVERY),
                "--alignment-timeout",
                str(alignment_timeout_s),
                *kafka,
            ],
            self.workdir / "replicate.log",
            self.resumes_path,
        )

    def stop(self) -> None:
        for process in (self.capture, self.replicate):
            if process is not None:
                process.stop()

    def backup(self, marker_id: int) -> Backup | None:
        return read_backup(source_dir(self.backups, self.source) / backup_dir_name(marker_id))

    def read_resumes(self) -> None:
        if not self.resumes_path.exists():
            return
        lines = self.resumes_path.read_text().split("\n")
        for line in lines[:-1]:  # the last piece has no newline yet: still being written
            if line.strip():
                event = json.loads(line)
                seen = self.holds if event.get("event") == "held" else self.resumes
                by_part = seen.setdefault(int(event["marker_id"]), {})
                by_part.setdefault(int(event["partition"]), int(event["at_us"]))

    def cut(self, conn: sqlite3.Connection, deadline_s: float) -> Backup:
        """Request a marker; wait for its backup and for every partition to resume."""
        # the first marker waits for the initial snapshot (initial_snapshot.py) to finish
        marker_id = request_marker(conn, note="bench scale", lock_timeout_s=deadline_s).marker_id

        def done() -> bool:
            self.healthy()
            self.read_resumes()
            published = self.backup(marker_id) is not None
            return published and len(self.resumes.get(marker_id, {})) >= PARTITIONS

        wait_until(
            done,
            deadline_s,
            f"scale {self.rows}: marker {marker_id} published and every partition resumed",
            detail=lambda: (
                f"resumed {sorted(self.resumes.get(marker_id, {}))}; replicate: "
                f"{self.replicate.tail(3) if self.replicate else ''}"
            ),
            interval_s=0.05,
        )
        backup = self.backup(marker_id)
        assert backup is not None
        return backup


def control_times(bootstrap: str, source: str) -> dict[int, dict[str, int]]:
    """Per marker: first and last REACHED ``at_us`` and the PUBLISHED ``at_us``."""
    times: dict[int, dict[str, int]] = {}
    for record in read_topic(bootstrap, Topics(source).control, 1, 60.0):
        event = decode(record.value) if record.value else None
        if not isinstance(event, ControlEvent) or event.source != source:
            continue
        entry = times.setdefault(event.marker_id, {})
        if event.kind is ControlKind.REACHED:
            entry["first_reached"] = min(entry.get("first_reached", event.at_us), event.at_us)
            entry["last_reached"] = max(entry.get("last_reached", event.at_us), event.at_us)
        elif event.kind is ControlKind.PINNED:
            entry.setdefault("pinned", event.at_us)
        elif event.kind is ControlKind.PUBLISHED:
            entry.setdefault("published", event.at_us)
    return times


def partition_pauses_us(holds: dict[int, int], resumes: dict[int, int]) -> dict[int, int]:
    """Per partition: its release minus its hold at the marker (microseconds)."""
    return {p: resumes[p] - held for p, held in holds.items() if p in resumes}


def pause_parts_ms(
    at: dict[str, int], holds: dict[int, int], resumes: dict[int, int]
) -> dict[str, float | None]:
    """Where a marker's longest pause goes: partitions arriving (first to last held),
    pinning (last held to PINNED) and releasing (PINNED to the last partition released)."""

    def ms(start_us: int | None, end_us: int | None) -> float | None:
        return None if start_us is None or end_us is None else round((end_us - start_us) / 1e3, 2)

    first_held, last_held = min(holds.values()), max(holds.values())
    return {
        "alignment_ms": ms(first_held, last_held),
        "pin_ms": ms(last_held, at.get("pinned")),
        "release_ms": ms(at.get("pinned"), max(resumes.values())),
        "all_stopped_ms": ms(last_held, min(resumes.values())),
    }


def _ratio_of_medians(part: list[float], whole: list[float]) -> float | None:
    if not part or not whole or statistics.median(whole) <= 0:
        return None
    return round(statistics.median(part) / statistics.median(whole), 3)


def table_rows(backup: Backup) -> int:
    return int(backup.manifest["tables"][SCALE_TABLE]["rows"])


def seconds_summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3) if values else None,
        "values": [round(v, 3) for v in values],
    }


def run_size(bootstrap: str, workdir: Path, source: str, rows: int, markers: int) -> dict[str, Any]:
    """Everything measured at one size; the processes are stopped whatever happens."""
    workdir.mkdir(parents=True)
    run = SizeRun(rows, source, bootstrap, workdir)
    log(f"scale {rows}: writing the primary")
    build_scale_primary(run.db, rows)
    replica_bytes = run.db.stat().st_size
    deadline_s = 120.0 + rows / 2_000  # today's code: ~13,000 rows/s, ~40 us per row a cut
    writer = LightWriter(run.db, rows, WRITER_UPDATES_PER_S)
    conn: sqlite3.Connection | None = None
    try:
        with timed() as load:
            run.start(alignment_timeout_s=deadline_s)
            conn = connect(run.db, timeout_s=60.0)

            def installed() -> bool:
                run.healthy()
                return bool(installed_tables(conn))

            install_s = wait_until(
                installed, deadline_s, f"scale {rows}: capture installed", interval_s=0.05
            )
            first = run.cut(conn, deadline_s)
            while table_rows(first) < rows:  # a chunked initial snapshot may need more cuts
                first = run.cut(conn, max(30.0, deadline_s - load.so_far()))
        log(f"scale {rows}: initial load {load.elapsed:.1f} s, backup {first.marker_id}")
        writer.start()
        cut: list[tuple[Backup, int]] = []
        for k in range(markers):
            changed = change_fraction(conn, rows, CHANGED_FRACTION, seed=100 + k)
            writer.check()
            backup = run.cut(conn, deadline_s)
            cut.append((backup, changed))
            log(
                f"scale {rows}: marker {backup.marker_id} {backup.kind}, "
                f"{backup.manifest.get('snapshot_ms')} ms"
            )
        writer.halt.set()
        writer.join(10)
        writer.check()
        rss = {
            "replicate": run.replicate.peak_rss_bytes() if run.replicate else 0,
            "capture": run.capture.peak_rss_bytes() if run.capture else 0,
        }
    finally:
        writer.halt.set()
        if conn is not None:
            conn.close()
        run.stop()
    times = control_times(bootstrap, source)
    baseline_s = duckdb_from_arrow_5(rows, workdir / "baseline.duckdb")
    figures = size_json(
        run, first, cut, times, rss, load.elapsed, baseline_s, replica_bytes, writer
    )
    figures["initial_load_capture_installed_s"] = round(install_s, 3)
    return figures


def size_json(
    run: SizeRun,
    first: Backup,
    cut: list[tuple[Backup, int]],
    times: dict[int, dict[str, int]],
    rss: dict[str, int],
    load_s: float,
    baseline_s: float,
    primary_bytes: int,
    writer: LightWriter,
) -> dict[str, Any]:
    pauses, to_published, partition_pauses = [], [], []
    backup_s: dict[str, list[float]] = {"full": [], "incremental": []}
    write_s: dict[str, list[float]] = {"full": [], "incremental": []}
    all_stopped: list[float] = []
    backup_bytes: dict[str, list[int]] = {"full": [], "incremental": []}
    changed_rows: list[int] = []
    per_marker: list[dict[str, Any]] = []
    for backup, _changed in cut:
        m = backup.marker_id
        at = times.get(m, {})
        if "first_reached" not in at or "published" not in at:
            raise BenchError(f"scale {run.rows}: marker {m} has no REACHED/PUBLISHED events")
        holds, resumes = run.holds.get(m, {}), run.resumes[m]
        each = partition_pauses_us(holds, resumes)
        if len(each) < PARTITIONS:
            raise BenchError(f"scale {run.rows}: marker {m}: holds of partitions {sorted(holds)}")
        partition_pauses.extend(us / 1e6 for us in each.values())
        pauses.append(max(each.values()) / 1e6)
        to_published.append((at["published"] - at["first_reached"]) / 1e6)
        backup_s[backup.kind].append(float(backup.manifest["snapshot_ms"]) / 1000)
        backup_bytes[backup.kind].append(directory_bytes(backup.path))
        if backup.kind == "incremental":
            changed_rows.append(int(backup.manifest["tables"][SCALE_TABLE].get("changed", 0)))
        parts = pause_parts_ms(at, holds, resumes)
        if parts["all_stopped_ms"] is not None:
            all_stopped.append(parts["all_stopped_ms"] / 1000)
        proof_wait_s = float(backup.manifest.get("proof_wait_ms", 0)) / 1000
        write_s[backup.kind].append(backup_s[backup.kind][-1] - proof_wait_s)
        per_marker.append(
            {
                "marker_id": m,
                "kind": backup.kind,
                "pause_ms": round(pauses[-1] * 1000, 2),
                "partition_pause_ms": {p: round(us / 1e3, 2) for p, us in sorted(each.items())},
                **parts,
                "backup_s": round(backup_s[backup.kind][-1], 3),
                # of backup_s, the wait for the primary's digest of the marker
                "proof_wait_s": round(proof_wait_s, 3),
                "bytes": backup_bytes[backup.kind][-1],
            }
        )
    full_s = statistics.median(backup_s["full"]) if backup_s["full"] else None
    full_rate = per_second(run.rows, full_s) if full_s else None
    baseline_rate = per_second(run.rows, baseline_s)
    return {
        "rows": run.rows,
        "primary_bytes": primary_bytes,
        "markers": len(cut),
        "pause_per_marker_ms": summary_ms(pauses),
        "pause_per_partition_ms": summary_ms(partition_pauses),
        # the window where every partition is stopped at once (last held to first released)
        "all_stopped_per_marker_ms": summary_ms(all_stopped),
        "reached_to_published_ms": summary_ms(to_published),
        "backup_full_s": seconds_summary(backup_s["full"]),
        "backup_incremental_s": seconds_summary(backup_s["incremental"]),
        "backup_full_bytes": max(backup_bytes["full"], default=None),
        "backup_incremental_bytes": max(backup_bytes["incremental"], default=None),
        "incremental_changed_rows": changed_rows,
        "changed_per_marker": cut[0][1] if cut else 0,
        "replicate_peak_rss_mb": round(rss["replicate"] / 2**20, 1),
        "capture_peak_rss_mb": round(rss["capture"] / 2**20, 1),
        "initial_load_s": round(load_s, 3),
        "initial_load_rows_per_s": per_second(run.rows, load_s),
        "initial_backup_marker": first.marker_id,
        "full_backup_rows_per_s": full_rate,
        "duckdb_from_arrow_rows_per_s": baseline_rate,
        "full_backup_vs_duckdb_from_arrow": round(full_rate / baseline_rate, 3)
        if full_rate and baseline_rate
        else None,
        "incremental_vs_full_time": _ratio_of_medians(backup_s["incremental"], backup_s["full"]),
        # the same without the wait for the primary's digest (the backup's own work)
        "incremental_vs_full_write_time": _ratio_of_medians(
            write_s["incremental"], write_s["full"]
        ),
        "writer_updates_per_s": per_second(writer.updates, writer.elapsed_s),
        "per_marker": per_marker,
    }


def curve_line(size: dict[str, Any]) -> str:
    """One line per size for stderr: the curve at a glance."""
    pause, each = size["pause_per_marker_ms"], size["pause_per_partition_ms"]
    return (
        f"{size['rows']:>10,} rows: pause p50 {pause['p50']} ms p99 {pause['p99']} ms "
        f"(per partition p50 {each['p50']} p99 {each['p99']}) | "
        f"full {size['backup_full_s']['median']} s, incr {size['backup_incremental_s']['median']}"
        f" s | bytes full {size['backup_full_bytes']} incr {size['backup_incremental_bytes']} | "
        f"RSS {size['replicate_peak_rss_mb']} MB | load {size['initial_load_rows_per_s']} rows/s"
        f" | full/DuckDB {size['full_backup_vs_duckdb_from_arrow']}, "
        f"incr/full {size['incremental_vs_full_time']}"
    )


def scale_phase(
    bootstrap: str, workdir: Path, source: str, sizes: list[int], markers: int = MARKERS
) -> dict[str, Any]:
    """Run every size (each its own source, ``<source>-<size>``) and print the curve."""
    results = []
    for rows in sizes:
        results.append(
            run_size(bootstrap, workdir / f"scale-{rows}", f"{source}-{rows}", rows, markers)
        )
    for size in results:
        log(curve_line(size))
    return {
        "sizes": sizes,
        "table_columns": 5,
        "markers_per_size": markers,
        "full_every": FULL_EVERY,
        "changed_fraction_per_marker": CHANGED_FRACTION,
        "writer_updates_per_s_target": WRITER_UPDATES_PER_S,
        "results": results,
    }


def scale_sources(source: str, sizes: list[int]) -> list[str]:
    return [f"{source}-{rows}" for rows in sizes]
