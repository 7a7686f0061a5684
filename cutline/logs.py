"""Logging for every command: text for people, one JSON object per line for machines.

Why here: progress lines, warnings and errors of long-running commands all go through
``logging``, so ``--log-format`` and ``--log-level`` change every one of them at once,
and a log shipper gets each line with its timestamp, level and logger.

JSON lines hold ``ts`` (ISO-8601 UTC), ``level``, ``logger`` and ``message``, plus any
``extra={...}`` fields given to the call and ``exc`` for a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS = "cutline"  # the logger progress lines go to

# attributes every LogRecord has; anything else was passed with extra={...}
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(
    log_format: str = "text",
    level: str = "info",
    *,
    verbose: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Configure the root logger once per process (replacing what was there)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    chosen = getattr(logging, level.upper())
    root.setLevel(min(chosen, logging.INFO) if verbose else chosen)
    logging.getLogger("cutline.kafka.librdkafka").setLevel(
        logging.DEBUG if verbose else logging.CRITICAL
    )


def progress(message: str, **fields: Any) -> None:
    """A progress line of a command: logged at INFO, so it gets a timestamp and a level."""
    logging.getLogger(PROGRESS).info(message, extra=fields or None)


def error(message: str) -> None:
    logging.getLogger(PROGRESS).error(message)


class LogStream:
    """A text stream whose every line is logged at INFO (for ``cutline.progress.Progress``
    when its output is not a live terminal line)."""

    def __init__(self, logger: str = PROGRESS):
        self._log = logging.getLogger(logger)
        self._buffer = ""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._buffer += text.replace("\r\x1b[K", "")
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line:
                self._log.info(line)
        return len(text)

    def flush(self) -> None:
        pass
