"""Seeing what cutline does: the metrics endpoint of running processes, ``status``, ``dlq``.

Processes run through the CLI, as an operator runs them, with ``--metrics-address`` on a
free port; the endpoint is scraped over HTTP while cuts happen. Every backup involved is
compared row by row with the primary's state at its cut.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cutline.kafka_clients import ensure_topics, make_admin, make_producer, source_topic_specs
from cutline.settings import Topics
from producers.markers import MarkerTicket
from producers.sqlite_changelog import now_us
from schemas.codec import encode
from schemas.records import ConsistencyMarker
from tests.integration.pipeline import TABLES, Pipeline, Process, backup_rows, wait_until
from tests.integration.test_bad_markers import _produce_everywhere, _reserve_marker_id

PARTITIONS = 3
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _endpoint(process: Process, pipeline: Pipeline) -> str:
    def found() -> str | None:
        pipeline.check_alive()
        match = re.search(r"metrics at (http://\S+)/metrics", process.log.read_text())
        return match.group(1) if match else None

    return wait_until(found, 60, f"{process.name} to log its metrics address")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _scrape(base: str) -> Samples:
    status, text = _get(f"{base}/metrics")
    assert status == 200, text
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "source"))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _one(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def _assert_backup_is_cut(pipeline: Pipeline, ticket: MarkerTicket) -> None:
    backup = pipeline.wait_for_backups([ticket.marker_id])[ticket.marker_id]
    assert backup.t1 == ticket.t1
    rows = backup_rows(backup)
    for table in TABLES:
        assert rows[table] == pipeline.oracle[ticket.marker_id][table], (ticket, table)


def test_metrics_of_running_capture_and_replicate_move_as_cuts_happen(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    capture = pipeline.start_capture(PARTITIONS, "--metrics-address", "127.0.0.1:0")
    replicate = pipeline.start_replicator(
        "replicate", "--metrics-address", "127.0.0.1:0", "--log-format", "json"
    )
    capture_url, replicate_url = _endpoint(capture, pipeline), _endpoint(replicate, pipeline)

    assert _get(f"{replicate_url}/healthz") == (200, "ok\n")
    wait_until(lambda: _get(f"{replicate_url}/readyz")[0] == 200, 60, "replicate to be ready")
    wait_until(lambda: _get(f"{capture_url}/readyz")[0] == 200, 60, "capture to be ready")
    before = _scrape(replicate_url)
    assert _one(before, "cutline_cuts_total", outcome="published") == 0
    assert _one(before, "cutline_last_backup_t1_seconds") is None, "no backup yet"

    conn = pipeline.connect()
    tickets = []
    applied_seen = []
    for n in range(1, 3):
        conn.execute("UPDATE accounts SET balance = balance + ? WHERE id < 20", (n,))
        conn.execute("INSERT INTO events (kind, payload) VALUES ('tick', x'01')")
        ticket = pipeline.cut(conn)
        tickets.append(ticket)
        _assert_backup_is_cut(pipeline, ticket)
        t1_s = ticket.t1_us / 1e6

        def moved(n: int = n, t1_s: float = t1_s) -> Samples | None:
            now = _scrape(replicate_url)
            published = _one(now, "cutline_cuts_total", outcome="published")
            newest = _one(now, "cutline_last_backup_t1_seconds")
            # every partition released (after its offset commit) once the cut is published
            pauses = _one(now, "cutline_cut_pause_seconds_count")
            return now if (published, newest, pauses) == (n, t1_s, n * PARTITIONS) else None

        samples = wait_until(moved, 30, f"cut {ticket.marker_id} counted as published")
        assert _one(samples, "cutline_cuts_total", outcome="failed") == 0
        assert _one(samples, "cutline_cut_snapshot_seconds_count") == n, "one writer: all here"
        assert _one(samples, "cutline_cut_alignment_seconds_count") == n
        assert _one(samples, "cutline_backup_rows_total") > 0
        assert _one(samples, "cutline_last_backup_t2_seconds") >= t1_s
        applied_seen.append(_total(samples, "cutline_records_applied_total"))
    assert 0 < applied_seen[0] < applied_seen[1], f"records applied grows: {applied_seen}"

    def idle_lags() -> list[float] | None:
        lags = [v for (n, _), v in _scrape(replicate_url).items() if n == "cutline_consumer_lag"]
        return lags if len(lags) == PARTITIONS and set(lags) == {1} else None

    # all applied, and still 1 per partition: the commit marker of capture's transaction
    wait_until(idle_lags, 30, "a lag of exactly 1 on every idle partition")

    def caught_up() -> Samples | None:
        now = _scrape(capture_url)
        return now if _one(now, "cutline_capture_backlog_changes") == 0 else None

    samples = wait_until(caught_up, 30, "capture's backlog to drain")
    newest_seq = conn.execute("SELECT max(seq) FROM _cutline_changes").fetchone()[0]
    assert newest_seq is None or _one(samples, "cutline_capture_published_seq") >= newest_seq
    assert _one(samples, "cutline_capture_backlog_age_seconds") == 0
    assert _one(samples, "cutline_captured_markers_total") == len(tickets)
    assert _one(samples, "cutline_captured_operations_total") > 0
    assert _get(f"{capture_url}/healthz")[0] == 200
    conn.close()
    assert replicate.stop() == 0, replicate.tail()
    assert capture.stop() == 0, capture.tail()
    lines = [json.loads(line) for line in replicate.log.read_text().splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in lines), lines
    published = [e for e in lines if e["message"].startswith("backup ")]
    assert [e["level"] for e in published] == ["info"] * len(tickets), published
    status = [e["message"] for e in lines if e["message"].startswith("applied ")]
    assert status and "ops/s" in status[-1], "the last status line, as JSON too"


def test_capture_backlog_metric_rises_while_capture_is_behind_and_drains(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.create_primary()
    # every batch stays 1.5 s in its transaction: commits on the primary pile up meanwhile
    monkeypatch.setenv("CUTLINE_FAILPOINTS", "capture.batch_produced=sleep:1.5")
    capture = pipeline.start_capture(PARTITIONS, "--metrics-address", "127.0.0.1:0")
    monkeypatch.delenv("CUTLINE_FAILPOINTS")
    url = _endpoint(capture, pipeline)
    stop = threading.Event()

    def write() -> None:
        conn = pipeline.connect()
        n = 0
        while not stop.is_set() and n < 2000:
            conn.execute("INSERT INTO events (kind, payload) VALUES ('busy', x'02')")
            n += 1
            stop.wait(0.01)
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:

        def behind() -> Samples | None:
            now = _scrape(url)
            changes = _one(now, "cutline_capture_backlog_changes") or 0
            age = _one(now, "cutline_capture_backlog_age_seconds") or 0
            return now if changes > 0 and age > 0 else None

        samples = wait_until(behind, 30, "a capture backlog with an age")
        assert _one(samples, "cutline_capture_backlog_age_seconds") < 30
    finally:
        stop.set()
        writer.join(30)
    conn = pipeline.connect()
    newest = conn.execute("SELECT max(seq) FROM _cutline_changes").fetchone()
    conn.close()
    assert newest[0] is not None, "changes were still waiting when the writer stopped"

    def drained() -> Samples | None:
        now = _scrape(url)
        return now if _one(now, "cutline_capture_backlog_changes") == 0 else None

    samples = wait_until(drained, 60, "capture's backlog to drain")
    assert _one(samples, "cutline_capture_published_seq") >= newest[0]
    assert _one(samples, "cutline_capture_backlog_age_seconds") == 0
    assert capture.stop() == 0, capture.tail()


def test_status_and_dlq_show_backups_failed_cuts_dead_letters_and_backlog(
    pipeline: Pipeline,
) -> None:
    pipeline.create_primary()
    capture = pipeline.start_capture(PARTITIONS)
    replicator = pipeline.start_replicator("replicate", "--metrics-address", "127.0.0.1:0")
    replicate_url = _endpoint(replicator, pipeline)
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    _assert_backup_is_cut(pipeline, first)
    topics = Topics(pipeline.source)

    # a record that is no cutline record, a marker of a cut already made (set aside, as
    # a cutline record), and a cut whose count cannot match
    duplicate = ConsistencyMarker(
        pipeline.source, first.marker_id, now_us(), 0, PARTITIONS, (0,) * PARTITIONS, ()
    )
    producer = make_producer(pipeline.bootstrap)
    producer.produce(topics.ops, b"not avro at all", b"garbage", 1)
    producer.produce(topics.ops, encode(duplicate), b"by-hand", 2)
    assert producer.flush(15) == 0
    bad_id = _reserve_marker_id(pipeline)
    counts = (5,) + (0,) * (PARTITIONS - 1)
    bad = ConsistencyMarker(pipeline.source, bad_id, now_us(), 0, PARTITIONS, counts, tuple(TABLES))
    _produce_everywhere(pipeline, bad)
    wait_until(
        lambda: f"cut {bad_id} failed" in replicator.log.read_text(),
        60,
        f"cut {bad_id} to be reported failed\n{pipeline.logs()}",
    )
    kafka = ("--source", pipeline.source, "--bootstrap-servers", pipeline.bootstrap)

    def counted() -> Samples | None:
        now = _scrape(replicate_url)
        failed = _one(now, "cutline_cuts_total", outcome="failed")
        return now if failed == 1 and _one(now, "cutline_dead_letters_total") == 2 else None

    samples = wait_until(counted, 30, "the failed cut and the dead letter in the metrics")
    assert _one(samples, "cutline_cuts_total", outcome="published") == 1
    assert _one(samples, "cutline_cuts_total", outcome="abandoned") == 0

    def status() -> dict:
        result = pipeline.cli("status", *kafka, "--backups", str(pipeline.backups), "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    found = wait_until(
        lambda: (s := status())["dead_letters"]["count"] >= 2 and s["cuts"]["failed"] and s,
        30,
        "status to show the dead letter and the failed cut",
    )
    newest = found["newest_backup"]
    assert newest["marker_id"] == first.marker_id and newest["t1"] == first.t1
    assert newest["from"] == "catalog" and 0 <= newest["t1_age_s"] < 600
    assert found["cuts"]["published"] == 1 and found["cuts"]["in_flight"] == []
    (failed,) = found["cuts"]["failed"]
    assert failed["marker_id"] == bad_id
    assert f"marker {bad_id} says 5 operations since the previous marker" in failed["reason"]
    by_partition = {e["origin"]["partition"]: e for e in found["dead_letters"]["newest"]}
    letter, stale = by_partition[1], by_partition[2]
    assert "single-object" in letter["reason"] and letter["origin"]["topic"] == topics.ops
    assert letter["record_type"] is None
    assert f"duplicated marker id {first.marker_id}" in stale["reason"]
    assert stale["record_type"] == "ConsistencyMarker" and stale["origin"]["topic"] == topics.ops
    lag = found["group_lag"]["partitions"]
    assert sorted(lag) == [str(p) for p in range(PARTITIONS)]
    assert all(r["lag"] >= 0 and r["committed"] is not None for r in lag.values()), lag

    text = pipeline.cli("status", *kafka)
    assert text.returncode == 0, text.stderr
    assert f"newest backup: marker {first.marker_id}" in text.stdout
    assert f"failed: marker {bad_id}" in text.stdout and "dead letters: 2" in text.stdout

    listed = pipeline.cli("dlq", *kafka, "--json")
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    assert letters["count"] == 2 and letters["topic"] == topics.dead_letter
    assert {e["reason"] for e in letters["dead_letters"]} == {letter["reason"], stale["reason"]}

    def show(offset: int) -> dict:
        shown = pipeline.cli("dlq", *kafka, "--show", str(offset), "--json")
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)

    full = show(letter["offset"])
    assert bytes.fromhex(full["value_hex"]) == b"not avro at all"
    assert bytes.fromhex(full["key_hex"]) == b"garbage"
    full = show(stale["offset"])
    assert full["record"]["marker_id"] == first.marker_id and full["record"]["seq"] == 0
    assert bytes.fromhex(full["key_hex"]) == b"by-hand"
    missing = pipeline.cli("dlq", *kafka, "--show", "999")
    assert missing.returncode == 1 and "no dead letter at offset 999" in missing.stderr

    # capture stopped: what the primary commits now waits, and status --db says how much
    assert capture.stop() == 0, capture.tail()
    for i in range(4):
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = ?", (i,))
    status_with_db = pipeline.cli("status", *kafka, "--db", str(pipeline.db), "--json")
    assert status_with_db.returncode == 0, status_with_db.stderr
    backlog = json.loads(status_with_db.stdout)["capture_backlog"]
    assert backlog["changes"] == 4 and backlog["oldest_age_s"] >= 0, backlog
    conn.close()
    assert replicator.stop() == 0, replicator.tail()


def test_status_dlq_and_replay_of_an_unknown_source_say_so_and_create_nothing(
    pipeline: Pipeline,
) -> None:
    """A typo'd --source: one line naming the closest source that exists; no topic made."""
    real = Topics(pipeline.source + "-real")
    ensure_topics(pipeline.bootstrap, source_topic_specs(real, 1))  # as after its capture
    typo = pipeline.source + "-reel"
    kafka = ("--source", typo, "--bootstrap-servers", pipeline.bootstrap)
    replay = ("replay", "--replica", str(pipeline.replica), "--backups", str(pipeline.backups))
    for command in (("status",), ("dlq",), replay):
        result = pipeline.cli(*command, *kafka)
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert f"source '{typo}' has no topics on this cluster" in line, line
        assert f"sources here: {real.source}" in line, line
    topics = make_admin(pipeline.bootstrap).list_topics(timeout=10).topics
    assert not [t for t in topics if typo in t], "nothing was created"
    assert not pipeline.backups.exists() and not pipeline.replica.exists()
