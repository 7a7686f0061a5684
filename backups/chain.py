"""Backup chains: a full backup, then incrementals that each hold only what changed.

Every reader of a backup (query, diff, restore, verify) goes through
:func:`resolved_database`, so an incremental answers exactly like a full backup of the
same marker. A full backup resolves to its own DuckDB file, untouched.

Layout of an incremental ``marker-M`` (manifest ``"kind": "incremental"``, with
``parent_marker_id`` P and ``base_marker_id``, the full backup at the chain's start):

* ``backup.duckdb`` table ``T``: the rows of T inserted or updated since P, whole, with the
  same columns and types as T in a full backup;
* ``backup.duckdb`` table ``_cutline_deleted.T``: what was removed from T since P. When
  T's key identifies its rows (``"match": "key"``) these are the deleted keys (the key
  columns only). Otherwise (the key is SQLite's hidden rowid, or keys repeat because
  SQLite allows NULLs in a PRIMARY KEY) it holds whole removed rows, with repeats
  (``"match": "row"``);
* ``avro/<T>.avro`` holds the same rows as table T, ``avro/<T>.deleted.avro`` the same
  rows as ``_cutline_deleted.T``.

Applying an incremental to the table as of P: with ``"match": "key"``, drop every row
whose key is among the changed rows or the deleted keys, then add the changed rows; with
``"match": "row"``, take away the removed rows (as a multiset) and add the changed rows.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from backups.catalog import Backup, backup_dir_name, read_backup
from backups.writer.duckdb_format import writer_config
from cutline.errors import CutlineError
from producers.sqlite_changelog import quote_identifier, quote_text

FULL = "full"
INCREMENTAL = "incremental"
DELETED_SCHEMA = "_cutline_deleted"
MATCH_KEY = "key"
MATCH_ROW = "row"
METADATA_TABLES = ("_cutline_backup", "_cutline_tables")


class ChainError(CutlineError):
    """An incremental backup cannot be resolved: a backup of its chain is missing or bad."""


def deleted_avro_path(backup: Backup, table: str) -> Path | None:
    rel = backup.manifest["tables"][table].get("deleted_avro")
    return None if rel is None else backup.path / rel


def chain_of(backup: Backup) -> list[Backup]:
    """The backups needed to resolve ``backup``: its full base first, ``backup`` last.

    Raises ChainError naming the missing or inconsistent link and what to do about it.
    """
    chain = [backup]
    current = backup
    while current.kind == INCREMENTAL:
        parent_id = current.parent_marker_id
        if parent_id is None or parent_id >= current.marker_id:
            raise ChainError(
                f"incremental backup {current.marker_id} ({current.path}) names no valid "
                f"parent ({parent_id!r}) in its manifest; it cannot be resolved"
            )
        parent_path = current.path.parent / backup_dir_name(parent_id)
        parent = read_backup(parent_path)
        if parent is None:
            raise ChainError(
                f"backup {backup.marker_id} is incremental and needs backup {parent_id} "
                f"({parent_path}), which is missing or has no readable manifest; restore that "
                f"directory from a copy, or use a full backup"
            )
        if parent.marker_id != parent_id or parent.source != current.source:
            raise ChainError(
                f"{parent_path} does not hold backup {parent_id} of source "
                f"{current.source!r}, which backup {current.marker_id} needs"
            )
        chain.append(parent)
        current = parent
    base_id = backup.manifest.get("base_marker_id")
    if backup.kind == INCREMENTAL and base_id is not None and int(base_id) != current.marker_id:
        raise ChainError(
            f"backup {backup.marker_id} expects full backup {base_id} at the start of its "
            f"chain, but its parents lead to backup {current.marker_id}"
        )
    chain.reverse()
    return chain


def table_columns(backup: Backup, table: str) -> list[str]:
    return [c["name"] for c in backup.manifest["tables"][table]["columns"]]


def _check_same_tables(base: Backup, link: Backup) -> None:
    def shape(b: Backup) -> dict[str, Any]:
        return {
            name: [(c["name"], c["type"]) for c in info["columns"]]
            for name, info in b.manifest["tables"].items()
        }

    if shape(base) != shape(link):
        raise ChainError(
            f"backup {link.marker_id} does not have the tables and columns of backup "
            f"{base.marker_id} it builds on; the chain is inconsistent"
        )


def apply_link(db: duckdb.DuckDBPyConnection, alias: str, link: Backup) -> None:
    """Apply incremental ``link`` (attached as ``alias``) to the full tables in ``db``."""
    for table, info in link.manifest["tables"].items():
        apply_link_table(db, alias, table, info)


class _LinkTable:
    """The relations one table of an incremental (attached as ``alias``) is applied from."""

    def __init__(self, alias: str, table: str, info: dict[str, Any]) -> None:
        self.target = quote_identifier(table)
        self.changed = f"{alias}.main.{self.target}"
        self.deleted = f"{alias}.{DELETED_SCHEMA}.{self.target}"
        self.by_row = info.get("match", MATCH_KEY) == MATCH_ROW
        self.keys = [] if self.by_row else [quote_identifier(k) for k in info["key_columns"]]

    def touched_keys(self) -> str:
        """A subquery ``x`` of every key the link changed or deleted."""
        key_list = ", ".join(self.keys)
        return (
            f"(SELECT {key_list} FROM {self.changed} "
            f"UNION ALL SELECT {key_list} FROM {self.deleted}) x"
        )

    def same_key(self, left: str) -> str:
        return " AND ".join(f"{left}.{k} IS NOT DISTINCT FROM x.{k}" for k in self.keys)

    def rewrite_by_row(self, db: duckdb.DuckDBPyConnection) -> None:
        """Take away the removed rows (as a multiset) and add the changed rows."""
        db.execute(
            f"CREATE OR REPLACE TABLE {self.target} AS "
            f"(SELECT * FROM {self.target} EXCEPT ALL SELECT * FROM {self.deleted}) "
            f"UNION ALL SELECT * FROM {self.changed}"
        )


def apply_link_table(
    db: duckdb.DuckDBPyConnection, alias: str, table: str, info: dict[str, Any]
) -> None:
    """Apply one table of an incremental (attached as ``alias``) to table ``table`` in ``db``."""
    link = _LinkTable(alias, table, info)
    if link.by_row:
        link.rewrite_by_row(db)
        return
    db.execute(
        f"CREATE OR REPLACE TABLE {link.target} AS "
        f"SELECT t.* FROM {link.target} t ANTI JOIN {link.touched_keys()} "
        f"ON {link.same_key('t')} UNION ALL SELECT * FROM {link.changed}"
    )


RESOLVE_MEMORY = "256MB"  # DuckDB's memory_limit while resolving (it spills beyond it)


def build_resolved(backup: Backup, out: Path) -> None:
    """Write every table of ``backup`` in full (its chain applied in order) to ``out``.

    What it costs follows the changes, not the tables: the base's file is copied as it is
    (no row goes through DuckDB), then each link is applied in place: with ``"match":
    "key"`` a delete of the changed and deleted keys and an insert of the changed rows;
    only a ``"match": "row"`` table (rowid or repeated keys) is rewritten whole, as a
    multiset difference. DuckDB works within ``RESOLVE_MEMORY``, spilling next to
    ``out``; a chain it cannot fit in that is resolved again without the bound.
    """
    try:
        _build_resolved(backup, out, RESOLVE_MEMORY)
    except duckdb.OutOfMemoryException:
        out.unlink(missing_ok=True)
        _build_resolved(backup, out, None)


def _build_resolved(backup: Backup, out: Path, memory: str | None) -> None:
    chain = chain_of(backup)
    base = chain[0]
    for link in chain:
        if not link.duckdb_path.is_file():
            raise ChainError(
                f"backup {link.marker_id} (needed by {backup.marker_id}) lacks its "
                f"DuckDB file {link.duckdb_path}"
            )
    shutil.copyfile(base.duckdb_path, out)
    bound = {} if memory is None else {"memory_limit": memory}
    spill = out.with_name(out.name + ".spill")
    config = writer_config(temp_directory=str(spill), preserve_insertion_order="false", **bound)
    try:
        db = duckdb.connect(str(out), config=config)
    except duckdb.Error as exc:
        raise _unresolvable(backup, chain, exc) from exc
    try:
        for i, link in enumerate(chain[1:], start=1):
            alias = f"link{i}"
            _check_same_tables(base, link)
            db.execute(f"ATTACH {quote_text(str(link.duckdb_path))} AS {alias} (READ_ONLY)")
            try:
                for table, info in link.manifest["tables"].items():
                    _apply_link_table_in_place(db, alias, table, info)
                if link is backup:
                    for meta in METADATA_TABLES:
                        db.execute(
                            f"CREATE OR REPLACE TABLE {meta} AS SELECT * FROM {alias}.main.{meta}"
                        )
            finally:
                db.execute(f"DETACH {alias}")
        db.execute("CHECKPOINT")
    except duckdb.OutOfMemoryException:
        raise
    except duckdb.Error as exc:
        raise _unresolvable(backup, chain, exc) from exc
    finally:
        db.close()
        shutil.rmtree(spill, ignore_errors=True)


def _apply_link_table_in_place(
    db: duckdb.DuckDBPyConnection, alias: str, table: str, info: dict[str, Any]
) -> None:
    """:func:`apply_link_table`, touching only the changed keys' rows when it can."""
    link = _LinkTable(alias, table, info)
    if link.by_row:
        link.rewrite_by_row(db)
        return
    db.execute(
        f"DELETE FROM {link.target} USING {link.touched_keys()} WHERE {link.same_key(link.target)}"
    )
    db.execute(f"INSERT INTO {link.target} SELECT * FROM {link.changed}")


def _unresolvable(backup: Backup, chain: list[Backup], exc: Exception) -> ChainError:
    return ChainError(
        f"cannot resolve backup {backup.marker_id} from its chain "
        f"({', '.join(str(b.marker_id) for b in chain)}): {exc}; run `cutline verify` on "
        f"the backups directory to find the damaged file"
    )


@contextmanager
def resolved_database(backup: Backup, *, tmp_dir: Path | None = None) -> Iterator[Path]:
    """A DuckDB file holding every table of ``backup`` in full (open it read-only).

    The path is valid only inside the ``with`` block: for an incremental it is a
    temporary file built from the chain (under ``tmp_dir``, default the system's temp
    directory), deleted afterwards.
    """
    if backup.kind != INCREMENTAL:
        yield backup.duckdb_path
        return
    work = Path(tempfile.mkdtemp(prefix=f"cutline-resolved-{backup.marker_id}-", dir=tmp_dir))
    try:
        path = work / "resolved.duckdb"
        build_resolved(backup, path)
        yield path
    finally:
        shutil.rmtree(work, ignore_errors=True)
