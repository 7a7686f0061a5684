"""The one check behind `replicate` and `replay`: does the topic hold a shard's history?"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from consumers.history import (
    RESUME_REMEDY,
    HistoryGone,
    PartitionHistory,
    TopicIdentity,
    check_history,
    history_problem,
    warn_if_not_kept_forever,
)
from consumers.replica import Shard, shard_path

TOPIC = "cutline.shop.ops"


def test_a_shard_whose_history_is_all_there_passes():
    whole = [
        PartitionHistory(0, 0, 10, 0),  # new shard, topic from 0
        PartitionHistory(1, 0, 10, 10),  # shard caught up to the end
        PartitionHistory(2, 5, 10, 5),  # deleted records the shard had already applied
        PartitionHistory(3, 0, 0, 0),  # empty partition, new shard
    ]
    check_history(whole, TOPIC, RESUME_REMEDY)


def test_records_deleted_before_a_new_shard_are_refused_naming_partition_and_offsets():
    problem = history_problem(PartitionHistory(2, 1234, 2000, 0), TOPIC, RESUME_REMEDY)
    assert problem is not None
    assert "cutline.shop.ops partition 2 starts at offset 1,234" in problem
    assert "new shard needs it from offset 0" in problem
    assert "new --source" in problem and "retention.ms=-1" in problem


def test_records_deleted_past_a_shards_position_are_refused():
    problem = history_problem(PartitionHistory(0, 51, 90, 50), TOPIC, RESUME_REMEDY)
    assert problem is not None
    assert "starts at offset 51" in problem and "needs it from offset 50" in problem


def test_a_shard_beyond_the_topics_end_is_a_recreated_topic():
    problem = history_problem(PartitionHistory(1, 0, 3, 700), TOPIC, RESUME_REMEDY)
    assert problem is not None
    assert "partition 1 ends at offset 3" in problem and "resumes at offset 700" in problem
    assert "recreated" in problem and "move this replica's shard files away" in problem


def test_every_partition_with_a_problem_gets_its_own_line():
    histories = [
        PartitionHistory(0, 0, 10, 4),
        PartitionHistory(1, 8, 10, 2),
        PartitionHistory(2, 0, 1, 9),
    ]
    with pytest.raises(HistoryGone) as info:
        check_history(histories, TOPIC, RESUME_REMEDY)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "partition 1 starts at offset 8" in lines[0]
    assert "partition 2 ends at offset 1" in lines[1]


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"retention.ms": "604800000", "retention.bytes": "-1"}, "retention.ms=604800000"),
        ({"retention.ms": "-1", "retention.bytes": "1048576"}, "retention.bytes=1048576"),
    ],
)
def test_finite_retention_is_warned_in_one_line(config, named):
    said: list[str] = []
    assert warn_if_not_kept_forever(config, TOPIC, said.append)
    assert len(said) == 1 and "\n" not in said[0]
    assert named in said[0] and TOPIC in said[0] and "whole history" in said[0]


def test_infinite_retention_is_not_warned():
    said: list[str] = []
    config = {"retention.ms": "-1", "retention.bytes": "-1"}
    assert not warn_if_not_kept_forever(config, TOPIC, said.append)
    assert said == []


# -- the topic's identity: a recreated topic written past the shards' offsets ------------


@dataclass(frozen=True)
class FixedIdentity(TopicIdentity):
    """A TopicIdentity whose cluster answers ``now`` (the file logic is the real one)."""

    now: str = ""

    def current(self) -> str | None:
        return self.now


def identity(path: Path, now: str) -> FixedIdentity:
    return FixedIdentity("127.0.0.1:1", TOPIC, path, now)


def test_the_topic_id_is_recorded_the_first_time_and_then_checked(tmp_path: Path):
    path = tmp_path / "shop" / "ops-topic-id"
    assert identity(path, "id-A").problem({0: 12, 1: 0}) is None
    assert path.read_text().strip() == "id-A"
    assert identity(path, "id-A").problem({0: 12}) is None
    problem = identity(path, "id-B").problem({0: 12, 1: 0, 2: 7})
    assert problem is not None
    assert "shards of partitions [0, 2] were built from (topic id id-A, now id-B)" in problem
    assert "recreated" in problem and "new --source" in problem
    assert path.read_text().strip() == "id-A", "a refused topic is not recorded"


def test_new_shards_take_the_new_id_once_no_shard_holds_the_old_topic(tmp_path: Path):
    path = shard_path(tmp_path, "shop", 0).with_name("ops-topic-id")
    identity(path, "id-A").record("id-A")
    other = Shard(shard_path(tmp_path, "shop", 3), 3)  # another process's shard, applied
    try:
        other.begin()
        other.commit(41)
    finally:
        other.close()
    assert identity(path, "id-B").problem({0: 0}) is None  # this process: new shards
    assert path.read_text().strip() == "id-A", "partition 3 still relies on the old topic"
    for leftover in shard_path(tmp_path, "shop", 3).parent.glob("partition-0003.sqlite*"):
        leftover.unlink()  # the old shards are moved away
    assert identity(path, "id-B").problem({0: 0}) is None
    assert path.read_text().strip() == "id-B"
