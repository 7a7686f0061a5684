"""The alignment state machine: which cut becomes READY, and which control events win."""

from __future__ import annotations

import random

import pytest

from consumers.alignment import Alignment, CutStatus
from schemas.records import ControlEvent, ControlKind


def reached(marker: int, partition: int, offset: int, partitions: int = 3) -> ControlEvent:
    return ControlEvent(
        ControlKind.REACHED,
        "shop",
        marker,
        partitions,
        member=f"m{partition}",
        at_us=0,
        partition=partition,
        offset=offset,
        t1_us=1,
        tables=("t",),
    )


def control(kind: ControlKind, marker: int, partitions: int = 3, detail: str | None = None):
    return ControlEvent(kind, "shop", marker, partitions, member="m", at_us=0, detail=detail)


def make_ready(al: Alignment, marker: int = 1, partitions: int = 3, now: float = 0.0) -> None:
    for p in range(partitions):
        al.apply(reached(marker, p, 100 + p, partitions), now)
    assert al.status(marker) is CutStatus.READY


def test_ready_only_when_every_declared_partition_reached():
    al = Alignment(timeout_s=60)
    assert al.apply(reached(1, 2, 10), 0.0) is None
    assert al.status(1) is CutStatus.ALIGNING
    assert al.apply(reached(1, 0, 11), 0.1) is None
    assert al.cuts[1].missing == [1]
    t = al.apply(reached(1, 1, 12), 0.2)
    assert t is not None and t.status is CutStatus.READY
    assert t.cut.marker_id == 1
    assert al.cuts[1].reached == {0: 11, 1: 12, 2: 10}
    assert al.cuts[1].missing == []


def test_duplicate_reached_is_idempotent():
    al = Alignment(timeout_s=60)
    al.apply(reached(1, 0, 5), 0.0)
    assert al.apply(reached(1, 0, 5), 0.1) is None
    assert al.status(1) is CutStatus.ALIGNING
    al.apply(reached(1, 1, 6), 0.2)
    assert al.apply(reached(1, 2, 7), 0.3).status is CutStatus.READY
    # A redelivered REACHED after READY changes nothing.
    assert al.apply(reached(1, 2, 7), 0.4) is None
    assert al.status(1) is CutStatus.READY
    assert al.cuts[1].ready_at == 0.3


def test_partitions_outside_the_declared_set_do_not_complete_a_cut():
    al = Alignment(timeout_s=60)
    al.apply(reached(1, 0, 5, partitions=2), 0.0)
    al.apply(reached(1, 5, 5, partitions=2), 0.0)
    assert al.status(1) is CutStatus.ALIGNING
    assert al.cuts[1].missing == [1]


def test_reached_without_partition_or_offset_is_ignored():
    al = Alignment(timeout_s=60)
    event = ControlEvent(ControlKind.REACHED, "shop", 1, 1, member="m", at_us=0, partition=0)
    assert al.apply(event, 0.0) is None
    assert al.status(1) is CutStatus.ALIGNING
    assert al.cuts[1].reached == {}


def test_cuts_are_independent():
    al = Alignment(timeout_s=60)
    make_ready(al, marker=1)
    al.apply(reached(2, 0, 1), 0.0)
    assert al.status(1) is CutStatus.READY
    assert al.status(2) is CutStatus.ALIGNING
    assert al.status(3) is None


def test_abandoned_wins_while_aligning():
    al = Alignment(timeout_s=60)
    al.apply(reached(1, 0, 5), 0.0)
    t = al.apply(control(ControlKind.ABANDONED, 1, detail="timeout on p1"), 1.0)
    assert t.status is CutStatus.ABANDONED
    assert al.cuts[1].detail == "timeout on p1"
    # The late partitions arriving afterwards do not revive it.
    assert al.apply(reached(1, 1, 6), 2.0) is None
    assert al.apply(reached(1, 2, 7), 2.0) is None
    assert al.status(1) is CutStatus.ABANDONED


def test_abandoned_is_ignored_once_ready():
    al = Alignment(timeout_s=60)
    make_ready(al)
    assert al.apply(control(ControlKind.ABANDONED, 1), 1.0) is None
    assert al.status(1) is CutStatus.READY
    t = al.apply(control(ControlKind.PUBLISHED, 1), 2.0)
    assert t.status is CutStatus.PUBLISHED


