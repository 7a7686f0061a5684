"""The snapshotter: backup M from the replica, as every shard was while held at M.

Order of steps (each one only after the previous is durable):

1. :func:`pin_cut`: open a read transaction on every shard of M's declared set and check
   that each is held at M, at the offset it reported (a shard anywhere else means the
   backup would not be the cut: fail, never guess). In WAL mode a read transaction keeps
   the snapshot it started with, so from here on the shards may move past M (the caller
   releases the partitions) and what is read below is still exactly the cut. While it is
   open, no checkpoint can go past M in that shard: the WAL grows by what replication
   writes meanwhile, and shrinks back at the next checkpoint after the pin is closed;
2. read each table from all shards, streaming in Arrow batches (``backups.writer.table_stream``,
   types decided first by ``backups.writer.column_types``), and write it to a DuckDB database
   (one table per captured table, plus ``_cutline_backup`` and ``_cutline_tables``
   metadata) and to one Avro object container file per table (``backups.writer.avro_blocks``),
   whose header names marker, T1, T2 and source (an incremental, see
   ``backups.incremental`` and ``backups.writer.keyed_changes``, keeps only the rows changed
   since the previous backup, and the keys deleted; ``backups.chain`` describes the
   layout);
3. write the manifest (files with SHA-256, sizes, row counts) last, inside a temp dir;
4. fsync and rename the temp dir into the catalog (``durable.publish_directory``).

The partitions may be released (offsets committed) once step 1 is done: see
``consumers.coordinator`` for what happens to a cut whose writer dies after that.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from backups.catalog import MANIFEST, MANIFEST_FORMAT, Backup, backup_dir_name, source_dir
from backups.chain import DELETED_SCHEMA, INCREMENTAL, ChainError, resolved_database
from backups.incremental import (
    BLOCK_SIZE,
    KindChoice,
    NeedsFull,
    choose_kind,
    types_mismatch,
)
from backups.storage.local.durable import TEMP_PREFIX, publish_directory, sha256_of
from backups.writer.avro_blocks import ContainerWriter
from backups.writer.column_types import (  # noqa: F401  (affinity, column_type: the typing API)
    DOUBLE,
    TEXT_FALLBACK,
    ColumnType,
    affinity,
    column_type,
    column_types_of,
    presumed_types,
)
from backups.writer.duckdb_format import DuckDBFile, writer_config, written_with
from backups.writer.keyed_changes import KeyedChanges, write_keyed_changes
from backups.writer.staged_diff import STAGED, STAGED_DIR, StagedDiff
from backups.writer.table_proof import ProofAccumulator, shard_chunks
from backups.writer.table_stream import (
    BATCH_ROWS,
    BatchObserver,
    PresumptionFailed,
    arrow_schema,
    shard_batches,
)
from consumers import changed_keys
from consumers.digest_proof import (
    DigestMismatch,
    DigestMissing,
    DigestWaitStopped,
    ProofSource,
    prove,
    replica_digests,
)
from consumers.replica import load_definitions, open_readonly, read_state, shard_path
from cutline import failpoints
from cutline.errors import CutlineError
from producers.markers import format_time
from producers.sqlite_changelog import quote_identifier
from schemas.records import TableDefinition

DUCKDB_FILE = "backup.duckdb"
AVRO_DIR = "avro"
META_TABLE = "_cutline_backup"
META_TABLES = "_cutline_tables"


class SnapshotError(CutlineError):
    """The replica is not exactly at the cut, or the backup could not be written."""


@dataclass(frozen=True)
class CutPlan:
    """What a backup of marker M needs: the cut's identity and where each partition is."""

    source: str
    marker_id: int
    t1_us: int
    partitions: int
    offsets: dict[int, int]
    tables: tuple[str, ...]
    alignment_s: float | None = None


_AVRO_NAME = re.compile(r"[^A-Za-z0-9_]")


def avro_names(names: list[str]) -> list[str]:
    """Avro field names for arbitrary column names: sanitized, never clashing."""
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        base = _AVRO_NAME.sub("_", name) or "_"
        if base[0].isdigit():
            base = "_" + base
        candidate, n = base, 1
        while candidate in seen:
            n += 1
            candidate = f"{base}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


