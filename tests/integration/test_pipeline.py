"""The claim end to end on a real broker: capture -> markers -> parallel replication ->
DuckDB/Avro backups that are exactly the primary at each marker's commit boundary."""

from __future__ import annotations

import re
import threading
import time

from cutline.kafka_clients import committed_offsets
from cutline.settings import Topics
from tests.integration.pipeline import (
    TABLES,
    Pipeline,
    avro_rows,
    backup_rows,
    manifest_json,
    wait_until,
)
from tests.integration.workload import random_transactions


def _last_assignment(log: str) -> list[int]:
    found = re.findall(r"assigned partitions \[([0-9, ]*)\]", log)
    return [int(p) for p in found[-1].split(",") if p.strip()] if found else []


def test_backups_are_exact_cuts_under_concurrent_writes(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    capture = pipeline.start_capture(partitions=6)
    worker_a = pipeline.start_replicator("replicate-a")
    worker_b = pipeline.start_replicator("replicate-b")

    def split() -> bool:
        pipeline.check_alive()
        shares = [_last_assignment(w.log.read_text()) for w in (worker_a, worker_b)]
        return all(shares) and sorted(shares[0] + shares[1]) == list(range(6))

    wait_until(split, 60, "the two replication processes to share the 6 partitions")
    stop = threading.Event()
    counts: list[int] = []
    writer = threading.Thread(
        target=lambda: counts.append(random_transactions(pipeline, stop, seed=7))
    )
    conn = pipeline.connect()
    try:
        writer.start()
        for _ in range(5):
            time.sleep(0.6)
            pipeline.cut(conn)  # markers cut while the writer keeps committing
    finally:
        stop.set()
        writer.join(30)
    final = pipeline.cut(conn)  # after the writer stopped: the primary as it now is
    assert counts and counts[0] > 50, "the workload should have committed many transactions"

    published = pipeline.wait_for_backups(sorted(pipeline.oracle), deadline_s=180)

    for marker_id, expected in pipeline.oracle.items():
        backup = published[marker_id]
        in_duckdb = backup_rows(backup)
        assert set(in_duckdb) == set(TABLES)
        for table in TABLES:
            assert in_duckdb[table] == expected[table], (
                f"backup {marker_id} table {table} differs from the primary at its cut"
            )
        in_avro, headers = avro_rows(backup)
        assert in_avro == in_duckdb, f"backup {marker_id}: Avro files and DuckDB disagree"
        ticket = pipeline.tickets[marker_id]
        for table in TABLES:
            assert headers[table]["cutline.marker_id"] == str(marker_id)
            assert headers[table]["cutline.t1"] == ticket.t1
            assert headers[table]["cutline.source"] == pipeline.source
            assert headers[table]["cutline.t2"] >= ticket.t1
        assert backup.t1 == ticket.t1, "a backup is catalogued as the primary at T1"
        assert backup.t2 > backup.t1, "and was written later, at T2"

    # the final backup equals the primary as it is now (nothing written after the cut)
    assert backup_rows(published[final.marker_id]) == pipeline.state(conn)

    # offsets committed for the group: marker offset + 1 on every partition
    manifest = manifest_json(published[final.marker_id])
    expected_offsets = {int(p): o + 1 for p, o in manifest["offsets"].items()}
    assert sorted(expected_offsets) == list(range(6))
    topics = Topics(pipeline.source)
    wait_until(
        lambda: (
            committed_offsets(pipeline.bootstrap, topics.replication_group, topics.ops, 6)
            == expected_offsets
        ),
        30,
        f"committed offsets {expected_offsets}",
    )

    # both replication processes did real work: the group split the partitions
    shares = [_last_assignment(worker.log.read_text()) for worker in (worker_a, worker_b)]
    assert all(shares), f"each process should own partitions, got {shares}"
    assert sorted(shares[0] + shares[1]) == list(range(6))
    for process in (capture, worker_a, worker_b):
        assert process.stop() == 0, process.tail()
    conn.close()
