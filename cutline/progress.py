"""Progress of long work: a live line on a terminal, rare plain lines anywhere else.

On a terminal the line is redrawn in place about twice a second with what was done, the
rate and an ETA. Elsewhere (a log file, CI) a redrawn line is noise, so the reporter stays
quiet: at most one line every ``quiet_every_s`` and a summary at the end.

Pure: it writes only to the stream it is given and reads only the clock it is given, so
tests drive it with a ``StringIO`` and a fake clock, without a terminal.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

CLEAR_LINE = "\r\x1b[K"  # back to column 0, erase to the end of the line


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:34`` or ``1:02:03``: short enough for a status line."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Reports ``done`` out of ``total`` units of work, with a rate and an ETA.

    Who calls what: the worker calls :meth:`update` as often as it likes (it is cheap and
    prints only when a line is due), :meth:`note` for events that must stay on screen,
    and :meth:`finish` once at the end.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        label: str,
        unit: str = "records",
        clock: Callable[[], float] = time.monotonic,
        live: bool | None = None,
        live_every_s: float = 0.5,
        quiet_every_s: float = 10.0,
        window_s: float = 10.0,
        width: int | None = None,
    ):
        self.stream = stream
        self.label = label
        self.unit = unit
        self.clock = clock
        if live is None:
            isatty = getattr(stream, "isatty", None)
            live = bool(isatty and isatty())
        self.live = live
        self.live_every_s = live_every_s
        self.quiet_every_s = quiet_every_s
        self.window_s = window_s
        self.width = width
        self.started = clock()
        self.done = 0
        self.total: int | None = None
        self.detail = ""
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._last_line_at: float | None = None
        self._drawn = False  # a live line is on screen and must be cleared before text

    # -- what the worker calls ------------------------------------------------------------

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        """Record the current amount of work done; print a line if one is due."""
        now = self.clock()
        self.done, self.total, self.detail = done, total, detail
        if len(self._samples) >= 2 and now - self._samples[-2][0] < self.window_s / 20:
            self._samples[-1] = (now, done)  # keep the window to ~20 samples, however often
        else:
            self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        if self.live:
            due = self._last_line_at is None or now - self._last_line_at >= self.live_every_s
            if due:
                self._draw(now)
        elif now - (self._last_line_at or self.started) >= self.quiet_every_s:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_line_at = now

    def note(self, message: str) -> None:
        """An event line that stays: printed above the live line, which is then redrawn."""
        if self._drawn:
            self.stream.write(CLEAR_LINE)
        self.stream.write(message + "\n")
        if self._drawn:
            self._draw(self.clock())
        self.stream.flush()

    def finish(self, summary: str | None = None) -> None:
        """Clear the live line and print ``summary`` (default: the final status line)."""
        if self._drawn:
            self.stream.write(CLEAR_LINE)
            self._drawn = False
        self.stream.write((summary if summary is not None else self.line()) + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Remove the live line (before an error message, say); print nothing else."""
        if self._drawn:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self._drawn = False

    # -- rendering ------------------------------------------------------------------------

    def rate(self) -> float | None:
        """Units per second over the recent window; None before there is any elapsed time."""
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 - t0 <= 0:
            return None
        return (d1 - d0) / (t1 - t0)

    def eta_s(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate is None or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate

    def line(self) -> str:
        parts = [f"{self.label}: {self.done:,}"]
        if self.total is not None:
            share = 100.0 * self.done / self.total if self.total else 100.0
            parts[0] += f"/{self.total:,} {self.unit} ({share:.1f}%)"
        else:
            parts[0] += f" {self.unit}"
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:,.0f} {self.unit}/s")
        if self.total is not None:
            eta = self.eta_s()
            parts.append(
                "ETA 0:00"
                if self.done >= self.total
                else f"ETA {'?' if eta is None else format_duration(eta)}"
            )
        if self.detail:  # after the numbers that matter most, in case the line is cut
            parts.append(self.detail)
        parts.append(f"elapsed {format_duration(self.clock() - self.started)}")
        return ", ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.line()
        if self.width is not None and len(text) > self.width:
            text = text[: max(0, self.width - 1)] + "…"
        self.stream.write(CLEAR_LINE + text)
        self.stream.flush()
        self._drawn = True
        self._last_line_at = now
