"""``python -m bench.replicate_probe ARGS``: ``cutline replicate ARGS`` with a resume clock.

The scale phase runs replication as its own process, so its peak RSS is the replicate
process's alone. The pause a marker costs ends when the last partition resumes, which no
record on Kafka says; this probe notes it. It wraps ``Shard.release`` (the call that lets a
held partition go on) so that, right after the real release, it appends one JSON line
``{"partition", "marker_id", "at_us"}`` (wall clock, as the control events' ``at_us``) to
the file named by ``$CUTLINE_BENCH_RESUMES``; it wraps ``Shard.reach_marker`` the same way
and appends ``"event": "held"`` when a partition starts to be held at a marker (released
lines say ``"event": "released"``). Nothing else changes: the command, its
options and its code path are those of ``cutline replicate``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from consumers.replica import Shard
from cutline.cli import main as cutline_main

ENV_RESUMES = "CUTLINE_BENCH_RESUMES"


def install_resume_clock(path: str) -> None:
    """Record every shard hold and release (partition, marker, wall time) in ``path``."""
    real_release = Shard.release
    real_reach = Shard.reach_marker
    lock = threading.Lock()

    def note(shard: Shard, marker_id: int, event: str) -> None:
        at_us = time.time_ns() // 1000
        line = json.dumps(
            {"partition": shard.partition, "marker_id": marker_id, "at_us": at_us, "event": event}
        )
        with lock, open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    def release(self: Shard) -> None:
        real_release(self)
        note(self, self.state().marker_id, "released")

    def reach_marker(self: Shard, marker, offset: int, *, hold: bool) -> None:
        real_reach(self, marker, offset, hold=hold)
        if hold:  # recorded: the thread stops applying this partition from here
            note(self, marker.marker_id, "held")

    Shard.release = release  # type: ignore[method-assign]
    Shard.reach_marker = reach_marker  # type: ignore[method-assign]


def main() -> int:
    path = os.environ.get(ENV_RESUMES)
    if path:
        install_resume_clock(path)
    return cutline_main(["replicate", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