@pytest.mark.parametrize("before", ["aligning", "ready", "abandoned"])
def test_failed_wins_unless_published(before):
    al = Alignment(timeout_s=60)
    al.apply(reached(1, 0, 100), 0.0)
    if before == "ready":
        make_ready(al)
    elif before == "abandoned":
        al.apply(control(ControlKind.ABANDONED, 1), 0.5)
    t = al.apply(control(ControlKind.FAILED, 1, detail="gap on partition 2"), 1.0)
    assert t is not None and t.status is CutStatus.FAILED
    assert al.status(1) is CutStatus.FAILED
    assert al.cuts[1].detail == "gap on partition 2"
    assert al.apply(control(ControlKind.FAILED, 1, detail="again"), 2.0) is None


def test_failed_after_published_is_ignored():
    al = Alignment(timeout_s=60)
    make_ready(al)
    al.apply(control(ControlKind.PUBLISHED, 1), 1.0)
    assert al.apply(control(ControlKind.FAILED, 1, detail="late"), 2.0) is None
    assert al.status(1) is CutStatus.PUBLISHED
    assert al.cuts[1].detail != "late"


def test_published_resolves_and_is_idempotent():
    al = Alignment(timeout_s=60)
    make_ready(al)
    assert not al.status(1).resolved
    t = al.apply(control(ControlKind.PUBLISHED, 1), 1.0)
    assert t.status is CutStatus.PUBLISHED
    assert al.status(1).resolved
    assert al.apply(control(ControlKind.PUBLISHED, 1), 2.0) is None
    assert al.expired(now=10_000.0) == []


def test_resolved_flags():
    assert {s for s in CutStatus if s.resolved} == {
        CutStatus.PUBLISHED,
        CutStatus.ABANDONED,
        CutStatus.FAILED,
    }


def test_expired_returns_only_aligning_cuts_past_the_timeout():
    al = Alignment(timeout_s=10)
    al.apply(reached(1, 0, 1), 0.0)  # aligning, old
    al.apply(reached(2, 0, 1), 5.0)  # aligning, young
    make_ready(al, marker=3, now=0.0)  # ready, old
    al.apply(reached(4, 0, 1), 0.0)
    al.apply(control(ControlKind.ABANDONED, 4), 1.0)  # abandoned, old
    al.apply(reached(5, 0, 1), 0.0)
    al.apply(control(ControlKind.FAILED, 5), 1.0)  # failed, old
    assert al.expired(now=10.0) == []  # exactly at the timeout: not yet
    assert [c.marker_id for c in al.expired(now=10.5)] == [1]
    assert sorted(c.marker_id for c in al.expired(now=15.5)) == [1, 2]


def test_partition_count_mismatch_fails_the_cut():
    al = Alignment(timeout_s=60)
    al.apply(reached(1, 0, 5, partitions=3), 0.0)
    t = al.apply(reached(1, 1, 6, partitions=4), 0.1)
    assert t is not None and t.status is CutStatus.FAILED
    assert "duplicated marker id" in al.cuts[1].detail
    assert "3" in al.cuts[1].detail and "4" in al.cuts[1].detail


def test_partition_count_mismatch_after_ready_fails_but_not_after_published():
    al = Alignment(timeout_s=60)
    make_ready(al, marker=1)
    assert al.apply(reached(1, 0, 100, partitions=5), 1.0).status is CutStatus.FAILED
    make_ready(al, marker=2)
    al.apply(control(ControlKind.PUBLISHED, 2), 1.0)
    assert al.apply(reached(2, 0, 100, partitions=5), 2.0) is None
    assert al.status(2) is CutStatus.PUBLISHED


def test_same_partition_at_two_offsets_fails_the_cut():
    al = Alignment(timeout_s=60)
    al.apply(reached(1, 0, 5), 0.0)
    t = al.apply(reached(1, 0, 9), 0.1)
    assert t is not None and t.status is CutStatus.FAILED
    detail = al.cuts[1].detail
    assert "5" in detail and "9" in detail and "duplicated marker id" in detail
    # Completing the set afterwards does not make it READY.
    al.apply(reached(1, 1, 6), 0.2)
    al.apply(reached(1, 2, 7), 0.3)
    assert al.status(1) is CutStatus.FAILED


def test_alignment_seconds_is_ready_time_minus_first_seen():
    al = Alignment(timeout_s=60)
    al.apply(reached(1, 1, 5), 100.0)
    assert al.cuts[1].alignment_s is None
    al.apply(reached(1, 0, 5), 101.0)
    al.apply(reached(1, 2, 5), 103.25)
    cut = al.cuts[1]
    assert cut.first_seen == 100.0
    assert cut.ready_at == 103.25
    assert cut.alignment_s == pytest.approx(3.25)


