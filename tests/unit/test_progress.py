"""The progress reporter, driven by a fake clock and a StringIO: no terminal needed."""

from __future__ import annotations

import io

from cutline.progress import CLEAR_LINE, Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reporter(live: bool, **kwargs) -> tuple[Progress, io.StringIO, Clock]:
    stream, clock = io.StringIO(), Clock()
    return Progress(stream, label="replay", clock=clock, live=live, **kwargs), stream, clock


def test_format_duration():
    assert format_duration(7.4) == "0:07"
    assert format_duration(754) == "12:34"
    assert format_duration(3723) == "1:02:03"
    assert format_duration(-3) == "0:00"


def test_live_line_is_redrawn_at_most_twice_a_second():
    progress, stream, clock = reporter(live=True)
    for step in range(1, 21):  # 20 updates, 0.1 s apart: 2 s of work
        clock.now += 0.1
        progress.update(step * 100, 2000)
    draws = stream.getvalue().count(CLEAR_LINE)
    assert 4 <= draws <= 5
    assert "\n" not in stream.getvalue(), "a live line is redrawn in place, never scrolled"


def test_live_line_shows_done_total_rate_and_eta():
    progress, stream, clock = reporter(live=True)
    clock.now += 10
    progress.update(5000, 20000, "3 ops applied, markers 1/4 done")
    line = stream.getvalue().split(CLEAR_LINE)[-1]
    assert line.startswith("replay: 5,000/20,000 records (25.0%)")
    assert "3 ops applied, markers 1/4 done" in line
    assert "500 records/s" in line
    assert "ETA 0:30" in line  # 15,000 left at 500/s


def test_rate_follows_the_recent_window_not_the_whole_run():
    progress, _, clock = reporter(live=False, window_s=10.0)
    for _ in range(30):  # 30 s at 100/s
        clock.now += 1
        progress.update(progress.done + 100, 100_000)
    for _ in range(30):  # then 30 s at 1000/s
        clock.now += 1
        progress.update(progress.done + 1000, 100_000)
    rate = progress.rate()
    assert rate is not None and 900 <= rate <= 1000


def test_quiet_mode_prints_at_most_one_line_every_ten_seconds():
    progress, stream, clock = reporter(live=False)
    for step in range(1, 251):  # 25 s of updates every 0.1 s
        clock.now += 0.1
        progress.update(step, 250)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert CLEAR_LINE not in stream.getvalue()


def test_notes_stay_above_the_live_line():
    progress, stream, _ = reporter(live=True)
    progress.update(10, 100)
    progress.note("backup 3 written")
    text = stream.getvalue()
    assert "backup 3 written\n" in text
    # the live line was cleared before the note and drawn again after it
    before, after = text.split("backup 3 written\n")
    assert before.endswith(CLEAR_LINE)
    assert after.startswith(CLEAR_LINE + "replay: 10/100")


def test_notes_in_quiet_mode_are_plain_lines():
    progress, stream, _ = reporter(live=False)
    progress.note("backup 1 written")
    assert stream.getvalue() == "backup 1 written\n"


def test_finish_clears_the_live_line_and_prints_the_summary():
    progress, stream, clock = reporter(live=True)
    clock.now += 1
    progress.update(100, 100)
    progress.finish("replay done: 100 records")
    assert stream.getvalue().endswith(CLEAR_LINE + "replay done: 100 records\n")


def test_unknown_total_has_no_eta():
    progress, _, clock = reporter(live=False)
    clock.now += 2
    progress.update(40)
    assert progress.eta_s() is None
    assert progress.line().startswith("replay: 40 records, 20 records/s")
    assert "ETA" not in progress.line()


def test_long_lines_are_cut_to_the_terminal_width():
    progress, stream, clock = reporter(live=True, width=30)
    clock.now += 1
    progress.update(1, 10, "a detail much longer than thirty characters")
    drawn = stream.getvalue().split(CLEAR_LINE)[-1]
    assert len(drawn) == 30 and drawn.endswith("…")


def test_not_a_terminal_means_quiet_by_default():
    assert Progress(io.StringIO(), label="x").live is False
