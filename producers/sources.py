"""Which database a source captures, and what each source has published from it.

The change log belongs to the database, the position to the source (its Kafka topics).
These tables tie the two together:

* ``_cutline_database``: the database's identity, a random id made at first install. A
  file copy keeps it; a database rebuilt by ``cutline restore`` has no cutline tables and
  gets a new one.
* ``_cutline_sources``: per source, its captured tables, the change it started after
  (``baseline_seq``: its own initial snapshot follows it), the change it has published up
  to (``cursor_seq``, written after each Kafka commit), and its incarnation (how many
  times the source was moved to a restored primary with ``--new-incarnation``).

Capture positions in Kafka carry the database id and incarnation, so :func:`plan_start`
can refuse a database that is not the one a source's topics belong to, or one whose change
log went backwards, before anything is published. The change log is trimmed only up to the
smallest cursor of all sources, so several sources can capture one database.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from enum import StrEnum

from cutline.errors import ConfigError, CutlineError
from producers.initial_snapshot import CHUNK_ROWS, forget_snapshots, start_snapshot
from producers.sqlite_changelog import (
    CHANGES,
    KIND_SCHEMA,
    MARKERS,
    TABLES,
    ChangeRow,
    ensure_changelog_tables,
    install_in_transaction,
    installed_tables,
    now_us,
    read_changes,
)
from schemas.records import CapturePosition, TableDefinition

DATABASE = "_cutline_database"
SOURCES = "_cutline_sources"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {DATABASE} (
    id TEXT NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS {SOURCES} (
    source TEXT PRIMARY KEY,
    tables TEXT NOT NULL,
    baseline_seq INTEGER NOT NULL,
    cursor_seq INTEGER NOT NULL,
    incarnation INTEGER NOT NULL,
    installed_us INTEGER NOT NULL,
    table_starts TEXT NOT NULL DEFAULT ''
);
"""

TABLE_SEPARATOR = "\x1f"


class SourceMismatch(ConfigError):
    """The database is not the one the source's topics belong to (or went backwards)."""


class SourceDropped(CutlineError):
    """The running source was dropped from the database: its next changes may be trimmed."""


@dataclass(frozen=True)
class SourceRecord:
    source: str
    tables: tuple[str, ...]
    baseline_seq: int
    cursor_seq: int
    incarnation: int
    installed_us: int
    # tables added after the source started, which another source already captured: the
    # source's own snapshot of each follows this seq, so earlier changes of it are not its
    table_starts: tuple[tuple[str, int], ...] = ()

    @property
    def published_any(self) -> bool:
        return self.cursor_seq > self.baseline_seq


@dataclass(frozen=True)
class DatabaseView:
    """What the database says about itself and one source, read before installing."""

    database_id: str | None  # None: no identity yet
    legacy: bool  # captured by a version without _cutline_sources (no identity either)
    registered: SourceRecord | None
    issued_seq: int  # the largest change-log seq the database ever handed out


class Start(StrEnum):
    FRESH = "fresh"  # a source new to this database: its own initial snapshot
    RESUME = "resume"  # the source's own database: continue after its position
    MIGRATE = "migrate"  # a database captured by the previous version, by this source
    NEW_INCARNATION = "new-incarnation"  # the primary restored: snapshot replaces the replica


@dataclass(frozen=True)
class StartPlan:
    start: Start
    incarnation: int
    resume_seq: int = 0  # RESUME / MIGRATE: the seq Kafka says was published


def _exists(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return row is not None


def issued_seq(conn: sqlite3.Connection) -> int:
    """The largest seq the change log ever handed out (AUTOINCREMENT never goes back)."""
    if not _exists(conn, "sqlite_sequence"):
        return 0
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (CHANGES,)).fetchone()
    return int(row[0]) if row else 0


def database_id(conn: sqlite3.Connection) -> str | None:
    if not _exists(conn, DATABASE):
        return None
    row = conn.execute(f"SELECT id FROM {DATABASE} LIMIT 1").fetchone()
    return row[0] if row else None


