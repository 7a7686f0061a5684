"""Restore: a backup back into a SQLite database, the primary as it was at T1.

Order of steps, each one only after the previous succeeded:

1. verify the backup (and, for an incremental, its chain) against its manifest, and
   refuse one with problems: a restore must never turn damaged bytes into a database;
2. resolve the backup to full tables (:func:`backups.chain.resolved_database`);
3. write a temp file beside the target: each table is created from the primary's own
   ``CREATE TABLE`` statement (kept in the backup's ``_cutline_tables``), so columns,
   declared types, keys and constraints are the primary's, then filled in one transaction;
4. fsync the temp file, move it into place (never over an existing file without
   ``force``), fsync the directory.

So the target path holds either nothing new or the whole restored database, never half.

Values come back with their SQLite storage class whenever the backup kept it: integers,
reals, text and blobs are inserted as such, and a column the backup kept as text (a
column holding values outside its declared type) is inserted as text, so the column's
affinity turns ``'5'`` in an INTEGER or NUMERIC column back into the integer 5, as the
primary stored it.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from backups.catalog import Backup
from backups.chain import resolved_database
from backups.storage.local.durable import fsync_dir, fsync_file
from backups.verify import verify_backup
from cutline.errors import ConfigError, CutlineError
from producers.sqlite_changelog import quote_identifier

TABLES_META = "_cutline_tables"
CHUNK_ROWS = 20_000
PROGRESS_EVERY_ROWS = 200_000
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

Progress = Callable[[str], None]


class RestoreError(CutlineError):
    """The backup cannot be restored, or the target cannot be written."""


@dataclass(frozen=True)
class RestoredTable:
    name: str
    ddl: str
    rows: int


@dataclass
class RestoreResult:
    path: Path
    backup: Backup
    tables: list[RestoredTable] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What ``cutline restore`` prints: the file, the cut it holds, rows per table."""
        return {
            "path": str(self.path),
            "marker_id": self.backup.marker_id,
            "t1": self.backup.t1,
            "source": self.backup.source,
            "tables": {t.name: t.rows for t in self.tables},
        }


def _quiet(_message: str) -> None:
    pass


def restore_backup(
    backup: Backup,
    target: Path,
    *,
    tables: list[str] | None = None,
    force: bool = False,
    progress: Progress = _quiet,
) -> RestoreResult:
    """Write ``backup`` (all tables, or ``tables``) as a SQLite database at ``target``."""
    target = Path(target)
    check_target(target, force)
    wanted = _check_tables(backup, tables)
    problems = verify_backup(backup)
    if problems:
        raise RestoreError(
            f"backup {backup.marker_id} failed verification, nothing was restored:\n  "
            + "\n  ".join(problems)
            + "\nrestore another backup (`cutline backups` lists them)"
        )
    temp = _temp_path(target)
    result = RestoreResult(target, backup)
    try:
        with resolved_database(backup) as resolved:
            _write(resolved, temp, backup, wanted, result, progress)
        fsync_file(temp)
        _move_into_place(temp, target, force)
    except OSError as exc:
        with suppress(OSError):
            temp.unlink()
        raise RestoreError(
            f"writing the restored database to {target} failed: {exc}; check that "
            f"{target.parent} is writable and has free space, then run restore again"
        ) from exc
    except BaseException:
        with suppress(OSError):
            temp.unlink()
        raise
    progress(
        f"restored backup {backup.marker_id} (the primary at {backup.t1}) to {target}: "
        f"{len(result.tables)} tables, {sum(t.rows for t in result.tables)} rows"
    )
    return result


def _temp_path(target: Path) -> Path:
    """A hidden name beside ``target``, within the usual 255-byte limit of a file name."""
    suffix = f".cutline-restore-{uuid.uuid4().hex[:8]}"
    stem = target.name.encode()[: 254 - len(suffix)].decode(errors="ignore")
    return target.parent / f".{stem}{suffix}"


def check_target(target: Path, force: bool) -> None:
    if target.is_dir():
        raise ConfigError(f"--to {target} is a directory; give the path of a database file")
    if (target.exists() or target.is_symlink()) and not force:
        raise ConfigError(
            f"--to {target} already exists; choose a new path, or add --force to replace it"
        )
    if not target.parent.is_dir():
        raise ConfigError(f"--to {target}: directory {target.parent} does not exist")


def _check_tables(backup: Backup, tables: list[str] | None) -> list[str]:
    available = list(backup.tables)
    if tables is None:
        return available
    unknown = [t for t in tables if t not in backup.tables]
    if unknown:
        raise ConfigError(
            f"--tables: backup {backup.marker_id} has no table {', '.join(map(repr, unknown))}; "
            f"tables there: {', '.join(available) or 'none'}"
        )
    return list(dict.fromkeys(tables))


