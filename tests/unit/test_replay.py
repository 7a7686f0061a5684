"""The replay engine without a broker: an in-memory feed of encoded records, real shards
and real backups on disk."""

from __future__ import annotations

import itertools
import shutil
import threading
from pathlib import Path

import duckdb
import pytest

from backups.catalog import backup_dir_name, has_backup, list_backups, source_dir
from consumers.coordinator import WriterLock
from consumers.replay import (
    FeedItem,
    ReplayConfig,
    ReplayEngine,
    ReplayError,
    ReplayStatus,
    check_whole_history,
    prepare_replica,
)
from consumers.replica import open_readonly, read_state, shard_path
from cutline import cli
from cutline.errors import ConfigError
from schemas.codec import encode
from schemas.records import Column, ConsistencyMarker, Operation, OpType, TableDefinition

SOURCE = "shop"
ACCOUNTS = TableDefinition(
    SOURCE,
    "accounts",
    "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER)",
    (Column("id", "INTEGER"), Column("balance", "INTEGER")),
    ("id",),
)


class History:
    """An ops topic's partitions as capture writes them: definitions, operations, markers."""

    def __init__(self, partitions: int):
        self.records: list[list[bytes]] = [[] for _ in range(partitions)]
        self.counts = [0] * partitions
        self.marker_offsets: dict[int, list[int]] = {}
        for p in range(partitions):
            self.records[p].append(encode(ACCOUNTS))

    def upsert(self, p: int, account: int, balance: int, *, new: bool, count: bool = True):
        kind = OpType.INSERT if new else OpType.UPDATE
        op = Operation(
            SOURCE,
            1,
            "accounts",
            kind,
            {"id": account},
            None,
            {"id": account, "balance": balance},
            1,
        )
        self.records[p].append(encode(op))
        if count:
            self.counts[p] += 1

    def raw(self, p: int, value: bytes) -> None:
        self.records[p].append(value)

    def marker(self, marker_id: int, counts: list[int] | None = None) -> None:
        value = encode(
            ConsistencyMarker(
                SOURCE,
                marker_id,
                1_764_065_700_000_000 + marker_id,
                marker_id,
                len(self.records),
                tuple(self.counts if counts is None else counts),
                ("accounts",),
            )
        )
        self.marker_offsets[marker_id] = [len(r) for r in self.records]
        for records in self.records:
            records.append(value)
        self.counts = [0] * len(self.records)

    def ends(self) -> dict[int, tuple[int, int]]:
        return {p: (0, len(r)) for p, r in enumerate(self.records)}


class ListFeed:
    """Delivers partition 0's whole history, then partition 1's, ...: the most uneven
    order, so alignment must hold partitions that run ahead. Then an end event each."""

    def __init__(self, records: list[list[bytes]], chunk: int = 3):
        self.items = [
            FeedItem(p, o, v) for p, values in enumerate(records) for o, v in enumerate(values)
        ]
        self.items += [FeedItem(p, len(values), None) for p, values in enumerate(records)]
        self.chunk = chunk
        self.paused: set[int] = set()
        self.pauses = 0

    def poll(self, timeout_s: float) -> list[FeedItem]:
        out = [i for i in self.items if i.partition not in self.paused][: self.chunk]
        for item in out:
            self.items.remove(item)
        return out

    def pause(self, partition: int) -> None:
        self.paused.add(partition)
        self.pauses += 1

    def resume(self, partition: int) -> None:
        self.paused.discard(partition)


def config(tmp_path: Path, **overrides) -> ReplayConfig:
    values = {
        "bootstrap": "unused:1",
        "replica_dir": tmp_path / "replica",
        "backups_dir": tmp_path / "backups",
        "source": SOURCE,
        "idle_timeout_s": 5.0,
        "member": "replay-test",
    }
    values.update(overrides)
    return ReplayConfig(**values)


def replay(cfg: ReplayConfig, history: History, *, bounds=None, feed=None, messages=None):
    engine = ReplayEngine(
        cfg,
        bounds=bounds or history.ends(),
        feed=feed or ListFeed(history.records),
        progress=(messages.append if messages is not None else None),
    )
    return engine, engine.run(threading.Event())


def balances(cfg: ReplayConfig, marker_id: int) -> list[tuple]:
    backup = {b.marker_id: b for b in list_backups(cfg.backups_dir, SOURCE)}[marker_id]
    conn = duckdb.connect(str(backup.duckdb_path), read_only=True)
    try:
        return conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall()
    finally:
        conn.close()


