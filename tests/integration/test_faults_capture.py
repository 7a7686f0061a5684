"""SIGKILL of capture inside its Kafka transaction, then a restart: no half marker on the
topic, no change published twice or lost, backups equal to the primary at each cut."""

from __future__ import annotations

import threading

import pytest

from cutline.failpoints import ENV
from cutline.settings import Topics
from tests.integration.ops_log import (
    assert_markers_whole,
    assert_no_change_twice,
    marker_placement,
    read_topic,
    replica_rows,
)
from tests.integration.pipeline import (
    TABLES,
    Pipeline,
    Process,
    backup_rows,
    primary_columns,
    wait_until,
)
from tests.integration.workload import writes

PARTITIONS = 4

TORN = "capture.marker_produced[1]=stall:120"

# Each capture run dies at one of these points; the last run has no failpoint.
KILLS = [
    "capture.batch_produced=kill@3",  # a batch's operations produced, nothing committed
    "capture.before_marker=kill",  # a batch's operations produced, its marker next
    # the marker reached partitions 0 and 1, not 2, 3: capture stalls there and is killed
    # once the log shows that half marker (a fixed pause would race the producer's send)
    TORN,
    "capture.marker_produced[3]=kill",  # the marker's records all produced, no commit yet
    "capture.before_commit=kill@4",  # operations, marker and position produced, no commit
    "capture.after_commit=kill@3",  # committed in Kafka, not yet forgotten on the primary
]


def _torn_marker_logged(pipeline: Pipeline) -> bool:
    """A marker in some partitions of the ops topic but not all, read uncommitted."""
    entries = read_topic(
        pipeline.bootstrap, Topics(pipeline.source).ops, PARTITIONS, committed_only=False
    )
    return any(len(counts) < PARTITIONS for counts in marker_placement(entries).values())


def _killed(pipeline: Pipeline, process: Process, conn, what: str) -> None:
    """Cut markers until the capture process dies by SIGKILL; then forget it.

    A stalled capture is killed here, once the log shows the half marker it stalled in.
    """

    def dead() -> bool:
        if process.popen.poll() is None:
            pipeline.cut(conn)
            if what == TORN and _torn_marker_logged(pipeline):
                process.popen.kill()
                process.popen.wait(10)
            return False
        return True

    wait_until(dead, 60, f"capture to be killed at {what}", poll_s=0.3)
    assert process.popen.returncode == -9, (
        f"{what}: exit {process.popen.returncode}\n{process.tail()}"
    )
    pipeline.processes.remove(process)


def test_capture_killed_inside_its_transaction_resumes_exactly(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.create_primary()
    pipeline.start_replicator("replicate")
    stop = threading.Event()
    writer = threading.Thread(target=writes, args=(pipeline, stop, 11), daemon=True)
    conn = pipeline.connect()
    try:
        for index, spec in enumerate(KILLS):
            monkeypatch.setenv(ENV, spec)
            capture = pipeline.start_capture(PARTITIONS)
            monkeypatch.delenv(ENV)
            if index == 0:
                writer.start()
            _killed(pipeline, capture, conn, spec)
    finally:
        stop.set()
        writer.join(30)
    capture = pipeline.start_capture(PARTITIONS)
    final = pipeline.cut(conn)
    published = pipeline.wait_for_backups(sorted(pipeline.oracle), deadline_s=150)

    for marker_id, expected in pipeline.oracle.items():
        rows = backup_rows(published[marker_id])
        for table in TABLES:
            assert rows[table] == expected[table], f"backup {marker_id}, table {table}"
    assert len(pipeline.oracle) >= len(KILLS) + 1

    topics = Topics(pipeline.source)
    committed = read_topic(pipeline.bootstrap, topics.ops, PARTITIONS)
    placed = assert_markers_whole(committed, PARTITIONS)
    assert set(placed) == set(pipeline.oracle), "every marker cut is on the topic, once"
    assert assert_no_change_twice(committed) > 0

    # the kills really left parts of transactions in the log, which readers never saw
    uncommitted = read_topic(pipeline.bootstrap, topics.ops, PARTITIONS, committed_only=False)
    torn = {
        marker_id: dict(counts)
        for marker_id, counts in marker_placement(uncommitted).items()
        if set(counts.values()) != {1} or len(counts) != PARTITIONS
    }
    assert torn, "the kill inside a marker should have left an aborted partial marker"

    # drained, the replica is the primary
    columns = {t: primary_columns(conn, t) for t in TABLES}
    assert replica_rows(pipeline.replica, pipeline.source, PARTITIONS, columns) == (
        pipeline.state(conn)
    )
    assert pipeline.oracle[final.marker_id] == pipeline.state(conn)
    assert capture.stop() == 0, capture.tail()
    conn.close()
