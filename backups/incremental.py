"""Writing incremental backups: whether the next backup may be one, and what changed.

The snapshotter asks :func:`choose_kind` before it writes backup M. An incremental is
chosen only when it can be resolved later exactly: an earlier published backup of the
source exists, its chain since the last full is shorter than ``full_every``, every file
of that chain still matches its manifest, and its tables have the same columns and key.
Otherwise the backup is full and the manifest says why (``kind_reason``).

What changed comes, per table, from the keys the replica shards recorded as changed
(:mod:`backups.writer.keyed_changes`); where that cannot be exact, :func:`write_changes`
compares the table's content at the cut with the previous backup resolved in full, by
primary key. The layout is described in :mod:`backups.chain`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb

from backups.catalog import Backup, list_backups
from backups.chain import (
    DELETED_SCHEMA,
    FULL,
    INCREMENTAL,
    MATCH_KEY,
    MATCH_ROW,
    ChainError,
    chain_of,
)
from backups.verify import verify_files
from producers.sqlite_changelog import quote_identifier
from schemas.records import TableDefinition

META_TABLES = "_cutline_tables"  # each backup's tables and their DDL (snapshotter.py)
PREVIOUS = "_cutline_previous"  # the alias the previous backup is attached under
BLOCK_SIZE = 16_384  # DuckDB block size of an incremental's file (the default is 256 KiB)


class NeedsFull(Exception):
    """Raised while writing an incremental whose tables turn out not to match its parent."""


@dataclass(frozen=True)
class KindChoice:
    """Full or incremental, on which parent, and why."""

    kind: str
    reason: str
    parent: Backup | None = None
    base_marker_id: int | None = None
    chain_length: int = 1  # backups from the full base to this one, both included

    def as_full(self, reason: str) -> KindChoice:
        return replace(self, kind=FULL, reason=reason, parent=None, base_marker_id=None)

    def manifest_fields(self, marker_id: int) -> dict[str, Any]:
        incremental = self.kind == INCREMENTAL and self.parent is not None
        return {
            "kind": self.kind,
            "kind_reason": self.reason,
            "parent_marker_id": self.parent.marker_id if incremental else None,
            "base_marker_id": self.base_marker_id if incremental else marker_id,
            "chain_length": self.chain_length if incremental else 1,
        }


def choose_kind(
    backups_dir: Path,
    source: str,
    marker_id: int,
    definitions: list[TableDefinition],
    full_every: int,
) -> KindChoice:
    """Decide whether backup ``marker_id`` is written full or as an incremental."""
    full = KindChoice(FULL, "")
    if full_every <= 1:
        return full.as_full("full_every is 1: every backup is full")
    earlier = [b for b in list_backups(backups_dir, source) if b.marker_id < marker_id]
    if not earlier:
        return full.as_full("no earlier backup of this source to build on")
    previous = earlier[-1]
    try:
        chain = chain_of(previous)
    except ChainError as exc:
        return full.as_full(f"the previous backup's chain cannot be resolved: {exc}")
    if len(chain) >= full_every:
        return full.as_full(
            f"the chain since full backup {chain[0].marker_id} has {len(chain)} backups "
            f"(full_every {full_every})"
        )
    for link in chain:
        problems = verify_files(link)
        if problems:
            return full.as_full(f"the previous backup's chain is damaged: {problems[0]}")
    mismatch = definitions_mismatch(previous, definitions)
    if mismatch:
        return full.as_full(mismatch)
    return KindChoice(
        INCREMENTAL,
        f"changes since backup {previous.marker_id}",
        parent=previous,
        base_marker_id=chain[0].marker_id,
        chain_length=len(chain) + 1,
    )


def definitions_mismatch(previous: Backup, definitions: list[TableDefinition]) -> str | None:
    """Why ``previous`` cannot be the parent of a backup of these tables (None: it can)."""
    tables = previous.manifest["tables"]
    wanted = [d.table for d in definitions]
    if sorted(tables) != sorted(wanted):
        return (
            f"tables differ from backup {previous.marker_id}: {sorted(tables)} != {sorted(wanted)}"
        )
    for d in definitions:
        info = tables[d.table]
        before = [(c["name"], c["declared_type"]) for c in info["columns"]]
        now = [(c.name, c.declared_type) for c in d.columns]
        if before != now or list(info["key_columns"]) != list(d.key_columns):
            return f"table {d.table!r} changed columns or key since backup {previous.marker_id}"
    ddl = _ddl_of(previous)
    for d in definitions:  # same columns, other constraints: restore must use the new DDL
        if ddl.get(d.table) != d.ddl:
            return (
                f"table {d.table!r} was re-created with another CREATE TABLE since backup "
                f"{previous.marker_id}"
            )
    return None


def _ddl_of(backup: Backup) -> dict[str, str]:
    """Each table's CREATE TABLE as a backup recorded it (empty if it cannot be read)."""
    try:
        conn = duckdb.connect(str(backup.duckdb_path), read_only=True)
    except duckdb.Error:
        return {}
    try:
        rows = conn.execute(f"SELECT table_name, ddl FROM {META_TABLES}").fetchall()
    except duckdb.Error:
        return {}
    finally:
        conn.close()
    return {str(name): str(ddl) for name, ddl in rows}


