"""Verification of published backups: is every file exactly what the manifest says?

A backup is only as good as its bytes. :func:`verify_backup` reports every problem as a
sentence naming the marker and the file, so a flipped byte or a truncated file is found
before a restore needs it. It checks, in order (a later check runs only when the files
it reads passed the earlier ones, so a damaged file is never opened by DuckDB):

1. each manifest file's size and SHA-256;
2. an incremental's chain: every backup back to its full base is present and intact;
3. the DuckDB file: it names the same source and marker, and each table holds the
   manifest's rows (an incremental: its changed and deleted rows, and, resolved through
   its chain, the full row count);
4. each table's Avro file holds the same rows as its DuckDB table, compared by content,
   and its header names the manifest's source, marker and T1 (the manifest itself has
   no checksum, so the checksummed files vouch for what it says the backup is);
5. each table's digest, recomputed from the DuckDB content (an incremental: resolved
   through its chain), equals the one recorded at the cut, which the snapshotter proved
   equal to the primary's at T1 (``backups.backup_digest``).

:func:`verify_catalog` also reports a backup directory whose manifest is missing,
unreadable or incomplete: the catalog cannot list it, so nothing else would.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import pyarrow as pa

from backups.backup_digest import digest_problems
from backups.catalog import Backup, damaged_backup_dirs, list_backups, marker_id_of_dir
from backups.chain import (
    DELETED_SCHEMA,
    INCREMENTAL,
    ChainError,
    chain_of,
    deleted_avro_path,
    resolved_database,
)
from backups.storage.local.durable import sha256_of
from backups.writer.duckdb_format import DuckDBFile
from producers.markers import format_time
from producers.sqlite_changelog import quote_identifier, quote_text

ARROW_TYPES = {
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "VARCHAR": pa.string(),
    "BLOB": pa.binary(),
}


VERIFY_MEMORY = "128MB"  # DuckDB's memory_limit while comparing a table with its Avro file
AVRO_BATCH_ROWS = 32_768  # Avro records held as Python objects at once
_BACKUP = "_cutline_backup_file"  # the backup's DuckDB file, attached beside the Avro rows


def _label(backup: Backup) -> str:
    return f"marker {backup.marker_id} ({backup.path})"


@dataclass(frozen=True)
class Verified:
    """The verdict on one backup directory: intact when ``problems`` is empty."""

    path: Path
    source: str
    marker_id: int | None
    kind: str | None  # None when the manifest cannot be read
    problems: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "marker_id": self.marker_id,
            "kind": self.kind,
            "path": str(self.path),
            "ok": not self.problems,
            "problems": self.problems,
        }


def verify_catalog(
    backups_dir: Path, source: str | None = None, marker_id: int | None = None
) -> list[Verified]:
    """Verify every backup under ``backups_dir`` (or of ``source``, or of ``marker_id``),
    including the directories whose manifest is damaged, which the catalog cannot list."""
    results = [
        Verified(b.path, b.source, b.marker_id, b.kind, verify_backup(b))
        for b in list_backups(backups_dir, source)
        if marker_id is None or b.marker_id == marker_id
    ]
    for path, problem in damaged_backup_dirs(backups_dir, source):
        found = marker_id_of_dir(path)
        if marker_id is None or found == marker_id:
            message = (
                f"marker {found} ({path}): {problem}, so the backup cannot be used; restore "
                "the directory from a copy, or remove it"
            )
            results.append(Verified(path, path.parent.name, found, None, [message]))
    return sorted(results, key=lambda r: (r.source, r.marker_id or 0, str(r.path)))


def verify_files(backup: Backup) -> list[str]:
    """Problems with the size or SHA-256 of the files ``backup``'s manifest lists."""
    problems: list[str] = []
    label = _label(backup)
    for entry in backup.manifest.get("files", []):
        rel = str(entry.get("path"))
        path = backup.path / rel
        if not path.is_file():
            problems.append(f"{label}: file {rel} is missing")
            continue
        size = path.stat().st_size
        if size != entry.get("bytes"):
            problems.append(
                f"{label}: file {rel} has {size} bytes, the manifest says {entry.get('bytes')}"
                f"{' (truncated)' if size < int(entry.get('bytes') or 0) else ''}"
            )
            continue
        if sha256_of(path) != entry.get("sha256"):
            problems.append(f"{label}: file {rel} does not match its SHA-256 in the manifest")
    return problems


