"""Rows larger than Kafka's default 1 MB record limit flow through to the backup, and an
oversized record that is not cutline's goes to the dead letters whole."""

from __future__ import annotations

import random

from consumers.dead_letter import REASON
from cutline.kafka_clients import MAX_RECORD_BYTES, make_producer, topic_config, wait_for_topic
from cutline.settings import Topics
from tests.integration.pipeline import TABLES, Pipeline, backup_rows
from tests.integration.test_bad_input import _read_all


def test_rows_over_one_megabyte_are_captured_and_backed_up(pipeline: Pipeline) -> None:
    pipeline.create_primary(accounts=5)
    pipeline.start_capture(partitions=2)
    pipeline.start_replicator("replicate")
    topics = Topics(pipeline.source)
    for topic in (topics.ops, topics.dead_letter):
        wait_for_topic(pipeline.bootstrap, topic, 60, "cutline creates it")
        assert int(topic_config(pipeline.bootstrap, topic)["max.message.bytes"]) > MAX_RECORD_BYTES

    rng = random.Random(3)
    big = rng.randbytes(3 << 20)  # incompressible, so compression cannot hide the size
    conn = pipeline.connect()
    conn.execute("INSERT INTO events (kind, payload) VALUES ('big', ?)", (big,))
    conn.execute("UPDATE accounts SET avatar = ? WHERE id = 1", (rng.randbytes(1_500_000),))
    conn.execute("INSERT INTO transfers (note) VALUES (?)", ("ü" * 700_000,))
    garbage = rng.randbytes(2 << 20)
    producer = make_producer(pipeline.bootstrap)
    producer.produce(topics.ops, garbage, b"oversized-garbage", 1)
    assert producer.flush(30) == 0
    ticket = pipeline.cut(conn)

    backup = pipeline.wait_for_backups([ticket.marker_id])[ticket.marker_id]
    rows = backup_rows(backup)
    for table in TABLES:
        assert rows[table] == pipeline.oracle[ticket.marker_id][table], table
    assert any(r[2] == big for r in rows["events"])

    letters = _read_all(pipeline.bootstrap, topics.dead_letter, expected=1)
    assert len(letters) == 1, pipeline.logs()
    assert letters[0].value() == garbage, "the oversized record is kept whole"
    assert "not an Avro single-object" in dict(letters[0].headers())[REASON].decode()
    pipeline.check_alive()
    conn.close()
