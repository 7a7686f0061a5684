"""``cutline replay``: rebuild the replica and the backups from the ops topic's history.

The ops topic is kept forever, so every cut still in it can be written again: when the
backup store is lost, or to produce backups in a new place.

It stays out of a running ``cutline replicate``'s way: it reads with its own group id
(``cutline.<source>.replay.<uuid>``) through ``assign()``, commits no offsets, has no
producer at all (so it writes neither to the control topic nor to the dead letters), and
writes backup M only while holding the backups directory's writer lock, after checking
that nobody wrote M meanwhile.

Modules: ``config`` (options, errors), ``report`` (what a replay did), ``replica_dir``
(the shards it rebuilds), ``feed`` (reading the ops topic), ``engine`` (applying records
and aligning cuts locally), ``command`` (``run_replay``, which ties them together).
"""

from consumers.replay.command import check_whole_history, run_replay
from consumers.replay.config import ReplayConfig, ReplayError, replay_group
from consumers.replay.engine import ReplayEngine
from consumers.replay.feed import Feed, FeedItem, KafkaFeed
from consumers.replay.replica_dir import prepare_replica
from consumers.replay.report import CutOutcome, ReplayReport, ReplayStatus

__all__ = [
    "CutOutcome",
    "Feed",
    "FeedItem",
    "KafkaFeed",
    "ReplayConfig",
    "ReplayEngine",
    "ReplayError",
    "ReplayReport",
    "ReplayStatus",
    "check_whole_history",
    "prepare_replica",
    "replay_group",
    "run_replay",
]
