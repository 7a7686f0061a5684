"""Log formats: JSON lines for machines, text with time and level for people."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from cutline.logs import LogStream, progress, setup_logging
from cutline.progress import Progress


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_lines_hold_time_level_logger_message_and_fields(stream: io.StringIO) -> None:
    setup_logging("json", "info", stream=stream)
    progress("backup 7 published", marker_id=7)
    logging.getLogger("cutline.coordinator").warning("cut %s failed: %s", 8, 'say "why"')
    logging.getLogger("cutline.coordinator").debug("not shown at info")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["level"] == "info" and first["logger"] == "cutline"
    assert first["message"] == "backup 7 published" and first["marker_id"] == 7
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert second == {**second, "level": "warning", "message": 'cut 8 failed: say "why"'}


def test_json_lines_carry_the_traceback(stream: io.StringIO) -> None:
    setup_logging("json", "info", stream=stream)
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("cutline.x").exception("snapshot stopped")
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "error" and "ValueError: broken" in entry["exc"]


def test_text_lines_have_a_timestamp_and_a_level(stream: io.StringIO) -> None:
    setup_logging("text", "warning", stream=stream)
    progress("hidden at warning")
    logging.getLogger("cutline.capture").warning("slow")
    (line,) = stream.getvalue().splitlines()
    date, time_, level, rest = line.split(" ", 3)
    assert len(date) == 10 and ":" in time_
    assert level == "WARNING" and rest == "cutline.capture: slow"


def test_progress_reporter_through_a_log_stream_gives_one_log_line_per_line(
    stream: io.StringIO,
) -> None:
    setup_logging("json", "info", stream=stream)
    now = [0.0]
    reporter = Progress(LogStream(), label="replay", clock=lambda: now[0], quiet_every_s=10)
    assert not reporter.live, "a log stream is never a terminal"
    for step in range(1, 4):
        now[0] = step * 10.0
        reporter.update(step * 100)
    reporter.note("cut 3 failed")
    reporter.finish("replay done: 300 records")
    messages = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
    assert messages[-2:] == ["cut 3 failed", "replay done: 300 records"]
    assert all("\r" not in m and "\x1b" not in m for m in messages)
    assert any(m.startswith("replay: 300 records, 10 records/s") for m in messages), messages