def all_sources(conn: sqlite3.Connection) -> list[SourceRecord]:
    if not _exists(conn, SOURCES):
        return []
    return [
        SourceRecord(r[0], _split(r[1]), *r[2:6], tuple((t, int(n)) for t, n in _pairs(r[6])))
        for r in conn.execute(
            f"SELECT source, tables, baseline_seq, cursor_seq, incarnation, installed_us, "
            f"table_starts FROM {SOURCES} ORDER BY source"
        )
    ]


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split(TABLE_SEPARATOR)) if text else ()


def _pairs(text: str) -> list[tuple[str, str]]:
    return [(p[0], p[1]) for p in (item.split("\x1e") for item in _split(text))]


def source_record(conn: sqlite3.Connection, source: str) -> SourceRecord | None:
    return next((s for s in all_sources(conn) if s.source == source), None)


def read_view(conn: sqlite3.Connection, source: str) -> DatabaseView:
    return DatabaseView(
        database_id=database_id(conn),
        legacy=_exists(conn, CHANGES) and not _exists(conn, SOURCES),
        registered=source_record(conn, source),
        issued_seq=issued_seq(conn),
    )


def plan_start(
    source: str,
    position: CapturePosition | None,
    view: DatabaseView,
    *,
    new_incarnation: bool,
    db_path: str,
) -> StartPlan:
    """Decide how capture of ``source`` starts on this database, or refuse with one line."""
    registered = view.registered
    other_database = (
        f"source {source!r} captures another database than {db_path}; to capture this one, "
        "use a new --source; if this database is that primary restored from a backup, run "
        "capture once with --new-incarnation"
    )
    if position is None:
        if new_incarnation:
            raise SourceMismatch(
                f"--new-incarnation: source {source!r} has published nothing yet, so there is "
                "no earlier incarnation to continue; drop --new-incarnation"
            )
        if registered is not None and registered.published_any:
            raise SourceMismatch(
                f"{db_path} says source {source!r} published changes up to "
                f"{registered.cursor_seq}, but its topics hold no capture position: they were "
                "deleted or recreated; capture into a new --source (or drop this one with "
                f"`cutline sources --db {db_path} --drop {source}`)"
            )
        if registered is not None:  # installed, crashed before its first publish
            return StartPlan(Start.RESUME, registered.incarnation, registered.cursor_seq)
        if view.legacy:
            raise SourceMismatch(
                f"{db_path} is captured by an earlier cutline version under another source: "
                "run capture of that source once first (this records it), then add "
                f"{source!r}"
            )
        return StartPlan(Start.FRESH, 0)
    next_incarnation = StartPlan(Start.NEW_INCARNATION, position.incarnation + 1)
    if (
        registered is not None
        and position.incarnation < registered.incarnation
        and not registered.published_any
    ):  # --new-incarnation installed, crashed before its first publish
        return StartPlan(Start.RESUME, registered.incarnation, registered.cursor_seq)
    same_database = position.database_id != "" and position.database_id == view.database_id
    if not same_database:
        legacy_match = position.database_id == "" and (view.legacy or registered is not None)
        if new_incarnation:
            return next_incarnation
        if not legacy_match:
            raise SourceMismatch(other_database)
    went_back = position.seq > view.issued_seq
    if new_incarnation:
        if went_back or registered is None:
            return next_incarnation
        raise SourceMismatch(
            f"--new-incarnation: {db_path} already is incarnation {registered.incarnation} of "
            f"source {source!r}; drop --new-incarnation"
        )
    if went_back:
        raise SourceMismatch(
            f"the change log of {db_path} went backwards: source {source!r} published up to "
            f"change {position.seq}, and this database has issued only {view.issued_seq} (a "
            "file copy of an older state?); point --db at the current primary, or, if this is "
            "the primary restored from a backup, run capture once with --new-incarnation"
        )
    if view.legacy:
        return StartPlan(Start.MIGRATE, 0, position.seq)
    if registered is None:
        raise SourceMismatch(
            f"source {source!r} was dropped from {db_path} (`cutline sources --drop`); its "
            "topics cannot resume: capture into a new --source, or start it over from the "
            "database's current content with --new-incarnation"
        )
    if registered.cursor_seq > position.seq:
        raise SourceMismatch(
            f"source {source!r}'s topics end at change {position.seq}, but {db_path} recorded "
            f"changes up to {registered.cursor_seq} as published: the topics lost records "
            "(recreated, or an unclean broker); capture into a new --source"
        )
    return StartPlan(Start.RESUME, registered.incarnation, position.seq)


