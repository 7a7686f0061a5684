"""Options and commands for watching cutline run: logs, metrics, ``status`` and ``dlq``.

Kept beside ``cutline.parser`` so that the observability options are defined once and
added to each long-running command with one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cutline.logs import FORMATS, LEVELS


def add_log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (timestamp, level, logger, message) or json (one object per line: ts, "
        "level, logger, message and fields) (default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        choices=LEVELS,
        default="info",
        help="least severe level logged (default: %(default)s)",
    )


def add_metrics_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, liveness at /healthz "
        "and readiness at /readyz (off by default; port 0 picks a free port, logged at start)",
    )


def add_observe_commands(
    sub: Any,
    add_kafka: Callable[[argparse.ArgumentParser], None],
    add_source: Callable[[argparse.ArgumentParser], None],
) -> None:
    status = sub.add_parser(
        "status",
        help="one screen for an operator: newest backup, cuts, dead letters, lag, backlog",
        description="Read (never write) the source's control and dead-letter topics and its "
        "replication group: the newest published backup and its age, cuts in flight, failed "
        "and abandoned cuts with their reasons, dead letters with their reasons, and the "
        "group's lag per partition (>= 1 when idle: a transaction's commit marker takes an "
        "offset). With --backups the newest backup is read from the catalog, with --db the "
        "capture backlog (changes not yet published) is shown too.",
    )
    status.add_argument("--backups", type=Path, help="backups directory (optional)")
    status.add_argument("--db", type=Path, help="the SQLite primary, for the capture backlog")
    status.add_argument(
        "--limit",
        type=int,
        default=5,
        metavar="N",
        help="failed cuts and dead letters to show (default: %(default)s)",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    add_kafka(status)
    add_source(status)

    dlq = sub.add_parser(
        "dlq",
        help="list and show dead letters: records replication set aside, with the reason",
        description="Read (never write) cutline.<source>.dlq. Each dead letter keeps the "
        "original key and value; headers give the reason and where it came from (topic, "
        "partition, offset). Lists the newest --limit; --show OFFSET prints one in full "
        "(the value decoded when it is a cutline record, else a hex preview).",
    )
    dlq.add_argument(
        "--limit", type=int, default=20, metavar="N", help="newest N (default: %(default)s)"
    )
    dlq.add_argument("--show", type=int, metavar="OFFSET", help="print this dead letter in full")
    dlq.add_argument("--json", action="store_true", help="print JSON")
    add_kafka(dlq)
    add_source(dlq)
