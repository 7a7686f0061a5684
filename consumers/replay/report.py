"""What a replay did (its summary and ``--json``) and how far it is (its progress line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class CutOutcome(StrEnum):
    OPEN = "open"  # waiting for partitions to reach it
    WRITTEN = "written"
    EXISTS = "exists"  # already in --backups: skipped
    BEFORE = "before"  # before --from-marker: applied, no backup
    FAILED = "failed"


@dataclass
class ReplayReport:
    """What a replay did, for the summary line, ``--json`` output and tests."""

    written: list[int] = field(default_factory=list)
    existing: list[int] = field(default_factory=list)
    before_from: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    records: int = 0  # records read below the end offsets
    applied: int = 0  # operations applied to the replica
    skipped: int = 0  # malformed or unapplicable records, skipped with a warning
    interrupted: bool = False
    until_found: bool | None = None  # None without --until-marker

    def as_json(self) -> dict:
        return {
            "written": self.written,
            "existing": self.existing,
            "before_from_marker": self.before_from,
            "failed": {str(k): v for k, v in sorted(self.failed.items())},
            "records": self.records,
            "operations_applied": self.applied,
            "records_skipped": self.skipped,
            "interrupted": self.interrupted,
        }

    def summary(self) -> str:
        parts = [
            f"{self.records:,} records read, {self.applied:,} operations applied",
            f"backups written: {format_ids(self.written)}",
        ]
        if self.existing:
            parts.append(f"already in --backups (skipped): {format_ids(self.existing)}")
        if self.before_from:
            parts.append(f"before --from-marker (no backup): {format_ids(self.before_from)}")
        if self.failed:
            parts.append(f"failed: {format_ids(sorted(self.failed))}")
        if self.skipped:
            parts.append(f"{self.skipped} malformed or unapplicable records skipped")
        return ("replay interrupted: " if self.interrupted else "replay done: ") + "; ".join(parts)


def format_ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids)) if ids else "none"


@dataclass(frozen=True)
class ReplayStatus:
    """A moment of the replay, for a progress line."""

    records: int
    total: int
    applied: int
    markers_done: int
    markers_known: int
    written: int

    def detail(self) -> str:
        return (
            f"{self.applied:,} ops applied, markers {self.markers_done}/{self.markers_known} "
            f"done, {self.written} written"
        )