def types_mismatch(previous: Backup, table: str, types: list[str]) -> str | None:
    """Why table ``table`` with these backup column types cannot build on ``previous``."""
    before = [c["type"] for c in previous.manifest["tables"][table]["columns"]]
    if before != types:
        return (
            f"column types of table {table!r} changed since backup {previous.marker_id} "
            f"({before} -> {types})"
        )
    return None


def _unique(db: duckdb.DuckDBPyConnection, relation: str, keys: list[str]) -> bool:
    """No two rows of ``relation`` hold the same ``keys`` (NULLs equal, as in DISTINCT).

    Sorted, then each row compared with the one before it: a sort spills to disk under a
    ``memory_limit`` (``backups.writer.staged_diff``), where ``SELECT DISTINCT`` over 6M
    keys ran out of 128 MB."""
    order = ", ".join(keys)
    same = " AND ".join(f"{k} IS NOT DISTINCT FROM lag({k}) OVER w" for k in keys)
    duplicates = db.execute(
        f"SELECT count(*) FROM (SELECT row_number() OVER w > 1 AND {same} AS again "
        f"FROM {relation} WINDOW w AS (ORDER BY {order})) WHERE again"
    ).fetchall()[0][0]
    return bool(duplicates == 0)


def write_changes(
    db: duckdb.DuckDBPyConnection,
    current: str,
    table: str,
    columns: list[str],
    key_columns: list[str],
) -> dict[str, Any]:
    """Create ``table`` (changed rows) and ``_cutline_deleted.table`` in ``db``.

    ``current`` names the relation holding the table's content at this marker; the
    previous backup, resolved, is attached as ``_cutline_previous``. Returns the match
    mode and the counts for the manifest.
    """
    target = quote_identifier(table)
    previous = f"{PREVIOUS}.main.{target}"
    keys = [quote_identifier(k) for k in key_columns]
    by_key = (
        bool(keys)
        and all(k in columns for k in key_columns)
        and _unique(db, current, keys)
        and _unique(db, previous, keys)
    )
    removed = ", ".join(keys) if by_key else "*"
    db.execute(f"CREATE SCHEMA IF NOT EXISTS {DELETED_SCHEMA}")
    db.execute(
        f"CREATE TABLE {target} AS SELECT * FROM {current} EXCEPT ALL SELECT * FROM {previous}"
    )
    db.execute(
        f"CREATE TABLE {DELETED_SCHEMA}.{target} AS "
        f"SELECT {removed} FROM {previous} EXCEPT ALL SELECT {removed} FROM {current}"
    )
    changed = db.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0]
    deleted = db.execute(f"SELECT count(*) FROM {DELETED_SCHEMA}.{target}").fetchall()[0][0]
    return {
        "match": MATCH_KEY if by_key else MATCH_ROW,
        "changed": int(changed),
        "deleted": int(deleted),
        "deleted_columns": list(key_columns) if by_key else list(columns),
    }
