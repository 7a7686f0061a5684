"""The coordinator's metrics: outcomes counted once, from the control topic as it is read."""

from __future__ import annotations

import json
from pathlib import Path

from backups.catalog import backup_dir_name
from consumers.coordinator import CutCoordinator
from cutline.metrics import PrometheusMetrics
from schemas.codec import encode
from schemas.records import ControlEvent, ControlKind


def _event(kind: ControlKind, marker_id: int, **fields) -> bytes:
    return encode(ControlEvent(kind, "shop", marker_id, 2, "other", 1, **fields))


def _coordinator(tmp_path: Path, metrics: PrometheusMetrics) -> CutCoordinator:
    return CutCoordinator(
        bootstrap="127.0.0.1:1",
        source="shop",
        member="me",
        replica_dir=tmp_path / "replica",
        backups_dir=tmp_path / "backups",
        producer=None,  # type: ignore[arg-type] # nothing is sent in these tests
        metrics=metrics,
    )


def _publish_manifest(tmp_path: Path, marker_id: int, t1_us: int, t2_us: int) -> None:
    path = tmp_path / "backups" / "shop" / backup_dir_name(marker_id)
    path.mkdir(parents=True)
    manifest = {
        "source": "shop",
        "marker_id": marker_id,
        "t1": "x",
        "t1_us": t1_us,
        "t2": "y",
        "t2_us": t2_us,
        "duckdb": "backup.duckdb",
        "tables": {},
        "files": [],
    }
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_history_replayed_at_start_up_is_not_counted_but_sets_the_newest_backup(
    tmp_path: Path,
) -> None:
    metrics = PrometheusMetrics("shop")
    coordinator = _coordinator(tmp_path, metrics)
    _publish_manifest(tmp_path, 4, t1_us=40_000_000, t2_us=41_000_000)
    coordinator._on_event(_event(ControlKind.PUBLISHED, 3, detail="x"), 0.0)
    coordinator._on_event(_event(ControlKind.PUBLISHED, 4, detail="x"), 0.0)
    coordinator._on_event(_event(ControlKind.FAILED, 5, detail="count mismatch"), 0.0)
    assert metrics.value("cutline_cuts_total", outcome="published") == 0
    assert metrics.value("cutline_last_backup_t1_seconds") is None, "read once, at the end"
    coordinator._finish_replay()
    assert metrics.value("cutline_last_backup_t1_seconds") == 40.0
    assert metrics.value("cutline_last_backup_t2_seconds") == 41.0
    assert metrics.value("cutline_cuts_total", outcome="failed") == 0
    assert metrics.value("cutline_cuts_in_flight") == 0


def test_live_outcomes_are_counted_once_per_cut_and_in_flight_follows(tmp_path: Path) -> None:
    metrics = PrometheusMetrics("shop")
    coordinator = _coordinator(tmp_path, metrics)
    coordinator._finish_replay()
    reached = {"partition": 0, "offset": 5, "t1_us": 1, "tables": ()}
    coordinator._on_event(_event(ControlKind.REACHED, 7, **reached), 0.0)
    assert metrics.value("cutline_cuts_in_flight") == 1
    coordinator._on_event(_event(ControlKind.ABANDONED, 7, detail="timeout"), 1.0)
    coordinator._on_event(_event(ControlKind.FAILED, 7, detail="late failure"), 1.0)
    assert metrics.value("cutline_cuts_total", outcome="abandoned") == 1
    assert metrics.value("cutline_cuts_total", outcome="failed") == 0, "one cut, counted once"
    assert metrics.value("cutline_cuts_in_flight") == 0
    _publish_manifest(tmp_path, 8, t1_us=80_000_000, t2_us=81_000_000)
    coordinator._on_event(_event(ControlKind.PUBLISHED, 8, detail="x"), 2.0)
    assert metrics.value("cutline_cuts_total", outcome="published") == 1
    assert metrics.value("cutline_last_backup_t1_seconds") == 80.0