def _write(
    resolved: Path,
    temp: Path,
    backup: Backup,
    wanted: list[str],
    result: RestoreResult,
    progress: Progress,
) -> None:
    try:
        source = duckdb.connect(str(resolved), read_only=True)
    except duckdb.Error as exc:
        raise RestoreError(f"cannot open backup {backup.marker_id} ({resolved}): {exc}") from exc
    try:
        out = sqlite3.connect(temp, isolation_level=None)
    except sqlite3.Error as exc:
        source.close()
        raise RestoreError(
            f"cannot create {temp} to restore into: {exc}; check that {temp.parent} is "
            "writable and has free space"
        ) from exc
    try:
        out.execute("PRAGMA journal_mode = OFF")  # a temp file: atomicity comes from rename
        out.execute("PRAGMA synchronous = OFF")
        ddl = _ddl_by_table(source, backup)
        out.execute("BEGIN")
        for table in wanted:
            if table not in ddl:
                raise RestoreError(
                    f"backup {backup.marker_id} keeps no CREATE TABLE statement for {table!r} "
                    f"in {TABLES_META}; it cannot be restored as the primary defined it"
                )
            rows = _restore_table(source, out, backup, table, ddl[table], progress)
            result.tables.append(RestoredTable(table, ddl[table], rows))
        out.execute("COMMIT")
        out.execute("PRAGMA journal_mode = DELETE")
    except (duckdb.Error, sqlite3.Error) as exc:
        raise RestoreError(
            f"restoring backup {backup.marker_id} to {temp.parent} failed: {exc}"
        ) from exc
    finally:
        out.close()
        source.close()


def _ddl_by_table(source: duckdb.DuckDBPyConnection, backup: Backup) -> dict[str, str]:
    try:
        found = source.execute(f"SELECT table_name, ddl FROM {TABLES_META}").fetchall()
    except duckdb.Error as exc:
        raise RestoreError(
            f"backup {backup.marker_id} has no readable {TABLES_META} table with the primary's "
            f"CREATE TABLE statements: {exc}"
        ) from exc
    return {str(name): str(ddl) for name, ddl in found}


def _create_table(out: sqlite3.Connection, backup: Backup, table: str, ddl: str) -> list[str]:
    """Run the primary's own DDL; return the columns it created, in the primary's order."""
    if not ddl.lstrip().upper().startswith("CREATE TABLE") or not sqlite3.complete_statement(
        ddl + ";"
    ):
        raise RestoreError(
            f"backup {backup.marker_id}: the definition kept for {table!r} is not one "
            f"CREATE TABLE statement: {ddl[:200]!r}"
        )
    out.execute(ddl)
    info = out.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()
    if not info:
        raise RestoreError(
            f"backup {backup.marker_id}: the CREATE TABLE kept for {table!r} creates another table"
        )
    return [str(r[1]) for r in info]


def _restore_table(
    source: duckdb.DuckDBPyConnection,
    out: sqlite3.Connection,
    backup: Backup,
    table: str,
    ddl: str,
    progress: Progress,
) -> int:
    columns = _create_table(out, backup, table, ddl)
    in_backup = [c["name"] for c in backup.tables[table]["columns"]]
    if sorted(in_backup) != sorted(columns):
        raise RestoreError(
            f"backup {backup.marker_id}: table {table!r} holds columns {in_backup}, but its "
            f"CREATE TABLE defines {columns}"
        )
    names = ",".join(quote_identifier(c) for c in columns)
    total = source.execute(f"SELECT count(*) FROM {quote_identifier(table)}").fetchall()
    expected = int(total[0][0]) if total else 0
    insert = (
        f"INSERT INTO {quote_identifier(table)} ({names}) VALUES ({','.join('?' * len(columns))})"
    )
    done = 0
    next_report = PROGRESS_EVERY_ROWS
    for chunk in _chunks(source, f"SELECT {names} FROM {quote_identifier(table)}"):
        out.executemany(insert, ([_sqlite_value(v) for v in row] for row in chunk))
        done += len(chunk)
        if done >= next_report:
            progress(f"  {table}: {done}/{expected} rows")
            next_report += PROGRESS_EVERY_ROWS
    progress(f"  {table}: {done} rows")
    return done


def _chunks(source: duckdb.DuckDBPyConnection, sql: str) -> Iterator[list[tuple[Any, ...]]]:
    cursor = source.execute(sql)
    while chunk := cursor.fetchmany(CHUNK_ROWS):
        yield chunk


def _sqlite_value(value: Any) -> Any:
    """A DuckDB value as the SQLite storage class it came from."""
    if value is None or isinstance(value, int | float | str | bytes):
        return int(value) if isinstance(value, bool) else value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def _move_into_place(temp: Path, target: Path, force: bool) -> None:
    """Rename the finished file to ``target``; without ``force`` never replace a file."""
    if force:
        # A stale WAL or journal beside the old file would be applied to the new one.
        for suffix in SQLITE_SIDE_FILES:
            with suppress(FileNotFoundError):
                os.unlink(f"{target}{suffix}")
        os.replace(temp, target)
    else:
        try:
            os.link(temp, target)  # fails if target appeared meanwhile: no overwrite race
        except FileExistsError:
            raise ConfigError(
                f"--to {target} appeared while restoring; nothing was replaced (add --force "
                "to replace it)"
            ) from None
        except OSError:  # a filesystem without hard links: check, then rename
            if target.exists():
                raise ConfigError(
                    f"--to {target} appeared while restoring; nothing was replaced"
                ) from None
            os.replace(temp, target)
            fsync_dir(target.parent)
            return
        temp.unlink()
    fsync_dir(target.parent)
