"""The metrics object, its HTTP endpoint, and the capture backlog, without Kafka."""

from __future__ import annotations

import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cutline.errors import ConfigError
from cutline.metrics import NO_METRICS, PrometheusMetrics
from cutline.metrics_server import MetricsServer, parse_address
from producers.backlog import capture_backlog
from producers.sqlite_changelog import install


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_every_hook_exists_on_the_no_op_base_and_records_nothing() -> None:
    for name in dir(PrometheusMetrics):
        if not name.startswith("_") and callable(getattr(NO_METRICS, name, None)):
            assert hasattr(NO_METRICS, name)
    NO_METRICS.cut_outcome("published")
    NO_METRICS.backup_published(1, 2)
    NO_METRICS.applied(0, 5)


def test_two_processes_in_one_interpreter_keep_their_own_numbers() -> None:
    a, b = PrometheusMetrics("shop"), PrometheusMetrics("shop")
    a.cut_outcome("published")
    a.cut_outcome("published")
    b.cut_outcome("failed")
    assert a.value("cutline_cuts_total", outcome="published") == 2
    assert b.value("cutline_cuts_total", outcome="published") == 0
    assert b.value("cutline_cuts_total", outcome="failed") == 1


def test_outcome_counters_and_dead_letters_start_at_zero() -> None:
    m = PrometheusMetrics("shop")
    for outcome in ("published", "failed", "abandoned"):
        assert m.value("cutline_cuts_total", outcome=outcome) == 0
    assert m.value("cutline_dead_letters_total") == 0
    m.dead_letter()
    assert m.value("cutline_dead_letters_total") == 1


def test_last_backup_gauges_follow_the_newest_t1_and_are_absent_before_any() -> None:
    m = PrometheusMetrics("shop")
    assert m.value("cutline_last_backup_t1_seconds") is None
    m.backup_published(t1_us=2_000_000, t2_us=2_500_000)
    m.backup_published(t1_us=1_000_000, t2_us=3_000_000)  # an older cut, seen late
    assert m.value("cutline_last_backup_t1_seconds") == 2.0
    assert m.value("cutline_last_backup_t2_seconds") == 2.5
    m.backup_published(t1_us=4_000_000, t2_us=4_100_000)
    assert m.value("cutline_last_backup_t1_seconds") == 4.0


def test_histograms_rows_bytes_applied_lag_and_backlog() -> None:
    m = PrometheusMetrics("shop")
    m.cut_alignment(0.02)
    m.cut_pause(0.3)
    m.cut_snapshot(1.5, rows=40, size_bytes=9000)
    m.cut_snapshot(0.5, rows=2, size_bytes=1000)
    assert m.value("cutline_cut_alignment_seconds_count") == 1
    assert m.value("cutline_cut_pause_seconds_sum") == pytest.approx(0.3)
    assert m.value("cutline_cut_snapshot_seconds_count") == 2
    assert m.value("cutline_cut_snapshot_seconds_bucket", le="1.0") == 1
    assert m.value("cutline_backup_rows_total") == 42
    assert m.value("cutline_backup_bytes_total") == 10000
    assert m.value("cutline_last_backup_rows") == 2
    m.applied(3, 10)
    m.applied(3, 0)
    m.applied(1, 4)
    assert m.value("cutline_records_applied_total", partition="3") == 10
    assert m.value("cutline_records_applied_total", partition="1") == 4
    m.lag(3, 7)
    assert m.value("cutline_consumer_lag", partition="3") == 7
    m.forget_partitions()
    assert m.value("cutline_consumer_lag", partition="3") is None
    m.captured(operations=5, markers=1, published_seq=12)
    m.capture_backlog(changes=3, oldest_age_s=1.25)
    assert m.value("cutline_captured_operations_total") == 5
    assert m.value("cutline_capture_published_seq") == 12
    assert m.value("cutline_capture_backlog_changes") == 3
    assert m.value("cutline_capture_backlog_age_seconds") == 1.25


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_endpoint_serves_metrics_liveness_and_readiness_on_a_free_port() -> None:
    clock = Clock()
    metrics = PrometheusMetrics("shop", monotonic=clock)
    state = {"ready": (False, "waiting for a partition assignment")}
    server = MetricsServer(metrics, "127.0.0.1:0", ready=lambda: state["ready"], stuck_after_s=30)
    try:
        assert server.port > 0
        metrics.cut_outcome("published")
        status, body = _get(f"{server.url}/metrics")
        assert status == 200
        assert 'cutline_cuts_total{outcome="published",source="shop"} 1.0' in body
        assert _get(f"{server.url}/readyz") == (503, "waiting for a partition assignment\n")
        state["ready"] = (True, "ready")
        assert _get(f"{server.url}/readyz")[0] == 200
        assert _get(f"{server.url}/healthz") == (200, "ok\n")
        clock.now += 31  # the main loop went silent
        status, body = _get(f"{server.url}/healthz")
        assert status == 503 and "silent for 31 s" in body
        metrics.beat()
        assert _get(f"{server.url}/healthz")[0] == 200
        assert _get(f"{server.url}/nope")[0] == 404
    finally:
        server.close()


