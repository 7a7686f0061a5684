"""The scale and write-cost phases of ``python -m bench`` run end to end on the real broker.

A tiny size (2,000 rows, ``--quick``) in seconds, so the harness cannot rot unnoticed: the
JSON must carry every figure the issue asks for, each tagged with its size and sensible.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIZE = 2_000

SIZE_FIGURES = (
    "primary_bytes",
    "backup_full_bytes",
    "backup_incremental_bytes",
    "replicate_peak_rss_mb",
    "capture_peak_rss_mb",
    "initial_load_s",
    "initial_load_capture_installed_s",
    "initial_load_rows_per_s",
    "full_backup_rows_per_s",
    "duckdb_from_arrow_rows_per_s",
    "full_backup_vs_duckdb_from_arrow",
    "incremental_vs_full_time",
    "incremental_vs_full_write_time",
    "writer_updates_per_s",
)


def test_scale_phase_reports_every_figure_per_size(kafka: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--scale",
            str(SIZE),
            "--quick",
            *("--bootstrap-servers", kafka),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert document["run"]["scale"] == [SIZE]
    assert "capture" not in document  # --scale runs the scale and write-cost phases only

    scale = document["scale"]
    assert scale["sizes"] == [SIZE] and scale["table_columns"] == 5
    (size,) = scale["results"]
    assert size["rows"] == SIZE
    assert size["markers"] == scale["markers_per_size"] == 5
    for name in SIZE_FIGURES:
        assert size[name] is not None and size[name] > 0, (name, size[name])
    for name in ("pause_per_marker_ms", "all_stopped_per_marker_ms", "reached_to_published_ms"):
        summary = size[name]
        assert summary["samples"] == 5, (name, summary)
        assert 0 < summary["p50"] <= summary["p99"] <= summary["max"], (name, summary)
    # --full-every 2 after the initial (full) backup: incremental, full, incremental, ...
    assert len(size["backup_full_s"]["values"]) == 2
    assert len(size["backup_incremental_s"]["values"]) == 3
    assert all(
        v > 0 for v in size["backup_full_s"]["values"] + size["backup_incremental_s"]["values"]
    )
    kinds = [m["kind"] for m in size["per_marker"]]
    assert kinds == ["incremental", "full", "incremental", "full", "incremental"]
    assert all(m["pause_ms"] > 0 and m["bytes"] > 0 for m in size["per_marker"])
    # each incremental holds at least the 1 % changed before its marker, and is smaller
    assert size["changed_per_marker"] == SIZE // 100
    assert all(n >= SIZE // 100 for n in size["incremental_changed_rows"])
    assert size["backup_incremental_bytes"] < size["backup_full_bytes"]

    cost = document["write_cost"]
    for per_txn in (1, 100):
        figures = cost[f"updates_x{per_txn}_per_txn"]
        assert figures["updates_per_txn"] == per_txn
        assert len(figures["ratio_cpu_runs"]) == cost["runs"]
        for name in ("bare_cpu_per_s", "capture_cpu_per_s", "bare_wall_per_s", "ratio_cpu"):
            assert figures[name] > 0, (per_txn, name, figures[name])
        assert figures["ratio_wall"] > 0
