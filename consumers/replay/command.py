"""``run_replay``: check the options and the topic, then run the engine on the ops topic."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from consumers.digest_proof import ControlTopicDigests
from consumers.history import (
    HistoryGone,
    PartitionHistory,
    TopicIdentity,
    check_history,
    ops_topic_id_path,
)
from consumers.replay.config import ReplayConfig, ReplayError, replay_group
from consumers.replay.engine import ReplayEngine
from consumers.replay.feed import KafkaFeed
from consumers.replay.replica_dir import prepare_replica
from consumers.replay.report import ReplayReport, ReplayStatus, format_ids
from cutline.errors import ConfigError
from cutline.kafka_clients import make_admin, wait_for_cluster
from cutline.settings import Topics
from cutline.source_names import no_such_source
from cutline.stopping import interruptible

log = logging.getLogger("cutline.replay")

REPLAY_REMEDY = (
    "replay needs the topic kept forever (retention.ms=-1, as cutline creates it); capture "
    "into a new --source to start a history that is whole"
)


def ops_partitions(bootstrap: str, topic: str, source: str) -> int:
    """The ops topic's partition count; replay never creates topics."""
    every = make_admin(bootstrap).list_topics(timeout=10).topics
    if (unknown := no_such_source(source, every)) is not None:
        raise ReplayError(f"{unknown}; nothing to replay")
    found = every.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ReplayError(
            f"topic {topic} does not exist, so there is nothing to replay for source "
            f"{source!r}: check --source and --bootstrap-servers"
        )
    return len(found.partitions)


def check_whole_history(bounds: dict[int, tuple[int, int]], topic: str) -> None:
    """Refuse a topic whose history no longer starts at offset 0 (every replay shard is new).

    Records deleted from the start of a partition (by ``retention.ms``, ``retention.bytes``
    or DeleteRecords) took rows with them: a replica rebuilt without them would be short,
    and every backup written from it wrong even where the marker counts match.
    """
    histories = [PartitionHistory(p, start, end, 0) for p, (start, end) in sorted(bounds.items())]
    try:
        check_history(histories, topic, REPLAY_REMEDY)
    except HistoryGone as exc:
        raise ReplayError(
            f"{topic} no longer holds its whole history, so the replica cannot be rebuilt "
            f"exactly and no backup was written:\n{exc}"
        ) from None


def run_replay(
    config: ReplayConfig,
    stop: threading.Event,
    *,
    progress: Callable[[str], None] | None = None,
    on_status: Callable[[ReplayStatus], None] | None = None,
) -> ReplayReport:
    """Replay the ops topic of ``config.source`` into fresh shards and backups."""
    say = progress or log.info
    if (
        config.from_marker is not None
        and config.until_marker is not None
        and config.from_marker > config.until_marker
    ):
        raise ConfigError(
            f"--from-marker {config.from_marker} is after --until-marker {config.until_marker}"
        )
    if config.full_every < 1:
        raise ConfigError("--full-every must be at least 1")
    created = not Path(config.backups_dir).exists()
    try:
        Path(config.backups_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--backups {config.backups_dir} cannot be used: {exc}") from exc
    if not os.access(config.backups_dir, os.W_OK):
        raise ConfigError(f"--backups {config.backups_dir} is not writable")
    topics = Topics(config.source)
    try:
        with interruptible():  # start-up waits end at once on SIGINT/SIGTERM
            wait_for_cluster(config.bootstrap, deadline_s=10.0)
            partitions = ops_partitions(config.bootstrap, topics.ops, config.source)
    except BaseException:
        if created:  # a typo'd --source leaves nothing behind, here either (only if empty)
            with contextlib.suppress(OSError):
                Path(config.backups_dir).rmdir()
        raise
    group = replay_group(config.source)
    feed = KafkaFeed(config.bootstrap, topics.ops, partitions, group)
    try:
        with interruptible():
            bounds = feed.bounds()
        check_whole_history(bounds, topics.ops)  # before --force deletes anything
        prepare_replica(config.replica_dir, config.source, force=config.force, progress=say)
        identity = TopicIdentity(
            config.bootstrap, topics.ops, ops_topic_id_path(config.replica_dir, config.source)
        )
        if (topic_id := identity.current()) is not None:
            identity.record(topic_id)  # the rebuilt shards' offsets refer to this topic
        total = sum(max(0, end - start) for start, end in bounds.values())
        say(
            f"replaying {topics.ops} ({partitions} partitions, {total:,} records up to the "
            f"current end, group {group}) into {config.replica_dir}, backups under "
            f"{config.backups_dir}"
        )
        feed.start({p: start for p, (start, _) in bounds.items()})
        proof = ControlTopicDigests(config.bootstrap, config.source, config.digest_timeout_s, stop)
        engine = ReplayEngine(
            config, bounds=bounds, feed=feed, progress=say, on_status=on_status, proof=proof
        )
        report = engine.run(stop)
    finally:
        feed.close()
    if report.until_found is False and not report.interrupted:
        known = sorted(engine.cuts)
        raise ReplayError(
            f"--until-marker {config.until_marker} is not in {topics.ops} (markers seen: "
            f"{format_ids(known)}); {report.summary()}"
        )
    return report
