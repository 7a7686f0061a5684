"""Does the ops topic still hold the history a replica shard needs? One check, two callers.

Why: a shard resumes at its next offset (saved offset + 1, or 0 for a new shard). If the
records before that offset were deleted (``retention.ms``, ``retention.bytes`` or
DeleteRecords), the rows they carried are missing from the shard and from every backup
written from it, while the marker counts still match. If the shard's offset is beyond the
partition's end, the topic was recreated (a new cluster, a deleted topic): every record of
the new topic sits below the shard's offset, is skipped as "already applied", and the cut
waits forever. Both must stop replication loudly instead. ``replicate`` checks on every
assignment and whenever a fetch offset falls out of the log; ``replay`` checks before it
touches anything (its shards are all new). A topic recreated and already written past the
shards' offsets is told apart by its topic id (:class:`TopicIdentity`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition

from consumers.replica import STATE, open_readonly, shard_path
from cutline.errors import CutlineError, DeadlineExceeded
from cutline.kafka_clients import make_admin, topic_config

log = logging.getLogger("cutline.history")

INFINITE = "-1"


class HistoryGone(CutlineError):
    """The ops topic no longer holds records a replica shard needs (exit status 1)."""


@dataclass(frozen=True)
class PartitionHistory:
    """Where one partition's log starts and ends, and where its shard resumes."""

    partition: int
    log_start: int  # low watermark: the first offset still in the topic
    log_end: int  # high watermark: the next offset to be written
    resume_at: int  # the shard's next offset (saved offset + 1), 0 for a new shard


def history_problem(h: PartitionHistory, topic: str, remedy: str) -> str | None:
    """One line saying why partition ``h.partition`` cannot be replicated exactly, or None."""
    if h.resume_at > h.log_end:
        return (
            f"{topic} partition {h.partition} ends at offset {h.log_end:,} but the replica "
            f"shard resumes at offset {h.resume_at:,}: the topic was recreated (a new cluster "
            "or a deleted topic), so the shard belongs to a history that is no longer there; "
            + remedy
        )
    if h.log_start > h.resume_at:
        needs = f"the replica shard needs it from offset {h.resume_at:,}"
        if h.resume_at == 0:
            needs = "a new shard needs it from offset 0"
        return (
            f"{topic} partition {h.partition} starts at offset {h.log_start:,} but {needs}: "
            "records were deleted (retention or DeleteRecords) and the rows they carried "
            "would be missing from every backup; " + remedy
        )
    return None


RESUME_REMEDY = (
    "replication stops here, before a backup goes without those rows. Capture into a new "
    "--source (its initial snapshot carries every row) and replicate that; if the topic is "
    "intentionally new, move this replica's shard files away so they are rebuilt from it; "
    "keep ops topics with retention.ms=-1"
)


def check_history(histories: list[PartitionHistory], topic: str, remedy: str) -> None:
    """Raise HistoryGone with one line per partition whose history is not all there."""
    problems = [p for h in histories if (p := history_problem(h, topic, remedy)) is not None]
    if problems:
        raise HistoryGone("\n".join(problems))


def watermarks(
    consumer: Consumer, topic: str, partitions: list[int], deadline_s: float = 30.0
) -> dict[int, tuple[int, int]]:
    """(log start, log end) of each partition, asked of the brokers (never cached)."""
    out: dict[int, tuple[int, int]] = {}
    end = time.monotonic() + deadline_s
    for p in partitions:
        tp = TopicPartition(topic, p)
        while p not in out:
            try:
                remaining = max(1.0, min(5.0, end - time.monotonic()))
                out[p] = consumer.get_watermark_offsets(tp, timeout=remaining, cached=False)
            except KafkaException as exc:
                if time.monotonic() > end:
                    raise DeadlineExceeded(
                        f"no answer for the start and end offsets of {topic} partition {p} "
                        f"within {deadline_s:.0f} s ({exc.args[0].str()}): check the brokers"
                    ) from exc
                time.sleep(0.2)
    return out


def warn_if_history_expires(bootstrap: str, topic: str, warn: Callable[[str], None]) -> bool:
    """Warn (one line) if the ops topic deletes old records; True if it does.

    Only a warning: the topic may be kept long enough, and the check on each assignment
    stops replication once records a shard needs are actually gone.
    """
    try:
        config = topic_config(bootstrap, topic)
    except (KafkaException, TimeoutError) as exc:
        reason = exc.args[0].str() if isinstance(exc, KafkaException) else str(exc)
        log.warning("could not read the retention settings of %s: %s", topic, reason)
        return False
    return warn_if_not_kept_forever(config, topic, warn)


