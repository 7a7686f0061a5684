"""Liveness of a replication process's own threads.

Why: a replication thread or the coordinator that dies leaves a process that still
heartbeats to the group and so keeps its partitions, while nothing on them moves and
cuts are abandoned one after another. Such a process must exit with an error instead,
so its supervisor restarts it and the group reassigns its partitions. A restart is
safe: every shard records where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from cutline.errors import CutlineError
from cutline.kafka_errors import NotAuthorized


class ReplicationStopped(CutlineError):
    """A thread of this process ended on its own; the process cannot go on replicating."""


class _Coordinator(Protocol):
    def is_dead(self) -> bool: ...


class _Thread(Protocol):
    name: str
    error: BaseException | None

    def is_alive(self) -> bool: ...

    def stopping(self) -> bool: ...

    @property
    def ident(self) -> int | None: ...


def check_threads(coordinator: _Coordinator | None, threads: Iterable[_Thread]) -> None:
    """Raise ReplicationStopped if the coordinator or a started replication thread died."""
    if coordinator is not None and coordinator.is_dead():
        if getattr(coordinator, "error", None) is not None:
            raise coordinator.error  # a cause the operator can act on, said as it is
        raise ReplicationStopped(
            "the cut coordinator stopped (see the error logged above): cuts can no longer be "
            "resolved here, so this process exits; restart it, it resumes from its replica"
        )
    for thread in threads:
        if thread.ident is not None and not thread.is_alive() and not thread.stopping():
            if isinstance(thread.error, NotAuthorized):
                raise thread.error  # says which ACL to add; restarting would not help
            cause = f" (last error: {thread.error})" if thread.error is not None else ""
            raise ReplicationStopped(
                f"replication thread {thread.name} stopped on its own{cause}: its partitions "
                "would stall, so this process exits; restart it, it resumes from its replica"
            )
