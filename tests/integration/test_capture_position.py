"""Capture's position survives a long run of aborted transactions at the capture topic's tail.

While Kafka refuses commits (a lost transaction coordinator, say) capture aborts and
publishes the batch again, and each attempt may leave its position record, aborted, in
the capture topic. Capture, restarted, must still find the last *committed* position:
starting over from change 0 would publish every change still in the change log twice.
"""

from __future__ import annotations

from cutline.kafka_clients import ensure_topics, make_producer, source_topic_specs
from cutline.settings import Topics
from producers.capture import POSITION_KEY, read_last_position
from schemas.codec import encode
from schemas.records import CapturePosition


def _position(source: str, seq: int) -> bytes:
    return encode(CapturePosition(source, seq, seq // 10, 2, (seq, 0)))


def _aborted(producer, topics: Topics, source: str, seq: int, attempts: int) -> None:
    """Each retry of a batch Kafka would not commit: its position in the log, then an abort."""
    for attempt in range(attempts):
        producer.begin_transaction()
        producer.produce(topics.capture_position, _position(source, seq + attempt), POSITION_KEY, 0)
        producer.flush(30)  # in the log, so the abort leaves it there, aborted
        producer.abort_transaction(30)


def test_the_last_committed_position_is_found_behind_many_aborted_ones(
    kafka: str, source: str
) -> None:
    topics = Topics(source)
    ensure_topics(
        kafka, [s for s in source_topic_specs(topics, 2) if s.name == topics.capture_position]
    )
    producer = make_producer(kafka, **{"transactional.id": f"{source}.test"})
    producer.init_transactions(30)
    _aborted(producer, topics, source, 100, 3)
    assert read_last_position(kafka, topics) is None, "only aborted positions: none committed"
    producer.begin_transaction()
    producer.produce(topics.capture_position, _position(source, 120), POSITION_KEY, 0)
    producer.commit_transaction(30)
    _aborted(producer, topics, source, 200, 60)  # far more than one read of the tail

    position = read_last_position(kafka, topics)
    assert position is not None, "capture would start over from change 0"
    assert (position.seq, position.marker_id, position.counts) == (120, 12, (120, 0))
