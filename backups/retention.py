"""Retention: remove old backups, never one that a kept incremental still needs.

``prune --keep-last N`` keeps, per source, the newest N backups, ``--keep-within 7d``
every backup whose T1 is within 7 days of the newest backup's T1 (given both, a backup
either rule keeps stays), and every backup their chains reach back to (an incremental is
useless without its parent, its parent's parent, ... down to the full base). Everything
else is removed. ``replicate --keep-last/--keep-within`` applies the same rules after
each backup it publishes (:func:`prune_held`), under the writer lock it already holds.

Removal never leaves a half backup visible: each directory is first renamed to a
``.tmp-`` name (the catalog ignores those, see ``backups.storage.local.durable``), the rename made
durable, and only then deleted. Backups are removed newest first, so if prune stops
half way, no remaining backup is an incremental whose parent is already gone.

Prune holds the source's backup writer lock (the one ``replicate`` and ``replay`` write
under) while it decides and removes: a backup being written as an incremental reads its
parent's chain, and must never see that chain pruned under it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backups.catalog import Backup, list_backups
from backups.storage import StorageError
from backups.storage.local import LocalStorage
from cutline.errors import ConfigError, CutlineError, DeadlineExceeded

log = logging.getLogger("cutline.retention")

LOCK_DEADLINE_S = 120.0  # how long prune waits for a backup being written to be done
_DURATION = re.compile(r"^(?P<amount>[0-9]+(?:\.[0-9]+)?)(?P<unit>[smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` as seconds (for ``--keep-within``)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or float(match["amount"]) <= 0:
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit s, m, h, d or w, e.g. 7d or 12h"
        )
    return float(match["amount"]) * _UNIT_S[match["unit"]]


@dataclass(frozen=True)
class RetentionPolicy:
    """Which backups of a source stay: the newest ``keep_last``, those within ``keep_within_s``."""

    keep_last: int | None = None
    keep_within_s: float | None = None

    def __post_init__(self) -> None:
        if self.keep_last is None and self.keep_within_s is None:
            raise ConfigError("give --keep-last N, --keep-within DURATION, or both")
        if self.keep_last is not None and self.keep_last < 1:
            raise ConfigError("--keep-last must be at least 1")

    def keeps(self, backups: list[Backup]) -> list[Backup]:
        """The backups (oldest first) that the rules keep, before chains are added."""
        kept = set()
        if self.keep_last is not None:
            kept.update(b.marker_id for b in backups[-self.keep_last :])
        if self.keep_within_s is not None and backups:
            horizon = max(b.t1_us for b in backups) - round(self.keep_within_s * 1_000_000)
            kept.update(b.marker_id for b in backups if b.t1_us >= horizon)
        return [b for b in backups if b.marker_id in kept]


class PruneError(CutlineError):
    """A backup could not be removed."""


@dataclass
class SourcePlan:
    """What prune does to one source's backups."""

    source: str
    newest: list[Backup] = field(default_factory=list)  # the newest N, kept
    for_chains: dict[int, list[int]] = field(default_factory=dict)  # kept id -> needed by
    remove: list[Backup] = field(default_factory=list)  # newest first
    broken: list[str] = field(default_factory=list)  # chains that already miss a backup

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kept": [b.marker_id for b in self.newest],
            "kept_for_chains": {str(k): v for k, v in sorted(self.for_chains.items())},
            "removed": [b.marker_id for b in self.remove],
            "broken_chains": self.broken,
        }


def retention_policy(keep_last: int | None, keep_within_s: float | None) -> RetentionPolicy | None:
    """The policy for ``replicate``'s options; None (keep everything) when neither is given."""
    if keep_last is None and keep_within_s is None:
        return None
    return RetentionPolicy(keep_last=keep_last, keep_within_s=keep_within_s)


