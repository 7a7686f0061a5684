"""Markers that must not make a backup: a duplicated marker id, and a marker whose
operation count does not match what replication applied. Both are reported, neither
touches an existing backup, and later cuts succeed."""

from __future__ import annotations

import sqlite3

from backups.catalog import has_backup
from consumers.dead_letter import ORIGIN_PARTITION, REASON
from cutline.kafka_clients import make_producer
from cutline.settings import Topics
from producers.markers import MarkerTicket
from producers.sqlite_changelog import MARKERS, now_us
from schemas.codec import encode
from schemas.records import ConsistencyMarker
from tests.integration.pipeline import TABLES, Pipeline, backup_rows, manifest_json, wait_until
from tests.integration.test_bad_input import _read_all

PARTITIONS = 3


def _produce_everywhere(pipeline: Pipeline, marker: ConsistencyMarker) -> None:
    """A marker written by hand into every partition, outside capture's transactions."""
    producer = make_producer(pipeline.bootstrap)
    for p in range(PARTITIONS):
        producer.produce(Topics(pipeline.source).ops, encode(marker), b"by-hand", p)
    assert producer.flush(15) == 0


def _assert_backup_is_cut(pipeline: Pipeline, ticket: MarkerTicket) -> None:
    rows = backup_rows(pipeline.wait_for_backups([ticket.marker_id])[ticket.marker_id])
    for table in TABLES:
        assert rows[table] == pipeline.oracle[ticket.marker_id][table], (ticket, table)


def _reserve_marker_id(pipeline: Pipeline) -> int:
    """The next marker id, taken on the primary so capture never uses it itself."""
    with sqlite3.connect(pipeline.db) as conn:
        cursor = conn.execute(f"INSERT INTO {MARKERS}(t1_us, note) VALUES (?, 'test')", (now_us(),))
        return int(cursor.lastrowid or 0)


def test_a_duplicated_marker_id_is_set_aside_and_backup_m_stays(pipeline: Pipeline) -> None:
    pipeline.create_primary()
    pipeline.start_capture(PARTITIONS)
    replicator = pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    _assert_backup_is_cut(pipeline, first)
    manifest = manifest_json(pipeline.published()[first.marker_id])

    # marker `first` again, by hand, into every partition, claiming other counts and T1
    duplicate = ConsistencyMarker(
        pipeline.source, first.marker_id, now_us(), 0, PARTITIONS, (0,) * PARTITIONS, tuple(TABLES)
    )
    _produce_everywhere(pipeline, duplicate)
    conn.execute("UPDATE accounts SET balance = balance + 7 WHERE id < 5")
    second = pipeline.cut(conn)
    _assert_backup_is_cut(pipeline, second)

    after = pipeline.published()[first.marker_id]
    assert manifest_json(after) == manifest, "backup M is never rewritten"
    assert backup_rows(after) == {t: pipeline.oracle[first.marker_id][t] for t in TABLES}

    letters = _read_all(pipeline.bootstrap, Topics(pipeline.source).dead_letter, PARTITIONS)
    assert len(letters) == PARTITIONS, pipeline.logs()
    assert {dict(m.headers())[ORIGIN_PARTITION].decode() for m in letters} == {"0", "1", "2"}
    for letter in letters:
        reason = dict(letter.headers())[REASON].decode()
        assert f"duplicated marker id {first.marker_id}" in reason, reason
        assert letter.value() == encode(duplicate), "the record is kept whole"
    assert "duplicated marker id" in replicator.log.read_text(), "reported in the log too"
    pipeline.check_alive()
    conn.close()


def test_a_marker_whose_count_is_wrong_fails_its_cut_and_later_cuts_succeed(
    pipeline: Pipeline,
) -> None:
    pipeline.create_primary()
    pipeline.start_capture(PARTITIONS)
    replicator = pipeline.start_replicator("replicate")
    conn = pipeline.connect()
    first = pipeline.cut(conn)
    _assert_backup_is_cut(pipeline, first)

    # nothing was written since `first`, but this marker claims 5 operations on partition 0
    bad_id = _reserve_marker_id(pipeline)
    counts = (5,) + (0,) * (PARTITIONS - 1)
    bad = ConsistencyMarker(pipeline.source, bad_id, now_us(), 0, PARTITIONS, counts, tuple(TABLES))
    _produce_everywhere(pipeline, bad)
    wait_until(
        lambda: f"cut {bad_id} failed" in replicator.log.read_text(),
        60,
        f"cut {bad_id} to be reported failed\n{pipeline.logs()}",
    )
    log = replicator.log.read_text()
    assert f"marker {bad_id} says 5 operations since the previous marker" in log
    assert "the replica applied 0" in log

    conn.execute("UPDATE accounts SET balance = balance - 2 WHERE id < 8")
    conn.execute("INSERT INTO events (kind, payload) VALUES ('after', x'01')")
    later = pipeline.cut(conn)
    _assert_backup_is_cut(pipeline, later)
    assert not has_backup(pipeline.backups, pipeline.source, bad_id), "a failed cut has no backup"
    pipeline.check_alive()
    conn.close()
