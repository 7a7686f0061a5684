"""How backup DuckDB files are written so that the DuckDB versions people have can open them.

A DuckDB writes its newest storage format by default, which older DuckDBs refuse
("Trying to read a database file with version number 999"). Backups are meant to be read
for years by whatever DuckDB is at hand, so every DuckDB file cutline writes (a backup,
an incremental, the resolved copy of a chain) is written with
``storage_compatibility_version`` set to the oldest format still supported: DuckDB 1.0
and every later release read it (tested with DuckDB 1.1.3, see
``tests/integration/test_duckdb_compat.py``). The manifest records which cutline and
which DuckDB wrote the backup, and with what storage compatibility.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb

# DuckDB 1.0's storage format: readable by DuckDB >= 1.0 (1.1, 1.2, ..., 2.x).
STORAGE_COMPATIBILITY = "v1.0.0"


def writer_config(**extra: str) -> dict[str, str]:
    """``duckdb.connect(path, config=...)`` for a file that older DuckDBs must open."""
    return {"storage_compatibility_version": STORAGE_COMPATIBILITY, **extra}


class DuckDBFile:
    """A DuckDB file being written, through a connection that can be renewed.

    Why: a DuckDB connection keeps memory for every row group appended through it until it
    is closed, outside ``memory_limit`` (measured: +112 MB for 6M rows of three columns,
    still +80 MB with a 64 MB limit, all freed by ``close``), so a full backup of 10M rows
    grew ``replicate`` by ~300 MB. A writer that renews the connection every so many rows
    (``RENEW_ROWS``) keeps that memory bounded whatever the table's size.
    """

    RENEW_ROWS = 1_000_000

    def __init__(self, path: Path, config: dict[str, str]):
        self.path = path
        self.config = config
        self.conn = duckdb.connect(str(path), config=config)

    def renew(self) -> duckdb.DuckDBPyConnection:
        """Close the connection (its appended rows are in the file) and open a new one.
        Only between statements, and never with TEMP tables or ATTACHed files in use."""
        self.conn.close()
        self.conn = duckdb.connect(str(self.path), config=self.config)
        return self.conn

    def close(self) -> None:
        self.conn.close()


def cutline_version() -> str:
    try:
        return metadata.version("cutline")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def written_with() -> dict[str, Any]:
    """The manifest's ``written_with``: who wrote a backup, so a reader knows what to expect."""
    return {
        "cutline": cutline_version(),
        "duckdb": duckdb.__version__,
        "duckdb_storage_compatibility": STORAGE_COMPATIBILITY,
    }