def verify_chain(backup: Backup) -> list[str]:
    """Problems with the backups an incremental needs (none for a full backup)."""
    if backup.kind != INCREMENTAL:
        return []
    try:
        chain = chain_of(backup)
    except ChainError as exc:
        return [f"{_label(backup)}: chain broken: {exc}"]
    problems = []
    for link in chain[:-1]:
        for problem in verify_files(link):
            problems.append(
                f"{_label(backup)}: needs backup {link.marker_id}, which is damaged: {problem}"
            )
    return problems


def verify_backup(backup: Backup) -> list[str]:
    """Every problem found in ``backup`` (empty: intact). Never raises for a bad backup."""
    problems = verify_files(backup)
    if problems:
        return problems
    chain_problems = verify_chain(backup)
    try:
        problems.extend(_verify_contents(backup, resolve=not chain_problems))
    except (duckdb.Error, sqlite3.Error, OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        problems.append(f"{_label(backup)}: cannot read the backup: {exc}")
    return chain_problems + problems


def _verify_contents(backup: Backup, *, resolve: bool) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="cutline-verify-") as scratch:
        return _verify_contents_in(backup, Path(scratch), resolve=resolve)


def _verify_contents_in(backup: Backup, scratch: Path, *, resolve: bool) -> list[str]:
    label = _label(backup)
    incremental = backup.kind == INCREMENTAL
    problems: list[str] = []
    db = duckdb.connect(str(backup.duckdb_path), read_only=True)
    try:
        identity = db.execute("SELECT source, marker_id FROM _cutline_backup").fetchall()
        if identity != [(backup.source, backup.marker_id)]:
            problems.append(
                f"{label}: {backup.manifest['duckdb']} names source and marker {identity}, not "
                f"the manifest's ({backup.source!r}, {backup.marker_id})"
            )
        if backup.t1 != format_time(backup.t1_us):
            problems.append(
                f"{label}: the manifest's t1 {backup.t1!r} and t1_us {backup.t1_us} disagree"
            )
        for table, info in backup.tables.items():
            target = quote_identifier(table)
            expected = info.get("changed", info["rows"]) if incremental else info["rows"]
            problems.extend(
                _compare_table(
                    db,
                    backup,
                    f"main.{target}",
                    table,
                    info,
                    backup.avro_path(table),
                    expected,
                    scratch=scratch,
                )
            )
            if incremental:
                deleted_path = deleted_avro_path(backup, table)
                if deleted_path is None:
                    problems.append(f"{label}: table {table!r} names no file of deleted rows")
                    continue
                problems.extend(
                    _compare_table(
                        db,
                        backup,
                        f"{DELETED_SCHEMA}.{target}",
                        table,
                        info,
                        deleted_path,
                        info.get("deleted"),
                        only=info.get("deleted_columns"),
                        scratch=scratch,
                    )
                )
    finally:
        db.close()
    if not incremental:
        problems.extend(digest_problems(label, backup.duckdb_path, backup.tables))
    if incremental and resolve:
        try:
            with resolved_database(backup) as path:
                problems.extend(digest_problems(label, path, backup.tables))
                full = duckdb.connect(str(path), read_only=True)
                try:
                    for table, info in backup.tables.items():
                        (n,) = full.execute(
                            f"SELECT count(*) FROM {quote_identifier(table)}"
                        ).fetchall()[0]
                        if n != info["rows"]:
                            problems.append(
                                f"{label}: table {table!r} resolved through its chain has {n} "
                                f"rows, the manifest says {info['rows']}"
                            )
                finally:
                    full.close()
        except ChainError as exc:
            problems.append(f"{label}: {exc}")
    return problems