@dataclass
class PinnedCut:
    """Read transactions on every shard, each begun while the shard was held at the cut.

    ``t2_us`` is T2, the instant the cut was pinned. Closing it ends the transactions
    (always: ``write_backup`` closes it in a ``finally``), which lets checkpoints go on.
    """

    plan: CutPlan
    connections: list[Any]
    t2_us: int

    def interrupt(self) -> None:
        """Abort a read in progress on any shard (from another thread: a stuck write's
        deadline); the write then fails with an SQLite error and nothing is published."""
        for conn in self.connections:
            with contextlib.suppress(sqlite3.Error):
                conn.interrupt()

    def close(self) -> None:
        for conn in self.connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self.connections = []


def pin_cut(replica_dir: Path, plan: CutPlan, opened: dict[int, Any] | None = None) -> PinnedCut:
    """Pin cut M: a read transaction on every shard, each checked to be held at M.

    ``opened``: read transactions already begun on some shards (partition -> connection,
    see :mod:`consumers.prepin`); they are checked like the others, and are the pin's to
    close from now on.
    """
    connections = _check_shards(replica_dir, plan, dict(opened or {}))
    return PinnedCut(plan, connections, time.time_ns() // 1000)


def _check_shards(replica_dir: Path, plan: CutPlan, opened: dict[int, Any]) -> list[Any]:
    """Open every shard in a read transaction and check it is held at the cut.

    The read transaction pins each shard's content as of the check, so what is read
    afterwards is exactly what was checked.
    """
    connections: list[Any] = []
    try:
        for p in range(plan.partitions):
            if p in opened:  # begun while the shard was held: checked below like any other
                conn = opened.pop(p)
                connections.append(conn)
                state = read_state(conn, p)
            else:
                path = shard_path(replica_dir, plan.source, p)
                if not path.is_file():
                    raise SnapshotError(f"replica shard for partition {p} is missing ({path})")
                conn = open_readonly(path)
                connections.append(conn)
                conn.execute("BEGIN")
                state = read_state(conn, p)
            expected = plan.offsets.get(p)
            if state is None or not (
                state.held and state.marker_id == plan.marker_id and state.offset == expected
            ):
                raise SnapshotError(
                    f"partition {p} is not held at marker {plan.marker_id} offset {expected} "
                    f"(replica state: {state}); refusing to write a backup that is not the cut"
                )
    except BaseException as exc:
        for conn in [*connections, *opened.values()]:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            raise SnapshotError(
                f"cannot read the replica for marker {plan.marker_id}: {exc}"
            ) from exc
        raise
    for conn in opened.values():  # partitions outside the cut's declared set
        conn.close()
    return connections


def _definitions(conn: Any, tables: tuple[str, ...]) -> list[TableDefinition]:
    known = {d.table: d for d in load_definitions(conn)}
    missing = [t for t in tables if t not in known]
    if missing:
        raise SnapshotError(f"tables {missing} of the cut are not defined in the replica")
    return [known[t] for t in tables]


def write_backup(
    replica_dir: Path,
    backups_dir: Path,
    plan: CutPlan,
    *,
    writer: str,
    avro_codec: str = "deflate",
    full_every: int = 1,
    on_batch: BatchObserver | None = None,
    proof: ProofSource | None = None,
    pinned: PinnedCut | None = None,
    deadline: float | None = None,
) -> Backup:
    """Write and publish backup ``plan.marker_id``; return it as catalogued.

    ``pinned`` is the cut as :func:`pin_cut` pinned it (its partitions may have been
    released since); without it the shards are pinned here. Either way the pin is closed
    before this returns or raises. Past ``deadline`` (``time.monotonic()``) nothing is
    published: a write that took too long fails, since its cut was reported failed.

    ``full_every`` N > 1 makes the backup an incremental (only what changed since the
    previous backup) while the chain since the last full is shorter than N; see
    ``backups.incremental``. ``proof`` gives the primary's digest of the marker: the
    backup is published only if the replica rows have the same digests
    (``consumers.digest_proof``).
    """
    started = time.monotonic()
    parent = source_dir(backups_dir, plan.source)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SnapshotError(f"cannot create backups directory {parent}: {exc}") from exc
    final = parent / backup_dir_name(plan.marker_id)
    temp = parent / f"{TEMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    pin = pinned if pinned is not None else pin_cut(replica_dir, plan)
    connections = pin.connections
    t2_us = pin.t2_us  # T2: the instant the replica was pinned
    try:
        temp.mkdir()
        definitions = _definitions(connections[0], plan.tables) if connections else []
        choice = choose_kind(backups_dir, plan.source, plan.marker_id, definitions, full_every)
        try:
            tables_meta = _write_files(
                temp, connections, definitions, plan, t2_us, writer, avro_codec, choice, on_batch
            )
        except NeedsFull as exc:  # a column's type changed: this backup cannot be incremental
            choice = choice.as_full(str(exc))
            shutil.rmtree(temp)
            temp.mkdir()
            tables_meta = _write_files(
                temp, connections, definitions, plan, t2_us, writer, avro_codec, choice, on_batch
            )
        written = time.monotonic()
        try:
            checked = prove(plan.marker_id, replica_digests(tables_meta), proof)
        except (DigestMismatch, DigestMissing) as exc:
            raise SnapshotError(str(exc)) from exc
        manifest = _manifest(temp, plan, t2_us, writer, tables_meta, time.monotonic() - started)
        manifest.update(choice.manifest_fields(plan.marker_id))
        manifest["proof"] = checked
        # of snapshot_ms, the wait for the primary's digest (its cost is the table's size)
        manifest["proof_wait_ms"] = round((time.monotonic() - written) * 1000, 3)
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if deadline is not None and time.monotonic() > deadline:
            raise SnapshotError(f"backup {plan.marker_id} was not written before its deadline")
        publish_directory(temp, final)
    except (SnapshotError, DigestWaitStopped):
        _discard(temp)
        raise
    except (OSError, duckdb.Error, sqlite3.Error, ValueError, CutlineError) as exc:
        _discard(temp)
        raise SnapshotError(
            f"writing backup {plan.marker_id} under {parent} failed: {exc}"
        ) from exc
    finally:
        pin.close()
    # Published: no later incremental builds on an earlier backup than this one.
    shards = [shard_path(replica_dir, plan.source, p) for p in range(plan.partitions)]
    changed_keys.prune(shards, plan.marker_id)
    return Backup(final, manifest)


def _discard(temp: Path) -> None:
    shutil.rmtree(temp, ignore_errors=True)


def _write_files(
    temp: Path,
    connections: list[Any],
    definitions: list[TableDefinition],
    plan: CutPlan,
    t2_us: int,
    writer: str,
    codec: str,
    choice: KindChoice,
    on_batch: BatchObserver | None = None,
) -> dict[str, dict[str, Any]]:
    """Write the DuckDB file and the Avro files into ``temp``, full or incremental.

    An incremental takes each table's changes from the keys the shards recorded
    (``backups.writer.keyed_changes``: reads only those rows); a table where that cannot be
    exact is diffed in full against the previous backup resolved, as before, and its
    manifest entry says why (``changes_from``).
    """
    (temp / AVRO_DIR).mkdir()
    tables_meta: dict[str, dict[str, Any]] = {}
    # An incremental is small: DuckDB's default 256 KiB blocks would dwarf its content.
    blocks = {"default_block_size": str(BLOCK_SIZE)} if choice.kind == INCREMENTAL else {}
    file = DuckDBFile(temp / DUCKDB_FILE, writer_config(**blocks))
    db = file.conn
    try:
        parent = choice.parent if choice.kind == INCREMENTAL else None
        keyed: dict[str, KeyedChanges] = {}
        why_full_diff: dict[str, str] = {}
        if parent is not None:
            for d in definitions:
                result = write_keyed_changes(db, connections, d, parent)
                if isinstance(result, KeyedChanges):
                    keyed[d.table] = result
                else:
                    why_full_diff[d.table] = result
        # Every other column's type first: an incremental that must be full is known
        # before any row is read, so ``on_batch`` sees each table once. A full backup
        # without an observer may start from the declared types (``presumed_types``).
        types: dict[str, list[ColumnType]] = {}
        presumed: set[str] = set()
        for d in definitions:
            if d.table in keyed:
                continue
            declared = presumed_types(d) if parent is None and on_batch is None else None
            if declared is not None:
                presumed.add(d.table)
            types[d.table] = declared or column_types_of(connections, d)
        if parent is not None:
            for table, table_types in types.items():
                mismatch = types_mismatch(parent, table, [t.duckdb for t in table_types])
                if mismatch:
                    raise NeedsFull(mismatch)
        with contextlib.ExitStack() as previous:
            resolved: Path | None = None  # the previous backup in full, for a full diff
            if parent is not None and types:  # a table needs the full diff
                try:
                    resolved = previous.enter_context(resolved_database(parent))
                except ChainError as exc:
                    raise NeedsFull(f"the previous backup cannot be resolved: {exc}") from exc
            avro_files = avro_names([d.table for d in definitions])
            for definition, avro_base in zip(definitions, avro_files, strict=True):
                avro_rel = f"{AVRO_DIR}/{avro_base}.avro"
                if definition.table in keyed:
                    changes = keyed[definition.table]
                    meta = _write_keyed_table(
                        db, definition, changes, temp, avro_rel, plan, t2_us, codec
                    )
                    meta.update(changes.proof)  # derived from the parent's digest
                else:
                    meta = _write_table(
                        file,
                        connections,
                        definition,
                        types[definition.table],
                        temp,
                        avro_rel,
                        plan,
                        t2_us,
                        codec,
                        resolved,
                        on_batch,
                        presumed=definition.table in presumed,
                    )
                    db = file.conn  # a full backup renews it while a big table streams
                    if parent is not None:
                        meta["changes_from"] = (
                            f"a diff of the whole table: {why_full_diff[definition.table]}"
                        )
                tables_meta[definition.table] = meta
                failpoints.hit("snapshot.mid_write")  # a table written, the backup not
        _write_metadata(db, plan, t2_us, writer, definitions, tables_meta, choice)
        db.execute("CHECKPOINT")
    finally:
        file.close()
    return tables_meta


_BATCH_VIEW = "_cutline_batch"  # the Arrow batch being written, as DuckDB sees it


def _avro_schema(definition: TableDefinition, types: list[ColumnType]) -> dict[str, Any]:
    names = list(definition.column_names)
    return {
        "type": "record",
        "name": avro_names([definition.table])[0],
        "namespace": "io.cutline.backup",
        "fields": [
            {"name": f, "type": ["null", t.avro], "default": None, "cutline.column": n}
            for f, t, n in zip(avro_names(names), types, names, strict=True)
        ],
    }


def _write_table(
    file: DuckDBFile,
    connections: list[Any],
    definition: TableDefinition,
    types: list[ColumnType],
    temp: Path,
    avro_rel: str,
    plan: CutPlan,
    t2_us: int,
    codec: str,
    previous: Path | None = None,
    on_batch: BatchObserver | None = None,
    presumed: bool = False,
) -> dict[str, Any]:
    """Write one table; with ``previous`` (the previous backup's DuckDB file, resolved)
    only what changed since it, by a diff of the whole table.

    ``types`` were decided before, from a summary of every shard, or (``presumed``, a full
    backup) from the declaration alone (``column_types.presumed_types``): then a value that
    does not fit them makes the table start over with the scanned types, so the types
    written are always the scan's.
    """

    def stream(types: list[ColumnType], presumed: bool) -> dict[str, Any]:
        return _stream_table(
            file,
            connections,
            definition,
            types,
            temp,
            avro_rel,
            plan,
            t2_us,
            codec,
            previous,
            on_batch,
            presumed=presumed,
        )

    if presumed:
        try:
            return stream(types, presumed=True)
        except PresumptionFailed:  # the file is rewritten from the start below
            file.conn.execute(f"DROP TABLE IF EXISTS {quote_identifier(definition.table)}")
            types = column_types_of(connections, definition)
    return stream(types, presumed=False)


def _stream_table(
    file: DuckDBFile,
    connections: list[Any],
    definition: TableDefinition,
    types: list[ColumnType],
    temp: Path,
    avro_rel: str,
    plan: CutPlan,
    t2_us: int,
    codec: str,
    previous: Path | None = None,
    on_batch: BatchObserver | None = None,
    presumed: bool = False,
) -> dict[str, Any]:
    """The rows stream: each shard is read in Arrow batches of at most ``BATCH_ROWS`` rows,
    each batch goes to ``on_batch``, into DuckDB and (full backup) into the Avro file, then
    is dropped. The same pass takes the table's digest from the native rows
    (``backups.writer.table_proof``). The connection the rows go into (the backup's own
    for a full backup, a scratch file's for a whole-table diff, ``StagedDiff``) is renewed
    every ``DuckDBFile.RENEW_ROWS`` rows, so DuckDB's memory stays bounded."""
    names = list(definition.column_names)
    schema = _avro_schema(definition, types)
    metadata = _avro_metadata(definition, plan, t2_us)
    target = quote_identifier(definition.table)
    with contextlib.ExitStack() as scratch:
        staged: StagedDiff | None = None
        sink, into = file, target  # a full backup fills the table itself
        if previous is not None:  # an incremental stages the rows to compare them
            staged = StagedDiff(temp / STAGED_DIR, previous)
            scratch.callback(staged.close)
            sink, into = staged.file, STAGED
        conn = sink.conn
        conn.register(_BATCH_VIEW, arrow_schema(names, types).empty_table())
        conn.execute(f"CREATE TABLE {into} AS SELECT * FROM {_BATCH_VIEW}")
        rows = since_renew = 0
        with open(temp / avro_rel, "wb") as out:
            with contextlib.ExitStack() as stack:
                avro = None  # an incremental's Avro file holds only the changes: written below
                if staged is None:
                    avro = stack.enter_context(ContainerWriter(out, schema, codec, metadata))
                proof = ProofAccumulator(definition, types)
                batches = shard_batches(
                    connections, definition, types, BATCH_ROWS, proof.add, presumed=presumed
                )
                for batch in batches:
                    if on_batch is not None:
                        on_batch(definition.table, batch)
                    conn.register(_BATCH_VIEW, batch)
                    conn.execute(f"INSERT INTO {into} SELECT * FROM {_BATCH_VIEW}")
                    if avro is not None:
                        avro.write(batch)
                    rows += batch.num_rows
                    since_renew += batch.num_rows
                    if since_renew >= sink.RENEW_ROWS:
                        conn = sink.renew()  # nothing TEMP or ATTACHed on it yet
                        since_renew = 0
            conn.unregister(_BATCH_VIEW)
            changes: dict[str, Any] | None = None
            if staged is not None:
                changes = staged.diff_into(
                    file.conn, definition.table, names, list(definition.key_columns)
                )
                with ContainerWriter(out, schema, codec, metadata) as avro:
                    _copy_to_avro(file.conn, f"SELECT * FROM {target}", avro)
    db = file.conn
    meta = _table_meta(definition, types, rows, avro_rel)
    meta.update(proof.fields(shard_chunks(connections, definition)))
    if changes is not None:
        meta.update(changes)
        meta["deleted_avro"] = avro_rel.removesuffix(".avro") + ".deleted.avro"
        _write_deleted_avro(db, definition.table, meta, temp, schema, codec, metadata)
    return meta


def _avro_metadata(definition: TableDefinition, plan: CutPlan, t2_us: int) -> dict[str, str]:
    return {
        "cutline.source": plan.source,
        "cutline.marker_id": str(plan.marker_id),
        "cutline.t1": format_time(plan.t1_us),
        "cutline.t2": format_time(t2_us),
        "cutline.table": definition.table,
        "cutline.columns": json.dumps(list(definition.column_names)),
    }


def _table_meta(
    definition: TableDefinition, types: list[ColumnType], rows: int, avro_rel: str
) -> dict[str, Any]:
    names = list(definition.column_names)
    return {
        "rows": rows,
        "columns": [
            {
                "name": n,
                "declared_type": c.declared_type,
                "type": t.duckdb,
                "avro_field": f,
                "text_fallback": t is TEXT_FALLBACK,
            }
            for n, c, t, f in zip(names, definition.columns, types, avro_names(names), strict=True)
        ],
        "key_columns": list(definition.key_columns),
        "avro": avro_rel,
    }


def _write_keyed_table(
    db: duckdb.DuckDBPyConnection,
    definition: TableDefinition,
    changes: KeyedChanges,
    temp: Path,
    avro_rel: str,
    plan: CutPlan,
    t2_us: int,
    codec: str,
) -> dict[str, Any]:
    """The Avro files of a table whose changes are already in ``db`` (keyed_changes)."""
    schema = _avro_schema(definition, changes.types)
    metadata = _avro_metadata(definition, plan, t2_us)
    with open(temp / avro_rel, "wb") as out, ContainerWriter(out, schema, codec, metadata) as avro:
        _copy_to_avro(db, f"SELECT * FROM {quote_identifier(definition.table)}", avro)
    meta = _table_meta(definition, changes.types, changes.rows, avro_rel)
    meta.update(changes.fields)
    meta["changes_from"] = "the keys the replica recorded as changed"
    meta["deleted_avro"] = avro_rel.removesuffix(".avro") + ".deleted.avro"
    _write_deleted_avro(db, definition.table, meta, temp, schema, codec, metadata)
    return meta


def _copy_to_avro(db: duckdb.DuckDBPyConnection, query: str, avro: ContainerWriter) -> None:
    """The rows of a DuckDB query into ``avro``, batch by batch."""
    relation = db.sql(query)
    if hasattr(relation, "to_arrow_reader"):  # DuckDB >= 1.4
        reader = relation.to_arrow_reader(BATCH_ROWS)
    else:
        reader = relation.record_batch(BATCH_ROWS)
    for batch in reader:
        avro.write(batch)


def _write_deleted_avro(
    db: duckdb.DuckDBPyConnection,
    table: str,
    meta: dict[str, Any],
    temp: Path,
    table_schema: dict[str, Any],
    codec: str,
    metadata: dict[str, str],
) -> None:
    """``avro/<T>.deleted.avro``: the same rows as ``_cutline_deleted.T``."""
    by_column = {f["cutline.column"]: f for f in table_schema["fields"]}
    fields = [by_column[c] for c in meta["deleted_columns"]]  # the DuckDB table's order
    schema = {
        "type": "record",
        "name": table_schema["name"] + "_deleted",
        "namespace": "io.cutline.backup",
        "fields": fields,
    }
    order = [f["cutline.column"] for f in fields]
    columns = ", ".join(quote_identifier(c) for c in order)
    header = {**metadata, "cutline.columns": json.dumps(order), "cutline.kind": "deleted"}
    with (
        open(temp / meta["deleted_avro"], "wb") as out,
        ContainerWriter(out, schema, codec, header) as avro,
    ):
        _copy_to_avro(db, f"SELECT {columns} FROM {DELETED_SCHEMA}.{quote_identifier(table)}", avro)


def _write_metadata(
    db: duckdb.DuckDBPyConnection,
    plan: CutPlan,
    t2_us: int,
    writer: str,
    definitions: list[TableDefinition],
    tables_meta: dict[str, dict[str, Any]],
    choice: KindChoice,
) -> None:
    db.execute(
        f"CREATE TABLE {META_TABLE} (source VARCHAR, marker_id BIGINT, t1 TIMESTAMPTZ, "
        "t2 TIMESTAMPTZ, partitions INTEGER, offsets VARCHAR, writer VARCHAR, kind VARCHAR, "
        "parent_marker_id BIGINT, base_marker_id BIGINT)"
    )
    chain = choice.manifest_fields(plan.marker_id)
    db.execute(
        # make_timestamptz: microseconds since the epoch are an instant. A TIMESTAMP
        # (make_timestamp) cast to TIMESTAMPTZ would be read in the local time zone.
        f"INSERT INTO {META_TABLE} VALUES (?, ?, make_timestamptz(?::BIGINT), "
        "make_timestamptz(?::BIGINT), ?, ?, ?, ?, ?, ?)",
        [
            plan.source,
            plan.marker_id,
            plan.t1_us,
            t2_us,
            plan.partitions,
            json.dumps({str(k): v for k, v in sorted(plan.offsets.items())}),
            writer,
            chain["kind"],
            chain["parent_marker_id"],
            chain["base_marker_id"],
        ],
    )
    db.execute(
        f"CREATE TABLE {META_TABLES} (table_name VARCHAR, ddl VARCHAR, key_columns VARCHAR, "
        "row_count BIGINT, avro_file VARCHAR)"
    )
    for d in definitions:
        meta = tables_meta[d.table]
        db.execute(
            f"INSERT INTO {META_TABLES} VALUES (?, ?, ?, ?, ?)",
            [d.table, d.ddl, ",".join(d.key_columns), meta["rows"], meta["avro"]],
        )


def _manifest(
    temp: Path,
    plan: CutPlan,
    t2_us: int,
    writer: str,
    tables_meta: dict[str, dict[str, Any]],
    snapshot_s: float,
) -> dict[str, Any]:
    files = []
    avro_rels = [
        rel
        for meta in tables_meta.values()
        for rel in (meta["avro"], meta.get("deleted_avro"))
        if rel is not None
    ]
    for rel in [DUCKDB_FILE, *avro_rels]:
        path = temp / rel
        files.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_of(path)})
    return {
        "format": MANIFEST_FORMAT,
        "source": plan.source,
        "marker_id": plan.marker_id,
        "t1": format_time(plan.t1_us),
        "t1_us": plan.t1_us,
        "t2": format_time(t2_us),
        "t2_us": t2_us,
        "partitions": plan.partitions,
        "offsets": {str(k): v for k, v in sorted(plan.offsets.items())},
        "duckdb": DUCKDB_FILE,
        "tables": tables_meta,
        "files": files,
        "writer": writer,
        "written_with": written_with(),  # cutline and DuckDB versions, storage format
        "alignment_ms": None if plan.alignment_s is None else round(plan.alignment_s * 1000, 3),
        "snapshot_ms": round(snapshot_s * 1000, 3),
    }