def two_cuts() -> History:
    h = History(2)
    h.upsert(0, 1, 100, new=True)
    h.upsert(1, 2, 200, new=True)
    h.marker(1)
    h.upsert(0, 1, 110, new=False)
    h.upsert(0, 3, 300, new=True)
    h.marker(2)
    h.upsert(1, 2, 999, new=False)  # after the last marker: in no backup
    return h


def test_every_marker_gets_a_backup_equal_to_the_cut(tmp_path):
    cfg = config(tmp_path)
    _, report = replay(cfg, two_cuts())
    assert report.written == [1, 2]
    assert report.failed == {} and report.skipped == 0
    assert balances(cfg, 1) == [(1, 100), (2, 200)]
    assert balances(cfg, 2) == [(1, 110), (2, 200), (3, 300)]
    assert report.applied == 5
    assert report.records == sum(end for _, end in two_cuts().ends().values())
    # the replica went on to the end offsets, and no shard is left held
    for p in (0, 1):
        conn = open_readonly(shard_path(cfg.replica_dir, SOURCE, p))
        st = read_state(conn, p)
        conn.close()
        assert st is not None and not st.held and st.marker_id == 2


def test_a_partition_ahead_is_held_at_the_marker(tmp_path):
    """Partition 0 is delivered whole first; its change after marker 1 must not leak into
    backup 1 (the engine holds it until partition 1 reaches marker 1)."""
    h = History(2)
    h.upsert(0, 1, 100, new=True)
    h.marker(1)
    for balance in range(1, 9):  # more than the queue bound, all behind the held marker
        h.upsert(0, 1, balance, new=False)
    h.upsert(1, 2, 7, new=True)
    h.marker(2)
    cfg = config(tmp_path, queue_high=4)
    feed = ListFeed(h.records, chunk=2)
    _, report = replay(cfg, h, feed=feed)
    assert report.written == [1, 2]
    assert balances(cfg, 1) == [(1, 100)]
    assert balances(cfg, 2) == [(1, 8), (2, 7)]
    assert feed.pauses > 0, "a full queue behind a held partition should pause its fetching"


def test_a_count_mismatch_fails_that_cut_and_replay_goes_on(tmp_path):
    h = History(2)
    h.upsert(0, 1, 100, new=True)
    h.upsert(1, 2, 200, new=True)
    h.marker(1, counts=[1, 2])  # partition 1 claims an operation the topic does not hold
    h.upsert(1, 2, 250, new=False)
    h.marker(2)
    messages: list[str] = []
    cfg = config(tmp_path)
    _, report = replay(cfg, h, messages=messages)
    assert sorted(report.failed) == [1]
    assert "says 2 operations" in report.failed[1]
    assert not has_backup(cfg.backups_dir, SOURCE, 1)
    assert report.written == [2]
    assert balances(cfg, 2) == [(1, 100), (2, 250)]
    assert any("cut 1 failed" in m for m in messages)


def test_malformed_records_are_skipped_counted_and_not_resent(tmp_path):
    h = History(2)
    h.upsert(0, 1, 100, new=True)
    h.raw(0, b"not avro at all")
    other = Operation("elsewhere", 1, "accounts", OpType.INSERT, {"id": 9}, None, {"id": 9}, 1)
    h.raw(1, encode(other))
    h.marker(1)
    messages: list[str] = []
    cfg = config(tmp_path)
    _, report = replay(cfg, h, messages=messages)
    assert report.skipped == 2
    assert report.written == [1]
    assert balances(cfg, 1) == [(1, 100)]
    assert sum("warning: skipping" in m for m in messages) == 2


def test_from_and_until_marker_bound_the_backups_written(tmp_path):
    h = History(2)
    for marker_id in (1, 2, 3, 4):
        h.upsert(marker_id % 2, marker_id, marker_id * 10, new=True)
        h.marker(marker_id)
    cfg = config(tmp_path, from_marker=2, until_marker=3)
    _, report = replay(cfg, h)
    assert report.written == [2, 3]
    assert report.before_from == [1]
    assert report.until_found is True
    assert [b.marker_id for b in list_backups(cfg.backups_dir, SOURCE)] == [2, 3]
    # changes before --from-marker are applied: backup 2 holds marker 1's row too
    assert balances(cfg, 2) == [(1, 10), (2, 20)]


def test_until_marker_missing_is_reported(tmp_path):
    h = two_cuts()
    _, report = replay(config(tmp_path, until_marker=7), h)
    assert report.until_found is False
    assert report.written == [1, 2]


