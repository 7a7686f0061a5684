"""SIGTERM and SIGINT: stop promptly in every phase of every command.

A command is in one of two phases. While it *cooperates* (capture's and replicate's
loops, replay's engine) a signal only sets the stop event: the loop finishes the work in
hand (a transaction, a backup) and exits cleanly. Everywhere else, start-up waits
included (the cluster, the ops topic, shard locks, committed offsets), a signal raises
:class:`Interrupted` at once in the main thread, so nothing waits out its deadline after
being asked to stop; ``finally`` blocks still close what was opened. A second signal
always interrupts, for a clean stop that takes too long.

Library code that waits inside a cooperative phase (a rebalance callback claiming shard
locks) marks the wait with :func:`interruptible`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from cutline.errors import CutlineError

EXIT_INTERRUPTED = 130


class Interrupted(CutlineError):
    """Stopped by SIGINT or SIGTERM before the command's work was done (exit status 130).

    ``forced``: a second signal, sent while a clean stop was under way.
    """

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str, *, forced: bool = False):
        super().__init__(message)
        self.forced = forced


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class StopSignals:
    """The process's stop request: an event, and whether a signal may interrupt now."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str | None = None
        self._cooperating = 0
        self._interruptible = 0
        self.say: Callable[[str], None] = _to_stderr  # the command's progress log

    def install(self) -> dict[int, object]:
        """Handle both signals from now on; return the handlers they had (to restore)."""
        self.event.clear()
        self.received = None
        previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous  # only the main thread may handle signals
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        return previous

    @staticmethod
    def restore(previous: dict[int, object]) -> None:
        """Put back what :meth:`install` replaced (for callers that run ``main`` in-process)."""
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        again = self.event.is_set() or self.received is not None
        self.received = name
        # Not self.event.set() here: the handler runs in the main thread between bytecodes,
        # possibly while that thread holds the event's own lock (inside event.wait()), and
        # the lock is not reentrant, so set() would wait for itself forever (seen as a
        # capture that ignored SIGTERM). A helper thread sets it once the lock is free.
        threading.Thread(target=self.event.set, name="stop-signal", daemon=True).start()
        if self._cooperating and not self._interruptible and not again:
            self.say(f"received {name}, finishing current work...")
            return
        if again:
            raise Interrupted(f"stopped by a second {name}, without finishing", forced=True)
        raise Interrupted(f"stopped by {name}")

    @contextlib.contextmanager
    def cooperating(self) -> Iterator[threading.Event]:
        """A phase that watches :attr:`event` itself; a stop asked before it is honoured."""
        if self.event.is_set():
            raise Interrupted(f"stopped by {self.received}")
        self._cooperating += 1
        try:
            yield self.event
        finally:
            self._cooperating -= 1

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A wait inside a cooperative phase that a signal may cut short.

        Only the main thread receives signals, so elsewhere this marks nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        if self.event.is_set():
            raise Interrupted(f"stopped by {self.received}")
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1


SIGNALS = StopSignals()


def interruptible() -> contextlib.AbstractContextManager[None]:
    """Mark a bounded wait that SIGINT/SIGTERM should end at once (see the module doc)."""
    return SIGNALS.interruptible()
