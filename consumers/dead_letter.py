"""The dead-letter topic: records the pipeline cannot use, kept whole with the reason.

As in Kafka Connect, the original key and value are copied unchanged and the reason and
origin travel in headers, so nothing is lost and a person can replay or inspect them.
A dead letter is flushed to Kafka before the replica records that it moved past it.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Message, Producer

from cutline.errors import BrokerError
from cutline.kafka_errors import NotAuthorized, describe, is_authorization, write_refusals
from cutline.metrics import NO_METRICS, Metrics

log = logging.getLogger("cutline.deadletter")

REASON = "cutline.reason"
ORIGIN_TOPIC = "cutline.origin.topic"
ORIGIN_PARTITION = "cutline.origin.partition"
ORIGIN_OFFSET = "cutline.origin.offset"


class DeadLetters:
    def __init__(self, producer: Producer, topic: str, metrics: Metrics = NO_METRICS):
        self._producer = producer
        self._metrics = metrics
        self.topic = topic
        self.count = 0
        self._lock = threading.Lock()
        self._failures: list[str] = []
        self._refused = False  # an ACL is missing: retrying cannot help

    def send(self, message: Message, reason: str) -> None:
        headers = [
            (REASON, reason.encode()),
            (ORIGIN_TOPIC, (message.topic() or "").encode()),
            (ORIGIN_PARTITION, str(message.partition()).encode()),
            (ORIGIN_OFFSET, str(message.offset()).encode()),
        ]
        log.warning(
            "dead letter from %s[%s]@%s: %s",
            message.topic(),
            message.partition(),
            message.offset(),
            reason,
        )

        def delivered(err, _msg) -> None:
            if err is not None:
                with self._lock:
                    self._failures.append(describe(err, resource=self.topic, operation="Write"))
                    if is_authorization(err):
                        self._refused = True

        with write_refusals(self.topic, "writing dead letters"):
            self._producer.produce(
                self.topic, message.value(), message.key(), headers=headers, on_delivery=delivered
            )
        self.count += 1
        self._metrics.dead_letter()

    def flush(self, deadline_s: float = 30.0) -> None:
        """Block until every dead letter sent so far is durable, or raise."""
        remaining = self._producer.flush(deadline_s)
        with self._lock:
            failures, self._failures = self._failures, []
        if self._refused and failures:
            raise NotAuthorized(f"writing dead letters: {failures[0]}")
        if remaining or failures:
            raise BrokerError(
                f"could not write dead letters to {self.topic} within {deadline_s:.0f} s "
                f"({remaining} pending, errors: {failures[:3]})"
            )
