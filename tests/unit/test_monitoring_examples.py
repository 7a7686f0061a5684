"""The Grafana dashboard and the alert rules in docker/ parse, and use only real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from cutline.metrics import PrometheusMetrics

DOCKER = Path(__file__).resolve().parents[2] / "docker"
METRIC = re.compile(r"\bcutline_[a-z0-9_]+")


def _exposed() -> set[str]:
    """Every sample name cutline exposes, with each hook called once."""
    m = PrometheusMetrics("shop")
    m.cut_outcome("failed")
    m.cuts_in_flight(1)
    m.cut_alignment(0.1)
    m.cut_pause(0.1)
    m.cut_snapshot(0.1, 1, 1)
    m.backup_published(1, 2)
    m.applied(0, 1)
    m.lag(0, 1)
    m.dead_letter()
    m.captured(1, 1, 1)
    m.capture_backlog(1, 1.0)
    return {s.name for family in m.registry.collect() for s in family.samples}


def test_alert_rules_parse_and_cover_what_an_operator_must_hear_about() -> None:
    rules = yaml.safe_load((DOCKER / "prometheus-alerts.yml").read_text())
    (group,) = rules["groups"]
    by_name = {r["alert"]: r for r in group["rules"]}
    for rule in by_name.values():
        assert rule["expr"] and rule["annotations"]["summary"], rule
    exprs = " ".join(r["expr"] for r in by_name.values())
    assert set(METRIC.findall(exprs)) <= _exposed()
    no_backup = by_name["CutlineNoBackupForAnHour"]["expr"]
    assert "time() -" in no_backup and "cutline_last_backup_t1_seconds" in no_backup
    assert no_backup.endswith("> 3600")
    for metric in (
        'cutline_cuts_total{outcome=~"failed|abandoned"}',
        "cutline_dead_letters_total",
        "cutline_consumer_lag",
        "cutline_capture_backlog_age_seconds",
    ):
        assert metric in exprs, metric


def test_dashboard_parses_and_every_panel_queries_real_metrics() -> None:
    dashboard = json.loads((DOCKER / "grafana-dashboard.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    exposed = _exposed()
    used = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(METRIC.findall(target["expr"]))
            assert names and names <= exposed, (panel["title"], names - exposed)
            used |= names
    assert "cutline_last_backup_t1_seconds" in used
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "source"}
