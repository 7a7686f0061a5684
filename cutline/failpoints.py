"""Failpoints: named places where the fault-injection harness makes a process die or stall.

Off unless ``CUTLINE_FAILPOINTS`` is set, and then read once at import, so a disabled
failpoint costs one truth test on the hot path. The variable holds ``;``-separated
``NAME=ACTION`` entries; ``NAME[P]`` applies to partition ``P`` only. Actions:

* ``kill``      SIGKILL this process the first time the point is hit;
* ``kill@N``    SIGKILL it on the N-th hit (1-based);
* ``stall:S``   block the calling thread for S seconds on every hit (a stuck thread);
* ``sleep:S``   the same, spelled for short delays that widen a race window.

Example: ``CUTLINE_FAILPOINTS="snapshot.before_publish=kill;apply.batch[3]=stall:600"``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

ENV = "CUTLINE_FAILPOINTS"


@dataclass
class _Action:
    kind: str  # "kill" or "stall"
    at_hit: int = 1
    seconds: float = 0.0
    hits: int = 0


def parse(spec: str) -> dict[str, _Action]:
    """``NAME=ACTION;...`` to actions; a malformed entry is an error, never ignored."""
    actions: dict[str, _Action] = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        name, sep, action = entry.partition("=")
        if not sep or not name:
            raise ValueError(f"{ENV}: {entry!r} is not NAME=ACTION")
        if action == "kill":
            actions[name] = _Action("kill")
        elif action.startswith("kill@"):
            actions[name] = _Action("kill", at_hit=int(action[5:]))
        elif action.startswith(("stall:", "sleep:")):
            actions[name] = _Action("stall", seconds=float(action.split(":", 1)[1]))
        else:
            raise ValueError(f"{ENV}: unknown action {action!r} in {entry!r}")
    return actions


_ACTIONS = parse(os.environ.get(ENV, ""))
_LOCK = threading.Lock()


def hit(name: str, partition: int | None = None) -> None:
    """Called where a fault may be injected; does nothing unless the point is armed."""
    if not _ACTIONS:
        return
    for key in (name, f"{name}[{partition}]") if partition is not None else (name,):
        action = _ACTIONS.get(key)
        if action is None:
            continue
        with _LOCK:
            action.hits += 1
            hits = action.hits
        if action.kind == "kill" and hits == action.at_hit:
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)  # SIGKILL is not delivered synchronously everywhere
        elif action.kind == "stall":
            time.sleep(action.seconds)


def armed() -> bool:
    return bool(_ACTIONS)
