"""Reading a source's topics without writing anything: for ``status`` and ``dlq``.

Why apart from the pipeline's consumers: these readers never join a group, never
commit and never create a topic (a typo'd ``--source`` must leave nothing behind), and
each read has a deadline, so an operator's command always answers.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import KafkaException, Message, TopicPartition

from cutline.errors import CutlineError, DeadlineExceeded
from cutline.kafka_clients import make_admin, make_consumer, wait_for_cluster
from cutline.settings import Topics
from cutline.source_names import no_such_source


class NoSuchTopic(CutlineError):
    """The topic a read-only command needs does not exist."""


def existing_topics(bootstrap: str) -> dict[str, int]:
    """Every topic on the cluster and its partition count (one metadata request)."""
    wait_for_cluster(bootstrap, deadline_s=10.0)
    metadata = make_admin(bootstrap).list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def require_topic(topics: dict[str, int], topic: str, source: str, made_by: str) -> int:
    if (unknown := no_such_source(source, topics)) is not None:
        raise NoSuchTopic(unknown)
    if topic not in topics:
        raise NoSuchTopic(
            f"topic {topic} does not exist: is --source {source} right? ({made_by} creates it)"
        )
    return topics[topic]


def reader_group(topics: Topics) -> str:
    """A group id these readers never join nor commit to, under the ACL prefix the
    coordinator's control readers already need (``cutline.<source>.control.*``)."""
    return f"{topics.control}.reader-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Range:
    low: int
    high: int  # one past the last offset

    @property
    def count(self) -> int:
        return max(0, self.high - self.low)


def watermarks(
    bootstrap: str, group: str, topic: str, partitions: int, timeout_s: float = 10.0
) -> dict[int, Range]:
    consumer = make_consumer(bootstrap, group)
    try:
        out = {}
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            out[p] = Range(low, high)
        return out
    finally:
        consumer.close()


def read_partition(
    bootstrap: str,
    group: str,
    topic: str,
    partition: int,
    start: int,
    end: int,
    deadline_s: float = 30.0,
) -> list[Message]:
    """Every record at offsets [start, end) of one partition (read committed)."""
    if start >= end:
        return []
    consumer = make_consumer(bootstrap, group)
    tp = TopicPartition(topic, partition, start)
    consumer.assign([tp])
    out: list[Message] = []
    stop = time.monotonic() + deadline_s
    try:
        while time.monotonic() < stop:
            message = consumer.poll(0.5)
            if message is None:
                # records of aborted transactions are never delivered: go by the position
                if consumer.position([TopicPartition(topic, partition)])[0].offset >= end:
                    return out
                continue
            if message.error():
                continue
            if message.offset() >= end:
                return out
            out.append(message)
            if message.offset() >= end - 1:
                return out
        raise DeadlineExceeded(
            f"reading {topic}[{partition}] offsets {start}..{end - 1} took over {deadline_s:.0f} s"
        )
    finally:
        consumer.close()


def group_committed(
    bootstrap: str, group: str, topic: str, partitions: int, timeout_s: float = 10.0
) -> dict[int, int]:
    """The group's committed offsets (without joining the group); absent: none committed."""
    consumer = make_consumer(bootstrap, group)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        try:
            found = consumer.committed(tps, timeout=timeout_s)
        except KafkaException as exc:
            raise DeadlineExceeded(
                f"the committed offsets of group {group} were not available: {exc.args[0].str()}"
            ) from exc
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}
    finally:
        consumer.close()