def _compare_table(
    db: duckdb.DuckDBPyConnection,
    backup: Backup,
    relation: str,
    table: str,
    info: dict[str, Any],
    avro_path: Path,
    expected_rows: int | None,
    *,
    scratch: Path,
    only: list[str] | None = None,
) -> list[str]:
    """Row count of ``relation`` and whether ``avro_path`` holds exactly its rows.

    The Avro rows stream, a batch at a time, into a scratch DuckDB file (its connection
    renewed as a backup writer's is), and are compared there with the backup's table,
    attached read-only, by ``EXCEPT ALL`` within ``VERIFY_MEMORY``: holding the rows as
    Python lists made verifying a 6M-row backup take 2.2 GB."""
    label = _label(backup)
    rel = avro_path.relative_to(backup.path)
    columns = [c for c in info["columns"] if only is None or c["name"] in only]
    if only is not None:
        columns.sort(key=lambda c: only.index(c["name"]))
    problems = []
    (count,) = db.execute(f"SELECT count(*) FROM {relation}").fetchall()[0]
    if expected_rows is not None and count != expected_rows:
        problems.append(
            f"{label}: table {table!r} in {backup.manifest['duckdb']} has {count} rows, "
            f"the manifest says {expected_rows}"
        )
    rows_file = scratch / "avro.duckdb"
    with open(avro_path, "rb") as f:
        reader = fastavro.reader(f)
        header = dict(reader.metadata)
        file = _stage_avro(reader, columns, rows_file, scratch / "spill")
    named = {k: header.get(f"cutline.{k}") for k in ("source", "marker_id", "t1")}
    manifest_says = {
        "source": backup.source,
        "marker_id": str(backup.marker_id),
        "t1": format_time(backup.t1_us),
    }
    for key, value in named.items():
        if value != manifest_says[key]:
            problems.append(
                f"{label}: {rel} names {key} {value!r} in its header, the manifest says "
                f"{manifest_says[key]!r}"
            )
    try:
        # compared in the scratch file's connection, which has the memory bound (the
        # backup's own may be open elsewhere in this process with other settings)
        conn = file.renew()
        conn.execute(f"ATTACH {quote_text(str(backup.duckdb_path))} AS {_BACKUP} (READ_ONLY)")
        names = ", ".join(quote_identifier(c["name"]) for c in columns)
        theirs = f"{_BACKUP}.{relation}"
        (missing, extra) = conn.execute(
            f"SELECT (SELECT count(*) FROM (SELECT {names} FROM {theirs} "
            f"EXCEPT ALL SELECT * FROM rows)), "
            f"(SELECT count(*) FROM (SELECT * FROM rows "
            f"EXCEPT ALL SELECT {names} FROM {theirs}))"
        ).fetchall()[0]
    finally:
        file.close()
        rows_file.unlink(missing_ok=True)
    if missing or extra:
        problems.append(
            f"{label}: {rel} does not hold the rows of table {table!r}: {missing} rows of the "
            f"DuckDB table are not in it and {extra} of its rows are not in the table"
        )
    return problems


def _bounded(spill: Path) -> dict[str, str]:
    """DuckDB within ``VERIFY_MEMORY``, spilling to ``spill``, rows in any order."""
    return {
        "memory_limit": VERIFY_MEMORY,
        "temp_directory": str(spill),
        "preserve_insertion_order": "false",
    }


def _stage_avro(reader: Any, columns: list[dict[str, Any]], path: Path, spill: Path) -> DuckDBFile:
    """Every record of ``reader`` into table ``rows`` of a new DuckDB file at ``path``,
    whose connection is returned open (the caller closes it)."""
    fields = [c["avro_field"] for c in columns]
    schema = pa.schema([pa.field(c["name"], ARROW_TYPES[c["type"]]) for c in columns])
    file = DuckDBFile(path, _bounded(spill))
    try:
        conn = file.conn
        conn.register("_cutline_batch", schema.empty_table())
        conn.execute("CREATE TABLE rows AS SELECT * FROM _cutline_batch")
        since_renew = 0
        for chunk in _chunks(reader, AVRO_BATCH_ROWS):
            values = [[record.get(name) for record in chunk] for name in fields]
            batch = pa.record_batch(
                [pa.array(v, type=t) for v, t in zip(values, schema.types, strict=True)],
                schema=schema,
            )
            conn.register("_cutline_batch", batch)
            conn.execute("INSERT INTO rows SELECT * FROM _cutline_batch")
            conn.unregister("_cutline_batch")
            since_renew += len(chunk)
            if since_renew >= file.RENEW_ROWS:
                conn = file.renew()
                since_renew = 0
    except BaseException:
        file.close()
        raise
    return file


def _chunks(records: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
