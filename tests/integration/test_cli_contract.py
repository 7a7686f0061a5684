"""The command-line contract of issue 2, exercised through the real `cutline` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest

from cutline.broker.provision import Provided
from tests.integration.pipeline import CUTLINE, Pipeline, wait_until


def test_mark_backups_and_query_speak_json(pipeline: Pipeline) -> None:
    pipeline.create_primary(accounts=10)
    pipeline.start_capture(partitions=4)
    pipeline.start_replicator("replicate", "--threads", "2")
    conn = pipeline.connect()

    marked = pipeline.cli("mark", "--db", str(pipeline.db))
    assert marked.returncode == 0, marked.stderr
    first = json.loads(marked.stdout)
    assert set(first) == {"marker_id", "t1"}
    t1 = datetime.fromisoformat(first["t1"])
    assert t1.utcoffset() == timedelta(0), "T1 is reported in UTC"

    conn.execute("DELETE FROM accounts WHERE id >= 5")
    second = json.loads(pipeline.cli("mark", "--db", str(pipeline.db)).stdout)
    assert second["marker_id"] == first["marker_id"] + 1
    pipeline.wait_for_backups([first["marker_id"], second["marker_id"]])

    listed = pipeline.cli("backups", "--backups", str(pipeline.backups), "--json")
    entries = json.loads(listed.stdout)
    assert [e["marker_id"] for e in entries] == [first["marker_id"], second["marker_id"]]
    for entry in entries:
        assert set(entry) == {
            "marker_id", "t1", "t2", "source", "kind", "parent_marker_id", "tables", "files",
        }  # fmt: skip
        assert entry["source"] == pipeline.source
        assert (entry["kind"], entry["parent_marker_id"]) == ("full", None)
        assert all(os.path.isfile(f) for f in entry["files"])
    assert entries[0]["tables"]["accounts"] == 10
    assert entries[1]["tables"]["accounts"] == 5
    assert entries[0]["t1"] == first["t1"]

    def query(*args: str) -> list[dict]:
        result = pipeline.cli(
            "query", "--backups", str(pipeline.backups), "--source", pipeline.source,
            "--json", *args, "SELECT count(*) AS n FROM accounts",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert query("--marker", str(first["marker_id"])) == [{"n": 10}]
    assert query() == [{"n": 5}], "without a selector: the newest backup"
    between = (t1 + (datetime.fromisoformat(second["t1"]) - t1) / 2).isoformat()
    assert query("--as-of", between) == [{"n": 10}], "as-of picks the newest T1 <= T"
    assert query("--as-of", second["t1"]) == [{"n": 5}]

    too_early = pipeline.cli(
        "query", "--backups", str(pipeline.backups), "--source", pipeline.source,
        "--as-of", "2001-01-01T00:00:00Z", "SELECT 1",
    )  # fmt: skip
    assert too_early.returncode == 1 and "no backup" in too_early.stderr

    write = pipeline.cli(
        "query", "--backups", str(pipeline.backups), "--source", pipeline.source,
        "DELETE FROM accounts",
    )  # fmt: skip
    assert write.returncode == 1 and "read-only" in write.stderr
    conn.close()


def test_kafka_start_reuses_the_running_local_broker(cluster: Provided) -> None:
    """`cutline kafka start` prints the bootstrap servers last, and a second start reuses."""
    if cluster.kind != "local":
        pytest.skip(f"the suite runs on a {cluster.kind} cluster, not a local broker to reuse")
    result = subprocess.run(
        [*CUTLINE, "kafka", "start"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == cluster.bootstrap_servers
    assert "reus" in result.stderr.lower()


def test_help_teaches_every_command() -> None:
    for command in [
        "kafka", "capture", "mark", "sources", "migrate", "replicate", "replay", "backups", "query",
        "restore", "diff", "verify", "prune", "demo", "status", "dlq",
    ]:  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "cutline.cli", command, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0
        assert "usage: cutline" in result.stdout


def test_mark_every_cuts_markers_on_its_own(pipeline: Pipeline) -> None:
    """`capture --mark-every` commits marker requests itself; each becomes a backup."""
    pipeline.create_primary(accounts=5)
    pipeline.start_capture(4, "--mark-every", "0.5")
    pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    conn.execute("UPDATE accounts SET balance = 7 WHERE id = 1")

    def two_backups() -> list[int]:
        pipeline.check_alive()
        return sorted(pipeline.published())[:2] if len(pipeline.published()) >= 2 else []

    first, second = wait_until(two_backups, 60, "two backups cut by --mark-every")
    assert second > first
    requested = conn.execute(
        "SELECT count(*) FROM _cutline_markers WHERE note = 'mark-every'"
    ).fetchone()[0]
    assert requested >= 2, "the markers were requested as rows on the primary"
    conn.close()


def test_replicate_started_before_capture_waits_for_the_topics(pipeline: Pipeline) -> None:
    """Start order does not matter: replication waits for capture's ops topic."""
    pipeline.create_primary(accounts=3)
    pipeline.start_replicator("replicate-first")
    time.sleep(2)
    pipeline.check_alive()
    pipeline.start_capture(partitions=3)
    ticket = pipeline.cut(pipeline.connect())
    pipeline.wait_for_backups([ticket.marker_id])
    log = pipeline.processes[0].log.read_text()
    assert "waiting up to" in log and f"cutline capture --source {pipeline.source}" in log


def test_demo_runs_the_whole_pipeline_on_the_suites_broker(kafka: str, tmp_path) -> None:
    """What `make demo` runs, on the suite's broker: every step, every backup consistent."""
    result = subprocess.run(
        [sys.executable, "-m", "cutline.cli", "demo", "--workdir", str(tmp_path / "demo"),
         "--markers", "3", "--bootstrap-servers", kafka],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in ("cutline verify", "cutline diff", "--all", "cutline restore"):
        assert step in out, step
    assert "3 intact, 0 damaged" in out, out
    assert out.strip().splitlines()[-1] == "OK: 3 consistent backups, total 20000 in each"