def test_backups_already_present_are_skipped(tmp_path):
    cfg = config(tmp_path)
    replay(cfg, two_cuts())
    again = config(tmp_path, replica_dir=tmp_path / "replica-2")
    messages: list[str] = []
    _, report = replay(again, two_cuts(), messages=messages)
    assert report.written == []
    assert report.existing == [1, 2]
    assert any("already in" in m and "skipped" in m for m in messages)


def test_a_marker_straddling_the_end_offsets_is_completed(tmp_path):
    """The marker's transaction was committed between reading partition 1's end and
    partition 0's: partition 1 reads past its end to reach it."""
    h = History(2)
    h.upsert(0, 1, 100, new=True)
    h.upsert(1, 2, 200, new=True)
    h.marker(1)
    h.upsert(1, 2, 300, new=False)  # after marker 1 on partition 1
    marker_at = h.marker_offsets[1]
    bounds = {0: (0, marker_at[0] + 1), 1: (0, marker_at[1])}  # 1 ends just before the marker
    cfg = config(tmp_path)
    _, report = replay(cfg, h, bounds=bounds)
    assert report.written == [1]
    assert balances(cfg, 1) == [(1, 100), (2, 200)]


def test_a_partition_that_skips_a_marker_fails_that_cut_instead_of_waiting(tmp_path):
    h = History(2)
    h.upsert(0, 1, 100, new=True)
    h.marker(1)
    h.records[1][-1] = b"\xc3\x01garbage"  # partition 1's copy of marker 1 is damaged
    h.upsert(0, 1, 150, new=False)
    h.marker(2)
    _, report = replay(config(tmp_path), h)
    assert "partition 1 reached marker 2 without it" in report.failed[1]
    assert report.skipped == 1
    # marker 2's count on partition 1 is counted from marker 1, which it never saw: fine
    # here (no operations on partition 1), so cut 2 is still written
    assert report.written == [2]


def test_a_marker_first_met_after_a_partition_passed_it_fails_at_once(tmp_path):
    """Partition 0 (read first) lost its copy of marker 1 and meets marker 2 before
    partition 1 meets marker 1: cut 1 can never complete, so it fails as soon as it is
    met, instead of holding partition 1 until the idle timeout (a deadlock: partition 0
    held at cut 2 waits for partition 1, held at cut 1)."""
    h = History(2)
    h.upsert(1, 2, 200, new=True)
    h.marker(1)
    h.records[0][-1] = b"\xc3\x01garbage"  # partition 0's copy of marker 1 is damaged
    h.upsert(1, 2, 250, new=False)
    h.marker(2)
    ticks = itertools.count()
    engine = ReplayEngine(
        config(tmp_path, idle_timeout_s=30.0),
        bounds=h.ends(),
        feed=ListFeed(h.records),
        clock=lambda: float(next(ticks)),
    )
    report = engine.run(threading.Event())
    assert "partition 0 reached marker 2 without it" in report.failed[1]
    assert report.written == [2]
    assert balances(engine.config, 2) == [(2, 250)]


def test_no_records_before_the_end_fails_within_the_idle_timeout(tmp_path):
    ticks = itertools.count()
    cfg = config(tmp_path, idle_timeout_s=3.0)
    engine = ReplayEngine(
        cfg,
        bounds={0: (0, 10)},
        feed=ListFeed([[]]),
        clock=lambda: float(next(ticks)),
    )
    engine.feed.items.clear()  # not even an end event: the broker went silent
    with pytest.raises(ReplayError, match=r"no record .* for 3 s .*partition 0 at offset 0 of 10"):
        engine.run(threading.Event())


def test_a_stop_request_interrupts_cleanly(tmp_path):
    stop = threading.Event()
    stop.set()
    engine = ReplayEngine(config(tmp_path), bounds=two_cuts().ends(), feed=ListFeed([[], []]))
    report = engine.run(stop)
    assert report.interrupted
    assert report.written == []


def test_status_reports_progress_against_the_end_offsets(tmp_path):
    seen: list[ReplayStatus] = []
    h = two_cuts()
    engine = ReplayEngine(
        config(tmp_path), bounds=h.ends(), feed=ListFeed(h.records), on_status=seen.append
    )
    engine.run(threading.Event())
    assert seen[-1].records == seen[-1].total == sum(e for _, e in h.ends().values())
    assert (seen[-1].markers_done, seen[-1].markers_known, seen[-1].written) == (2, 2, 2)
    assert [s.records for s in seen] == sorted(s.records for s in seen)


