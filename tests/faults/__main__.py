"""``python -m tests.faults``: seeded fault runs, one summary line on stdout.

Environment: ``KAFKA_BOOTSTRAP_SERVERS`` (else a cluster from ``provide_cluster``),
``SOAK=1`` for a longer soak over every scenario, each run with a second source on the
same database (``FAULTS_SECOND_SOURCE=0`` to leave it to the scenarios that always have
it), ``FAULTS_SECONDS`` for its length
(default 300), ``FAULTS_SEED`` for the first seed (default 1), ``FAULTS_SCENARIOS`` for
a comma-separated subset. Per-run lines and problems go to stderr, and at the end how
many times each statement kind and each mid-run event ran. Exit 1 on any mismatch, loss
or duplicate.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from cutline.broker.provision import provide_cluster
from tests.faults.checker import Verdict
from tests.faults.runner import SECOND_SOURCE_ENV
from tests.faults.scenarios import SCENARIOS

SHORT = ["three-processes", "kill-while-snapshotting", "kill-after-pin"]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items())) or "none"


def main() -> int:
    soak = os.environ.get("SOAK", "") not in ("", "0")
    seed = int(os.environ.get("FAULTS_SEED", "1"))
    budget_s = float(os.environ.get("FAULTS_SECONDS", "300"))
    chosen = [s for s in os.environ.get("FAULTS_SCENARIOS", "").split(",") if s]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        _say(f"unknown scenarios {unknown}; choose from {sorted(SCENARIOS)}")
        return 2
    names = chosen or (list(SCENARIOS) if soak else SHORT)
    if soak:
        os.environ.setdefault(SECOND_SOURCE_ENV, "1")
    provided = provide_cluster(progress=_say)
    total, runs, kills = Verdict(), 0, 0
    kinds: Counter[str] = Counter()
    events: Counter[str] = Counter()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="cutline-faults-") as tmp:
            while True:
                for name in names:
                    root = Path(tmp) / f"{runs:03d}-{name}"
                    root.mkdir()
                    report = SCENARIOS[name](provided.bootstrap_servers, root, seed)
                    runs += 1
                    kills += report.kills
                    total.merge(report.verdict)
                    kinds.update(report.kinds)
                    events.update(report.events)
                    _say(report.line())
                    for problem in report.verdict.problems:
                        _say(f"  PROBLEM: {problem}")
                    seed += 1
                    if soak and time.monotonic() - started > budget_s:
                        break
                if not soak or time.monotonic() - started > budget_s:
                    break
    finally:
        provided.stop()
    _say(f"statement kinds run: {_counts(kinds)}")
    _say(f"mid-run events run: {_counts(events)}")
    print(
        f"faults: {runs} runs, {kills} kills, {total.backups_verified} backups verified, "
        f"{total.mismatches} mismatches, {total.lost} lost, {total.duplicated} duplicated"
    )
    return 0 if total.ok else 1


if __name__ == "__main__":
    sys.exit(main())
