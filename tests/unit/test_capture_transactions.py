"""Capture's transaction handling without a broker: a stand-in producer fails commits the
ways Kafka does during a leader change or broker loss, and capture must publish every
batch exactly once, restore its counts, or stop loudly (fenced, too long, too large)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from cutline.errors import BrokerError
from producers.capture import Capture, CaptureConfig, RecordTooLarge
from producers.markers import request_marker
from producers.operations import TableLayout
from producers.sources import Start, StartPlan, install_source
from producers.sqlite_changelog import connect, describe_table, read_changes
from schemas.codec import decode
from schemas.records import CapturePosition, ConsistencyMarker, MarkerDigest, Operation

PARTITIONS = 3


class StandInProducer:
    """Records what each transaction produced; fails the next commits or aborts on demand."""

    def __init__(self, commit_errors=(), abort_error=None):
        self.commit_errors = list(commit_errors)
        self.abort_error = abort_error
        self.pending: list[tuple[str, bytes, int]] = []
        self.committed: list[list[tuple[str, bytes, int]]] = []
        self.aborted = 0

    def begin_transaction(self) -> None:
        self.pending = []

    def produce(self, topic, value, key, partition) -> None:
        self.pending.append((topic, value, partition))

    def poll(self, timeout=0) -> int:
        return 0

    def commit_transaction(self, timeout=None) -> None:
        if self.commit_errors:
            raise KafkaException(self.commit_errors.pop(0))
        self.committed.append(self.pending)
        self.pending = []

    def abort_transaction(self, timeout=None) -> None:
        if self.abort_error is not None:
            raise KafkaException(self.abort_error)
        self.aborted += 1
        self.pending = []

    def purge(self) -> None:
        self.pending = []

    def flush(self, timeout=None) -> int:
        return 0


def abortable(reason: str = "leader changed") -> KafkaError:
    return KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, reason, txn_requires_abort=True)


@pytest.fixture
def primary(tmp_path: Path) -> Path:
    db = tmp_path / "primary.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(20)])
    conn.commit()
    conn.close()
    return db


def make_capture(db: Path, producer: StandInProducer, **config) -> Capture:
    """A capture whose Kafka side is the stand-in (what ``open`` would have set up)."""
    capture = Capture(
        CaptureConfig(str(db), ["t"], "unused:9092", source="s", **config), progress=lambda m: None
    )
    conn = connect(db)
    conn.execute("BEGIN IMMEDIATE")
    install_source(conn, "s", ["t"], StartPlan(Start.FRESH, 0), last_marker=0)
    conn.execute("COMMIT")
    capture._conn = conn
    capture._layouts = {"t": TableLayout.of(describe_table(conn, "s", "t"))}
    capture.partitions = PARTITIONS
    capture._counts = [0] * PARTITIONS
    capture._producer = producer
    return capture


def published(producer: StandInProducer) -> list:
    return [decode(value) for batch in producer.committed for _, value, _ in batch]


def test_an_aborted_transaction_is_published_again_once(primary: Path) -> None:
    producer = StandInProducer(commit_errors=[abortable()])
    capture = make_capture(primary, producer)
    request_marker(capture._conn)

    assert capture.step() == 0, "the failed batch is not counted as published"
    assert producer.aborted == 1 and producer.committed == []
    assert (capture._seq, capture._marker_id, capture._counts) == (0, 0, [0] * PARTITIONS)
    assert capture.stats.retried == 1

    assert capture.step() == 22  # 20 rows, the marker and its digest, in one transaction
    records = published(producer)
    operations = [r for r in records if isinstance(r, Operation)]
    assert sorted(op.key["id"] for op in operations) == list(range(20)), "each row once"
    markers = [r for r in records if isinstance(r, ConsistencyMarker)]
    assert len(markers) == PARTITIONS and sum(markers[0].counts) == 20
    (digest,) = [r for r in records if isinstance(r, MarkerDigest)]
    assert digest.marker_id == markers[0].marker_id and not digest.skipped
    position = records[-1]
    assert isinstance(position, CapturePosition) and position.seq == capture._seq == 22
    assert capture.step() == 0 and len(producer.committed) == 1
    assert read_changes(capture._conn, 0, 100) == [], "forgotten only after the commit"


def capture_whose_abort_fails(primary: Path) -> Capture:
    """A capture whose commit times out and whose abort then fails too: only Kafka knows
    whether that transaction went through."""
    timeout = KafkaError(KafkaError._TIMED_OUT, "commit timed out", retriable=True)
    first = StandInProducer(
        commit_errors=[timeout], abort_error=KafkaError(KafkaError._STATE, "wrong state")
    )
    return make_capture(primary, first, transaction_timeout_s=0.0)


def test_when_even_abort_fails_the_position_is_read_back_from_kafka(
    primary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = capture_whose_abort_fails(primary)
    second = StandInProducer()
    monkeypatch.setattr(capture, "_new_producer", lambda: second)

    def recovered() -> None:  # Kafka says: that commit did go through after all
        capture._seq, capture._marker_id, capture._counts = 20, 0, [7, 7, 6]

    monkeypatch.setattr(capture, "_recover_position", recovered)
    assert capture.step() == 0
    assert capture._producer is second
    assert (capture._seq, capture._counts) == (20, [7, 7, 6]), "Kafka's word, not the guess"
    assert capture.step() == 0 and second.committed == [], "nothing is published twice"


def test_a_fenced_capture_stops_with_a_message(primary: Path) -> None:
    fenced = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    capture = make_capture(primary, StandInProducer(commit_errors=[fenced]))
    with pytest.raises(BrokerError, match="another capture process may have taken over"):
        capture.step()
    assert capture._seq == 0


def test_capture_gives_up_loudly_when_kafka_refuses_for_too_long(primary: Path) -> None:
    producer = StandInProducer(commit_errors=[abortable(), abortable("no leader")])
    capture = make_capture(primary, producer, retry_deadline_s=0.0)
    assert capture.step() == 0
    with pytest.raises(BrokerError, match=r"could not commit a Kafka transaction for .* no leader"):
        capture.step()
    assert producer.committed == [] and capture._seq == 0


def test_a_record_too_large_stops_capture_without_skipping_it(primary: Path) -> None:
    producer = StandInProducer()
    capture = make_capture(primary, producer)
    capture._max_record = 200
    assert capture.step() == 20  # the small rows fit
    capture._conn.execute("INSERT INTO t VALUES (100, ?)", ("x" * 500,))
    with pytest.raises(RecordTooLarge) as info:
        capture.step()
    message = str(info.value)
    assert "table 't'" in message and "{'id': 100}" in message
    assert "without skipping it" in message and "max.message.bytes" in message
    assert producer.aborted == 1 and len(producer.committed) == 1
    assert [r.seq for r in read_changes(capture._conn, 0, 10)] == [21], "still in the log"


def test_a_producer_that_cannot_be_restarted_yet_is_restarted_by_the_next_step(
    primary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka still away when the producer is rebuilt: capture retries, it does not stop."""
    capture = capture_whose_abort_fails(primary)
    second = StandInProducer()
    builds: list[str] = []

    def new_producer() -> StandInProducer:
        builds.append("attempt")
        if len(builds) == 1:
            raise BrokerError("cannot start a Kafka transaction for capture: no coordinator")
        return second

    recovered: list[bool] = []
    monkeypatch.setattr(capture, "_new_producer", new_producer)
    monkeypatch.setattr(capture, "_recover_position", lambda: recovered.append(True))
    request_marker(capture._conn)

    assert capture.step() == 0, "the failed batch is not counted as published"
    assert capture._producer is None and not recovered
    assert capture.step() == 22, "rebuilt, position read back, then the batch published"
    assert capture._producer is second and recovered == [True] and len(builds) == 2
    operations = [r for r in published(second) if isinstance(r, Operation)]
    assert sorted(op.key["id"] for op in operations) == list(range(20)), "each row once"