def test_a_history_that_no_longer_starts_at_offset_0_is_refused():
    check_whole_history({0: (0, 10), 1: (0, 0)}, "cutline.shop.ops")  # whole: no error
    with pytest.raises(ReplayError) as info:
        check_whole_history({0: (0, 10), 1: (1234, 2000)}, "cutline.shop.ops")
    message = str(info.value)
    assert "cutline.shop.ops no longer holds its whole history" in message
    assert "partition 1 starts at offset 1,234" in message and "partition 0" not in message
    assert "retention.ms=-1" in message


# -- the replica directory ----------------------------------------------------------------


def test_prepare_replica_refuses_existing_shards_without_force(tmp_path):
    replica = tmp_path / "replica"
    mine = shard_path(replica, SOURCE, 0)
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"")
    with pytest.raises(ConfigError, match="--force"):
        prepare_replica(replica, SOURCE, force=False, progress=lambda _: None)
    assert mine.exists()


def test_prepare_replica_force_wipes_only_this_sources_shards(tmp_path):
    replica = tmp_path / "replica"
    mine = shard_path(replica, SOURCE, 3)
    theirs = shard_path(replica, "other", 3)
    for path in (mine, Path(f"{mine}-wal"), theirs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    said: list[str] = []
    prepare_replica(replica, SOURCE, force=True, progress=said.append)
    assert not mine.exists() and not Path(f"{mine}-wal").exists()
    assert theirs.exists()
    assert "deleting the 1 replica shards" in said[0]


# -- sharing the backups directory with a running replicate --------------------------------


def test_a_backup_is_written_only_under_the_writer_lock(tmp_path):
    cfg = config(tmp_path)
    lock = WriterLock(source_dir(cfg.backups_dir, SOURCE))
    lock.acquire(1.0, threading.Event())  # a replicate's snapshotter is writing
    result: list = []
    said: list[str] = []
    thread = threading.Thread(
        target=lambda: result.append(replay(cfg, two_cuts(), messages=said)[1])
    )
    thread.start()
    try:
        thread.join(0.8)
        assert thread.is_alive(), "replay must wait for the lock"
        assert list_backups(cfg.backups_dir, SOURCE) == []
        assert any("waiting up to" in m and "writer lock" in m for m in said)
    finally:
        lock.release()
    thread.join(30)
    assert result and result[0].written == [1, 2]


def test_a_backup_written_meanwhile_by_another_process_is_skipped(tmp_path):
    elsewhere = config(tmp_path, backups_dir=tmp_path / "elsewhere", replica_dir=tmp_path / "r0")
    replay(elsewhere, two_cuts())  # backup 1, as the other process would have written it
    cfg = config(tmp_path)
    lock = WriterLock(source_dir(cfg.backups_dir, SOURCE))
    lock.acquire(1.0, threading.Event())
    result: list = []
    thread = threading.Thread(target=lambda: result.append(replay(cfg, two_cuts())[1]))
    thread.start()
    try:
        thread.join(0.5)
        shutil.copytree(
            source_dir(elsewhere.backups_dir, SOURCE) / backup_dir_name(1),
            source_dir(cfg.backups_dir, SOURCE) / backup_dir_name(1),
        )
    finally:
        lock.release()
    thread.join(30)
    assert result and result[0].existing == [1]
    assert result[0].written == [2]


def test_a_lock_held_past_its_deadline_fails_the_cut(tmp_path):
    cfg = config(tmp_path, lock_deadline_s=0.3)
    lock = WriterLock(source_dir(cfg.backups_dir, SOURCE))
    lock.acquire(1.0, threading.Event())
    try:
        _, report = replay(cfg, two_cuts())
    finally:
        lock.release()
    assert sorted(report.failed) == [1, 2]
    assert "writer lock" in report.failed[1]
    assert list_backups(cfg.backups_dir, SOURCE) == []


def test_cli_refuses_a_from_marker_after_the_until_marker(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(
            [
                "replay",
                "--replica",
                str(tmp_path / "r"),
                "--backups",
                str(tmp_path / "b"),
                "--from-marker",
                "5",
                "--until-marker",
                "2",
                "--bootstrap-servers",
                "127.0.0.1:9",
            ]
        )
    assert info.value.code == 2
    assert "--from-marker 5 is after --until-marker 2" in capsys.readouterr().err


def test_full_every_makes_replayed_backups_an_incremental_chain(tmp_path):
    cfg = config(tmp_path, full_every=2)
    _, report = replay(cfg, two_cuts())
    assert report.written == [1, 2]
    kinds = {b.marker_id: b.manifest.get("kind") for b in list_backups(cfg.backups_dir, SOURCE)}
    assert kinds == {1: "full", 2: "incremental"}
