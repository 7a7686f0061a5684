"""Errors a user can act on. Each message says what went wrong and what to do."""

from __future__ import annotations


class CutlineError(Exception):
    """Base of every error cutline reports to a user (exit status 1)."""

    exit_code = 1


class ConfigError(CutlineError):
    """A missing or invalid setting or option (exit status 2, like argparse)."""

    exit_code = 2


class BrokerError(CutlineError):
    """Kafka could not be reached, started or used."""


class DeadlineExceeded(CutlineError):
    """A bounded wait ran out; the message names what was waited for."""