def test_a_readiness_check_that_raises_answers_503() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    server = MetricsServer(PrometheusMetrics("shop"), "127.0.0.1:0", ready=broken)
    try:
        status, body = _get(f"{server.url}/readyz")
        assert status == 503 and "boom" in body
    finally:
        server.close()


def test_metrics_address_is_checked_with_one_clear_error() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("0.0.0.0", 9464)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("9464", "host:port", "host:70000"):
        with pytest.raises(ConfigError, match="is not HOST:PORT"):
            parse_address(bad)
    taken = MetricsServer(PrometheusMetrics("shop"), "127.0.0.1:0")
    try:
        with pytest.raises(ConfigError, match="cannot listen there"):
            MetricsServer(PrometheusMetrics("shop"), f"127.0.0.1:{taken.port}")
    finally:
        taken.close()


def test_capture_backlog_is_what_the_primary_committed_after_the_published_seq(
    tmp_path: Path,
) -> None:
    conn = sqlite3.connect(tmp_path / "p.sqlite", isolation_level=None)
    assert capture_backlog(conn, 0).changes == 0, "no change log installed yet"
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    install(conn, "shop", ["t"])
    for i in range(5):
        conn.execute("INSERT INTO t VALUES (?, 'x')", (i,))
    seqs = [r[0] for r in conn.execute("SELECT seq FROM _cutline_changes ORDER BY seq")]
    at = dict(conn.execute("SELECT seq, at_us FROM _cutline_changes"))
    everything = capture_backlog(conn, 0)
    assert everything.changes == seqs[-1]
    assert everything.oldest_at_us == at[seqs[0]]
    partly = capture_backlog(conn, seqs[1])
    assert partly.changes == seqs[-1] - seqs[1]
    assert partly.oldest_at_us == at[seqs[2]]
    assert partly.age_s(now_us=at[seqs[2]] + 2_500_000) == 2.5
    done = capture_backlog(conn, seqs[-1])
    assert done.changes == 0 and done.oldest_at_us is None and done.age_s() == 0.0


def test_capture_status_line_gives_the_rate_since_the_previous_line() -> None:
    import time

    from producers.capture import Capture, CaptureConfig

    capture = Capture(CaptureConfig(db_path="unused", tables=["t"], bootstrap="127.0.0.1:9"))
    capture.stats.started = time.monotonic() - 1000  # a cumulative average would be ~1/s
    capture._status_mark = (time.monotonic() - 2.0, 0)
    capture.stats.operations = 1000
    line = capture.status_line()
    rate = float(line.split("(")[1].split(" ops/s")[0].replace(",", ""))
    assert 400 <= rate <= 500, line  # 1000 operations over the last ~2 s
    capture._status_mark = (time.monotonic() - 2.0, capture._status_mark[1])
    assert "(0 ops/s)" in capture.status_line(), "nothing since the previous line"
