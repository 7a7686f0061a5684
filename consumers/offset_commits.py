"""Group offset commits in flight: asynchronous, each answered by Kafka or by a deadline.

Why not a synchronous commit: librdkafka defers a commit until the group coordinator is
reachable, and a synchronous one blocks its caller until then, with no deadline. In the
replicator that caller is the poll loop, which must keep routing records, handling
rebalances and noticing a stop request while a broker is away. Offsets are only a
courtesy to tools here (each shard records where it stopped), so a commit that gets no
answer in time releases the threads waiting on it, with a warning.

Who calls what: the poll loop calls :meth:`add` after ``commit(asynchronous=True)`` and
:meth:`expire` on every turn; librdkafka calls :meth:`answered` (the consumer's
``on_commit``) from inside the poll loop's ``consume``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from confluent_kafka import KafkaError, TopicPartition

log = logging.getLogger("cutline.replicator")


@dataclass
class _InFlight:
    offsets: dict[int, int]
    waiting: list[threading.Event]
    deadline: float


class PendingCommits:
    def __init__(self, deadline_s: float = 30.0):
        self.deadline_s = deadline_s
        self._in_flight: list[_InFlight] = []

    def __len__(self) -> int:
        return len(self._in_flight)

    def add(self, offsets: dict[int, int], waiting: list[threading.Event], now: float) -> None:
        """A commit of ``offsets`` was sent; ``waiting`` are released when it is answered."""
        self._in_flight.append(_InFlight(dict(offsets), list(waiting), now + self.deadline_s))

    def answered(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's ``on_commit``: release the commit it answers, saying if it failed."""
        offsets = {tp.partition: tp.offset for tp in partitions}
        match = next((c for c in self._in_flight if c.offsets == offsets), None)
        if match is None:
            return  # released at its deadline already
        self._in_flight.remove(match)
        failed = [tp for tp in partitions if tp.error is not None]
        if error is not None or failed:
            detail = error.str() if error is not None else failed[0].error.str()
            log.warning("commit of %s failed: %s", offsets, detail)
        for event in match.waiting:
            event.set()

    def expire(self, now: float) -> None:
        """Release commits Kafka has not answered within the deadline (it may still)."""
        for commit in [c for c in self._in_flight if now >= c.deadline]:
            self._in_flight.remove(commit)
            log.warning(
                "commit of %s not answered within %.0f s (group coordinator away?); going on, "
                "the replica records where each partition stopped",
                commit.offsets,
                self.deadline_s,
            )
            for event in commit.waiting:
                event.set()