@pytest.mark.parametrize("seed", range(30))
def test_randomized_ready_exactly_once_when_last_distinct_partition_arrives(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 12)
    offsets = {p: rng.randint(0, 10_000) for p in range(n)}
    events = [p for p in range(n) for _ in range(rng.randint(1, 4))]
    rng.shuffle(events)
    seen: set[int] = set()
    expected_index = None
    for i, p in enumerate(events):
        seen.add(p)
        if len(seen) == n and expected_index is None:
            expected_index = i

    al = Alignment(timeout_s=60)
    ready_at = []
    for i, p in enumerate(events):
        t = al.apply(reached(9, p, offsets[p], partitions=n), float(i))
        if t is not None:
            assert t.status is CutStatus.READY
            ready_at.append(i)
        expected = CutStatus.READY if i >= expected_index else CutStatus.ALIGNING
        assert al.status(9) is expected
    assert ready_at == [expected_index]
    assert al.cuts[9].reached == offsets
    assert al.cuts[9].alignment_s == float(expected_index)


# -- PINNED: the writer pinned the cut; partitions resume while the backup is written


def test_pinned_only_after_ready():
    al = Alignment(timeout_s=60)
    al.apply(reached(1, 0, 100), 0.0)
    assert al.apply(control(ControlKind.PINNED, 1), 0.5) is None
    assert al.status(1) is CutStatus.ALIGNING
    make_ready(al)
    t = al.apply(control(ControlKind.PINNED, 1), 1.0)
    assert t is not None and t.status is CutStatus.PINNED
    assert al.apply(control(ControlKind.PINNED, 1), 1.5) is None  # a second one: nothing new
    assert al.status(1) is CutStatus.PINNED


def test_pinned_releases_partitions_but_does_not_resolve_the_cut():
    assert {s for s in CutStatus if s.releases} == {
        CutStatus.PINNED,
        CutStatus.PUBLISHED,
        CutStatus.ABANDONED,
        CutStatus.FAILED,
    }
    assert not CutStatus.PINNED.resolved
    al = Alignment(timeout_s=10)
    make_ready(al)
    al.apply(control(ControlKind.PINNED, 1), 1.0)
    assert al.expired(now=10_000.0) == []  # never abandoned by the alignment timeout


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (ControlKind.PUBLISHED, CutStatus.PUBLISHED),
        (ControlKind.FAILED, CutStatus.FAILED),
        (ControlKind.ABANDONED, CutStatus.ABANDONED),
    ],
)
def test_a_pinned_cut_is_resolved_by_any_outcome(kind, status):
    """FAILED (the digest check or the write failed) and ABANDONED (the writer died after
    the partitions moved on) are both still possible after PINNED."""
    al = Alignment(timeout_s=60)
    make_ready(al)
    al.apply(control(ControlKind.PINNED, 1), 1.0)
    t = al.apply(control(kind, 1, detail="writer died after releasing the partitions"), 2.0)
    assert t is not None and t.status is status
    assert al.cuts[1].detail == "writer died after releasing the partitions"


def test_published_wins_over_an_abandon_of_a_pinned_cut():
    al = Alignment(timeout_s=60)
    make_ready(al)
    al.apply(control(ControlKind.PINNED, 1), 1.0)
    al.apply(control(ControlKind.ABANDONED, 1), 2.0)
    assert al.apply(control(ControlKind.PUBLISHED, 1), 3.0).status is CutStatus.PUBLISHED


def test_pinned_after_an_outcome_changes_nothing():
    al = Alignment(timeout_s=60)
    make_ready(al)
    al.apply(control(ControlKind.FAILED, 1), 1.0)
    assert al.apply(control(ControlKind.PINNED, 1), 2.0) is None
    assert al.status(1) is CutStatus.FAILED


def test_a_replay_of_the_control_topic_sees_pinned_and_does_not_hold_again():
    """A process restarting replays the control log: the cut is PINNED, so a shard it
    finds held at M is released at once."""
    log = [reached(1, p, 100 + p) for p in range(3)] + [control(ControlKind.PINNED, 1)]
    al = Alignment(timeout_s=60)
    for n, event in enumerate(log):
        al.apply(event, float(n))
    assert al.status(1) is CutStatus.PINNED
    assert al.status(1).releases
