"""Marker alignment: the pure state machine that decides the fate of every cut.

Every replication process feeds it the same control-topic events in the same order (the
control topic has one partition), so every process reaches the same decisions without
talking to each other. Nothing here opens a socket or reads a clock by itself.

Rules, in log order:

* REACHED(M, p): partition p is paused at M. When every partition of M's *declared* set
  (taken from the marker itself, never from group membership) has reached M, the cut is
  READY: exactly one backup of it may be written.
* PINNED(M): the writer holds a read transaction on every shard, each taken while the
  shard was held at M, so the cut is fixed whatever the shards do next. Only after READY.
  Threads paused at M commit and resume; the backup is written afterwards.
* ABANDONED(M): the alignment timeout ran out somewhere, or the writer died after PINNED
  (its pinned snapshots died with it and the shards have moved on). It wins while M is
  aligning or pinned; a cut READY in log order and not yet pinned completes (its shards
  are still held at M, so whoever takes it over can write it).
* FAILED(M): a gap (op count mismatch) or a failed snapshot. It wins unless M is
  PUBLISHED.
* PUBLISHED(M): backup M is durable. Threads paused at M commit and resume. It always
  wins: a backup that is in the catalog is the cut, whatever was said before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from schemas.records import ControlEvent, ControlKind


class CutStatus(StrEnum):
    ALIGNING = "aligning"
    READY = "ready"
    PINNED = "pinned"
    PUBLISHED = "published"
    ABANDONED = "abandoned"
    FAILED = "failed"

    @property
    def resolved(self) -> bool:
        return self in (CutStatus.PUBLISHED, CutStatus.ABANDONED, CutStatus.FAILED)

    @property
    def releases(self) -> bool:
        """Partitions held at the cut may resume: its snapshot is pinned, or it is over."""
        return self is CutStatus.PINNED or self.resolved


@dataclass
class Cut:
    marker_id: int
    partitions: int
    first_seen: float
    reached: dict[int, int] = field(default_factory=dict)
    status: CutStatus = CutStatus.ALIGNING
    ready_at: float | None = None
    detail: str | None = None

    @property
    def missing(self) -> list[int]:
        return [p for p in range(self.partitions) if p not in self.reached]

    @property
    def alignment_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.first_seen


@dataclass(frozen=True)
class Transition:
    """What an event changed: the cut's new status (None when nothing changed)."""

    cut: Cut
    status: CutStatus


class Alignment:
    """Tracks every cut seen on the control topic. Who calls it: the coordinator's thread."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.cuts: dict[int, Cut] = {}
        # the cuts still aligning, so expired() (run after every control event) costs
        # what is open, not every cut seen since start-up
        self._aligning: dict[int, Cut] = {}

    def apply(self, event: ControlEvent, now: float) -> Transition | None:
        cut = self.cuts.get(event.marker_id)
        if cut is None:
            cut = self.cuts[event.marker_id] = Cut(event.marker_id, event.partitions, now)
            self._aligning[cut.marker_id] = cut
        kind = event.kind
        if kind is ControlKind.REACHED:
            return self._reached(cut, event, now)
        if kind is ControlKind.PUBLISHED:
            if cut.status is CutStatus.PUBLISHED:
                return None
            return self._move(cut, CutStatus.PUBLISHED, event.detail)
        if kind is ControlKind.PINNED:
            if cut.status is not CutStatus.READY:
                return None
            return self._move(cut, CutStatus.PINNED, None)
        if kind is ControlKind.ABANDONED:
            if cut.status not in (CutStatus.ALIGNING, CutStatus.PINNED):
                return None
            return self._move(cut, CutStatus.ABANDONED, event.detail)
        if kind is ControlKind.FAILED:
            if cut.status in (CutStatus.PUBLISHED, CutStatus.FAILED):
                return None
            return self._move(cut, CutStatus.FAILED, event.detail)
        return None

    def _reached(self, cut: Cut, event: ControlEvent, now: float) -> Transition | None:
        if event.partition is None or event.offset is None:
            return None
        if event.partitions != cut.partitions:
            if cut.status.resolved:
                return None
            return self._move(
                cut,
                CutStatus.FAILED,
                f"marker {cut.marker_id} declared {cut.partitions} partitions in one place and "
                f"{event.partitions} in another (duplicated marker id?)",
            )
        previous = cut.reached.get(event.partition)
        if previous is not None and previous != event.offset and not cut.status.resolved:
            return self._move(
                cut,
                CutStatus.FAILED,
                f"partition {event.partition} reached marker {cut.marker_id} at offsets "
                f"{previous} and {event.offset} (duplicated marker id?)",
            )
        cut.reached[event.partition] = event.offset
        if cut.status is CutStatus.ALIGNING and not cut.missing:
            cut.ready_at = now
            return self._move(cut, CutStatus.READY, None)
        return None

    def _move(self, cut: Cut, status: CutStatus, detail: str | None) -> Transition:
        cut.status = status
        if detail:
            cut.detail = detail
        if status is not CutStatus.ALIGNING:
            self._aligning.pop(cut.marker_id, None)
        return Transition(cut, status)

    def expired(self, now: float) -> list[Cut]:
        """Cuts still aligning after the timeout: the caller publishes ABANDONED for them."""
        return [
            cut
            for cut in self._aligning.values()
            if cut.status is CutStatus.ALIGNING and now - cut.first_seen > self.timeout_s
        ]

    def status(self, marker_id: int) -> CutStatus | None:
        cut = self.cuts.get(marker_id)
        return None if cut is None else cut.status
