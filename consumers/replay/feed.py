"""Where replay's records come from: the ops topic, read through ``assign()``.

The engine sees only :class:`Feed`, so unit tests drive it with an in-memory double.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from cutline.errors import BrokerError, DeadlineExceeded
from cutline.kafka_clients import make_consumer

log = logging.getLogger("cutline.replay")


@dataclass(frozen=True)
class FeedItem:
    """A record of the ops topic, or (``value`` None) "partition p ends at ``offset``"."""

    partition: int
    offset: int
    value: bytes | None

    @property
    def is_end(self) -> bool:
        return self.value is None


class Feed(Protocol):
    """What the replay engine reads from: the ops topic (``KafkaFeed``) or a test double."""

    def poll(self, timeout_s: float) -> list[FeedItem]: ...

    def pause(self, partition: int) -> None: ...

    def resume(self, partition: int) -> None: ...


class KafkaFeed:
    """Every partition of the ops topic through ``assign()``: no group membership, no commits."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, group_id: str):
        self.topic = topic
        self.partitions = partitions
        self._consumer = make_consumer(
            bootstrap, group_id, **{"enable.partition.eof": True, "client.id": group_id}
        )

    def bounds(self, deadline_s: float = 30.0) -> dict[int, tuple[int, int]]:
        """(first offset, end offset) of every partition now; read committed, so the end is
        the last stable offset: nothing below it belongs to an undecided transaction."""
        out: dict[int, tuple[int, int]] = {}
        end = time.monotonic() + deadline_s
        for p in range(self.partitions):
            tp = TopicPartition(self.topic, p)
            while p not in out:
                try:
                    out[p] = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                except KafkaException as exc:
                    if time.monotonic() > end:
                        raise DeadlineExceeded(
                            f"no answer for the end offsets of {self.topic} partition {p} "
                            f"within {deadline_s:.0f} s ({exc.args[0].str()})"
                        ) from exc
                    time.sleep(0.2)
        return out

    def start(self, starts: dict[int, int]) -> None:
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])

    def poll(self, timeout_s: float) -> list[FeedItem]:
        items = []
        for message in self._consumer.consume(1000, timeout_s):
            error = message.error()
            if error is None:
                items.append(FeedItem(message.partition(), message.offset(), message.value()))
            elif error.code() == KafkaError._PARTITION_EOF:
                items.append(FeedItem(message.partition(), message.offset(), None))
            elif error.fatal():
                raise BrokerError(f"reading {self.topic} failed: {error.str()}")
            else:
                log.warning("reading %s: %s", self.topic, error.str())
        return items

    def pause(self, partition: int) -> None:
        self._consumer.pause([TopicPartition(self.topic, partition)])

    def resume(self, partition: int) -> None:
        self._consumer.resume([TopicPartition(self.topic, partition)])

    def close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the replay consumer: %s", exc)
