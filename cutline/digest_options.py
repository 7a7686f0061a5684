"""Command-line options of the digest proof, shared by capture, mark, replicate, replay."""

from __future__ import annotations

import argparse

DEFAULT_DIGEST_TIMEOUT_S = 120.0  # how long a cut waits for the primary's digest


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not above 0")
    return value


def add_digest_every(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--digest-every",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="compute the primary's digest of every captured table (the proof each backup "
        "is checked against) on every N-th marker; the others publish unproven. It reads "
        "every row from a snapshot, without blocking writers (default: %(default)s, every "
        "marker)",
    )


def add_digest_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--digest-timeout",
        type=_seconds,
        default=DEFAULT_DIGEST_TIMEOUT_S,
        metavar="SECONDS",
        help="how long a cut waits for the primary's digest of its marker before it fails "
        "unpublished (default: %(default)s)",
    )