def install_source(
    conn: sqlite3.Connection,
    source: str,
    tables: list[str],
    plan: StartPlan,
    last_marker: int,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[SourceRecord, list[TableDefinition]]:
    """Carry out ``plan`` inside the caller's write transaction; return the source's record.

    FRESH and NEW_INCARNATION register the source after the change log's current end and
    give it its own initial snapshot of every table (tagged for it only); RESUME and MIGRATE
    snapshot only tables new to the source. NEW_INCARNATION also moves the marker counter
    past ``last_marker``, so ``mark`` never hands out an id that already names a backup.
    """
    migrating = not _exists(conn, SOURCES)
    legacy_tables = (
        [r[0] for r in conn.execute(f"SELECT tbl FROM {TABLES}")] if _exists(conn, TABLES) else []
    )
    ensure_changelog_tables(conn)
    from producers.schema_changes import ensure_schema  # it builds on sqlite_changelog too

    ensure_schema(conn)  # before the cursor: a new source starts after any re-install
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    if database_id(conn) is None:
        conn.execute(f"INSERT INTO {DATABASE} VALUES (?, ?)", (str(uuid.uuid4()), now_us()))
    registered = source_record(conn, source)
    if plan.start in (Start.FRESH, Start.NEW_INCARNATION):
        forget_snapshots(conn, source)
        conn.execute(f"DELETE FROM {CHANGES} WHERE only_source = ?", (source,))
        conn.execute(f"DELETE FROM {SOURCES} WHERE source = ?", (source,))
        registered = None
    if plan.start is Start.NEW_INCARNATION:
        bump_marker_ids(conn, last_marker)
    if registered is None:
        known = legacy_tables if plan.start is Start.MIGRATE and migrating else []
        cursor = plan.resume_seq if plan.start is Start.MIGRATE else issued_seq(conn)
        owned: tuple[str, ...] = tuple(known)
    else:
        cursor, owned = registered.cursor_seq, registered.tables
        if plan.start is Start.RESUME:
            cursor = max(cursor, plan.resume_seq)
    wanted = list(dict.fromkeys([*owned, *tables]))
    captured = set(installed_tables(conn))
    let_go = [t for t in owned if t not in captured and t not in tables]  # cutline migrate
    wanted = [t for t in wanted if t not in let_go]
    definitions, snapshotted = install_in_transaction(
        conn, source, wanted, only_source=source, chunk_rows=chunk_rows
    )
    # a table let go stays the source's until it has published the 'S' row that drops it
    wanted += [t for t in let_go if t in released_after(conn, cursor)]
    starts = dict(registered.table_starts) if registered is not None else {}
    for definition in definitions:
        if definition.table not in owned and definition.table not in snapshotted:
            # captured already for another source, new to this one: the log may hold its
            # changes after this source's cursor, which this source must not publish
            # before its own snapshot of the table (they are in it)
            if registered is not None:
                starts[definition.table] = issued_seq(conn)
            start_snapshot(conn, source, definition, issued_seq(conn), chunk_rows)
    starts = {t: n for t, n in starts.items() if n > cursor}
    baseline = cursor if registered is None else registered.baseline_seq
    record = SourceRecord(
        source=source,
        tables=tuple(wanted),
        baseline_seq=baseline,
        cursor_seq=cursor,
        incarnation=plan.incarnation,
        installed_us=now_us() if registered is None else registered.installed_us,
        table_starts=tuple(sorted(starts.items())),
    )
    conn.execute(
        f"INSERT OR REPLACE INTO {SOURCES} VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            record.source,
            TABLE_SEPARATOR.join(record.tables),
            record.baseline_seq,
            record.cursor_seq,
            record.incarnation,
            record.installed_us,
            TABLE_SEPARATOR.join(f"{t}\x1e{n}" for t, n in record.table_starts),
        ),
    )
    return record, definitions