def warn_if_not_kept_forever(
    config: dict[str, str], topic: str, warn: Callable[[str], None]
) -> bool:
    """Warn (one line) if ``topic`` deletes old records; True if it does."""
    finite = {
        key: config.get(key)
        for key in ("retention.ms", "retention.bytes")
        if config.get(key) not in (None, INFINITE)
    }
    if not finite:
        return False
    settings = ", ".join(f"{k}={v}" for k, v in finite.items())
    warn(
        f"warning: {topic} has {settings}, so Kafka deletes its old records; a new replica "
        f"shard and `cutline replay` need the whole history, and replication stops once it "
        f"is gone. Keep it forever: kafka-configs --alter --entity-type topics --entity-name "
        f"{topic} --add-config retention.ms=-1,retention.bytes=-1"
    )
    return True


@dataclass(frozen=True)
class TopicIdentity:
    """The ops topic's Kafka topic id, recorded beside the shards whose offsets refer to it.

    Why: a topic recreated and written past a shard's offset looks, by offsets alone, like
    the old one; records would be skipped or applied on top of another history. Kafka gives
    every topic a new id when it is created, so a changed id tells it apart.
    """

    bootstrap: str
    topic: str
    path: Path  # <replica>/<source>/ops-topic-id

    def current(self) -> str | None:
        """The topic's id now, or None if the cluster did not say (then nothing is checked)."""
        admin = make_admin(self.bootstrap)  # referenced until its future is done
        try:
            futures = admin.describe_topics(TopicCollection([self.topic]), request_timeout=10)
            return str(futures[self.topic].result(timeout=15).topic_id)
        except (KafkaException, TimeoutError) as exc:
            log.warning("could not read the topic id of %s: %s", self.topic, exc)
            return None

    def recorded(self) -> str | None:
        try:
            return self.path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def record(self, topic_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(topic_id + "\n")
        os.replace(tmp, self.path)

    def problem(self, resume_at: dict[int, int]) -> str | None:
        """Why shards resuming at ``resume_at`` do not belong to this topic, or None.

        Records the topic's id the first time, and again only once no shard in the
        directory (another process's included) holds anything of the old topic: the old
        shards were moved away.
        """
        now = self.current()
        if now is None or now == (before := self.recorded()):
            return None
        if before is None:
            self.record(now)
            return None
        resumed = sorted(p for p, at in resume_at.items() if at > 0)
        if resumed:
            return (
                f"{self.topic} is not the topic the replica shards of partitions {resumed} were "
                f"built from (topic id {before}, now {now}): the topic was recreated (a new "
                "cluster or a deleted topic), so the shards belong to a history that is no "
                "longer there; " + RESUME_REMEDY
            )
        if not any_shard_applied(self.path.parent):
            self.record(now)
        return None


def any_shard_applied(directory: Path) -> bool:
    """Whether a shard in ``directory`` has applied a record; True when it cannot tell."""
    for path in directory.glob("partition-*.sqlite"):
        try:
            conn = open_readonly(path)
            try:
                if (
                    conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (STATE,)
                    ).fetchone()
                    and conn.execute(f"SELECT max(offset) >= 0 FROM {STATE}").fetchone()[0]
                ):
                    return True
            finally:
                conn.close()
        except sqlite3.Error:
            return True
    return False


def refusal_on_assign(
    consumer: Consumer,
    topic: str,
    resume_at: dict[int, int],
    identity: TopicIdentity | None = None,
) -> CutlineError | None:
    """The error that must stop replication of these assigned partitions, or None.

    Called on every assignment (start-up and rebalances) before any record is applied,
    and when a partition's fetch offset falls out of the log. ``resume_at`` maps each
    partition to where its shard resumes (0 for a new shard).
    An error is returned, not raised: the rebalance callback must return, and the poll
    loop raises it.
    """
    try:
        marks = watermarks(consumer, topic, sorted(resume_at))
        histories = [
            PartitionHistory(p, *marks[p], resume_at=max(0, at)) for p, at in resume_at.items()
        ]
        check_history(sorted(histories, key=lambda h: h.partition), topic, RESUME_REMEDY)
        if identity is not None and (problem := identity.problem(resume_at)) is not None:
            raise HistoryGone(problem)
    except CutlineError as exc:
        return exc
    return None


def ops_topic_id_path(replica_dir: Path, source: str) -> Path:
    """Where a replica directory records its ops topic's id: beside the source's shards."""
    return shard_path(replica_dir, source, 0).with_name("ops-topic-id")