def plan_prune(
    backups_dir: Path, keep: int | RetentionPolicy, source: str | None = None
) -> list[SourcePlan]:
    """Decide, per source, which backups stay and which go; touches nothing.

    ``keep`` is a policy, or a plain number: keep the newest N.
    """
    policy = keep if isinstance(keep, RetentionPolicy) else RetentionPolicy(keep_last=keep)
    by_source: dict[str, list[Backup]] = {}
    for backup in list_backups(backups_dir, source):
        by_source.setdefault(backup.source, []).append(backup)
    plans = []
    for name, backups in sorted(by_source.items()):
        plan = SourcePlan(name, newest=policy.keeps(backups))
        by_id = {b.marker_id: b for b in backups}
        kept = {b.marker_id for b in plan.newest}
        for backup in plan.newest:
            current = backup
            while current.kind == "incremental":
                parent_id = current.parent_marker_id
                parent = by_id.get(parent_id) if parent_id is not None else None
                if parent is None:
                    plan.broken.append(
                        f"backup {current.marker_id} needs backup {parent_id}, which is missing"
                    )
                    break
                if parent.marker_id not in kept or parent.marker_id in plan.for_chains:
                    plan.for_chains.setdefault(parent.marker_id, []).append(backup.marker_id)
                kept.add(parent.marker_id)
                current = parent
        for needers in plan.for_chains.values():
            needers.sort()
        plan.remove = [b for b in reversed(backups) if b.marker_id not in kept]
        plans.append(plan)
    return plans


def remove_backup(backup: Backup) -> None:
    """Hide ``backup`` from the catalog atomically (rename to ``.tmp-``), then delete it."""
    try:
        LocalStorage(backup.path.parent).delete(backup.path.name)
    except StorageError as exc:
        raise PruneError(
            f"cannot remove backup {backup.marker_id} ({backup.path}): {exc.__cause__}; check "
            "the directory's permissions, then run prune again"
        ) from exc


def prune(
    backups_dir: Path,
    keep_last: int | RetentionPolicy,
    source: str | None = None,
    *,
    dry_run: bool = False,
    lock_deadline_s: float = LOCK_DEADLINE_S,
) -> list[SourcePlan]:
    """Apply :func:`plan_prune` (unless ``dry_run``); return the plans carried out.

    Each source is planned again and pruned under its writer lock, so the plan is made
    from the backups as they are while nothing else writes one.
    """
    plans = plan_prune(backups_dir, keep_last, source)
    if dry_run:
        return plans
    done: list[SourcePlan] = []
    for name in [plan.source for plan in plans]:
        lock = LocalStorage(backups_dir).lock(name)
        try:
            lock.acquire(lock_deadline_s, threading.Event())
        except DeadlineExceeded as exc:
            pruned = ", ".join(p.source for p in done) or "none"
            raise PruneError(
                f"source {name!r}: nothing removed, {exc} (a `cutline replicate` or `cutline "
                f"replay` is writing a backup); run prune again later. Sources already "
                f"pruned: {pruned}"
            ) from exc
        try:
            for plan in plan_prune(backups_dir, keep_last, name):
                for backup in plan.remove:  # newest first: no survivor loses its parent
                    remove_backup(backup)
                done.append(plan)
        finally:
            lock.release()
    return done


def prune_held(backups_dir: Path, source: str, policy: RetentionPolicy) -> SourcePlan | None:
    """Prune one source whose writer lock the caller already holds (``replicate``)."""
    for plan in plan_prune(backups_dir, policy, source):
        for backup in plan.remove:  # newest first: no survivor loses its parent
            remove_backup(backup)
        return plan
    return None


def apply_retention(
    backups_dir: Path, source: str, policy: RetentionPolicy, progress: Callable[[str], None]
) -> SourcePlan | None:
    """``replicate``'s pruning after a publish; a failure is a warning, never a failed cut.

    The backup just published stays whatever happens here; what could not be removed
    now is removed after the next publish.
    """
    try:
        plan = prune_held(backups_dir, source, policy)
    except Exception as exc:
        log.warning("retention: %s; old backups stay until the next backup is published", exc)
        return None
    if plan is not None and plan.remove:
        removed = ", ".join(str(b.marker_id) for b in reversed(plan.remove))
        chains = f", {len(plan.for_chains)} kept for chains" if plan.for_chains else ""
        progress(f"retention: removed backups {removed} of source {source!r}{chains}")
    return plan