def released_after(conn: sqlite3.Connection, seq: int) -> set[str]:
    """Tables let go (an 'S' row with no new definition) in the change log after ``seq``."""
    return {
        r[0]
        for r in conn.execute(
            f"SELECT DISTINCT tbl FROM {CHANGES} WHERE kind = ? AND after IS NULL AND seq > ?",
            (KIND_SCHEMA, seq),
        )
    }


def bump_marker_ids(conn: sqlite3.Connection, past: int) -> None:
    """Make the next marker id larger than ``past`` (the AUTOINCREMENT counter)."""
    updated = conn.execute(
        "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (past, MARKERS)
    ).rowcount
    if not updated:  # no marker was ever requested on this database
        conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (MARKERS, past))


def read_source_changes(
    conn: sqlite3.Connection, source: str, after_seq: int, limit: int
) -> list[ChangeRow]:
    """The source's next changes, read in one snapshot with its registration.

    Once a source is dropped, other sources trim past it; reading both in one read
    transaction means a dropped source stops before it could publish across a gap.
    """
    conn.execute("BEGIN")
    try:
        return read_registered_changes(conn, source, after_seq, limit)
    finally:
        conn.execute("COMMIT")


def read_registered_changes(
    conn: sqlite3.Connection, source: str, after_seq: int, limit: int
) -> list[ChangeRow]:
    """:func:`read_source_changes` inside the caller's read transaction."""
    if not conn.execute(f"SELECT 1 FROM {SOURCES} WHERE source = ?", (source,)).fetchone():
        raise SourceDropped(
            f"source {source!r} was dropped from this database (`cutline sources --drop`) "
            "while capture ran; capture stopped before publishing anything past that"
        )
    return read_changes(conn, after_seq, limit, source=source)


def save_cursor(conn: sqlite3.Connection, source: str, seq: int) -> None:
    """Record that ``source`` published up to ``seq`` and trim what every source has.

    In the caller's write transaction. Only changes every registered source has
    published are deleted, and this source's own snapshot rows it has published.
    """
    conn.execute(
        f"UPDATE {SOURCES} SET cursor_seq = max(cursor_seq, ?) WHERE source = ?", (seq, source)
    )
    # its own snapshot rows, which no other source reads (a range of seq, then a filter)
    conn.execute(f"DELETE FROM {CHANGES} WHERE seq <= ? AND only_source = ?", (seq, source))
    trim(conn)


def trim(conn: sqlite3.Connection) -> None:
    """Delete the changes every registered source has published (one indexed range)."""
    (low,) = conn.execute(f"SELECT min(cursor_seq) FROM {SOURCES}").fetchone()
    if low is not None:
        conn.execute(f"DELETE FROM {CHANGES} WHERE seq <= ?", (low,))


def drop_source(conn: sqlite3.Connection, source: str) -> bool:
    """Forget a source for good (in the caller's write transaction); False if unknown.

    Its cursor no longer holds back trimming; with no source left, the whole log goes.
    """
    if source_record(conn, source) is None:
        return False
    conn.execute(f"DELETE FROM {SOURCES} WHERE source = ?", (source,))
    conn.execute(f"DELETE FROM {CHANGES} WHERE only_source = ?", (source,))
    forget_snapshots(conn, source)
    if not all_sources(conn):
        conn.execute(f"DELETE FROM {CHANGES}")
    else:
        trim(conn)
    return True
