"""The checker: every published backup against the oracle, and the replica against the primary.

What counts, and as what:

* **mismatch**: a backup (its DuckDB tables, its Avro files, or for a few backups per
  run, the newest of each layout, a ``cutline restore``) that differs from the
  primary at its marker's commit boundary, in rows or in layout (the tables it holds and
  each table's columns: a backup cut after an ADD COLUMN has the column, one before it
  has not); a backup whose manifest offsets are not where
  that marker sits in every partition of the ops topic (a cut not all partitions
  reached); a file whose SHA-256 differs from its manifest (a partial backup); a backup
  of a cut the control topic resolved as abandoned or failed; a cut left unresolved
  (neither published nor reported) after the drain; a replica that differs from the
  primary once drained; a group offset that moved backwards.
* **lost**: rows the oracle has and the backup or replica lacks, and operations a
  partition missed (a gap reported at a marker).
* **duplicated**: rows the backup or replica has beyond the oracle, operations a
  partition applied twice (a gap the other way), and changes the replica refused (a
  dead letter in a run without bad input means an operation was applied out of order
  or twice).

The control topic's final status of each cut is computed by replaying it through the
same :class:`~consumers.alignment.Alignment` rules every replication process uses.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from backups.catalog import Backup, list_backups
from backups.storage.local.durable import sha256_of
from consumers.alignment import Alignment, CutStatus
from consumers.replica import STATE, ShardState, open_readonly, read_state, shard_path
from cutline.kafka_clients import make_consumer
from cutline.settings import Topics
from schemas.codec import CodecError, decode
from schemas.records import ConsistencyMarker, ControlEvent, ControlKind, Operation
from tests.integration.ops_log import replica_rows
from tests.integration.pipeline import CUTLINE, Rows, avro_rows, backup_rows
from tests.integration.test_backups_in_use import restored_rows, typed

_GAP = re.compile(r"says (\d+) operations since the previous marker, the replica applied (\d+)")


@dataclass
class Verdict:
    backups_verified: int = 0
    restores_verified: int = 0
    mismatches: int = 0
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)
    statuses: dict[int, CutStatus] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.lost or self.duplicated or self.problems)

    def problem(self, text: str, *, mismatch: bool = True) -> None:
        self.problems.append(text)
        if mismatch:
            self.mismatches += 1

    def merge(self, other: Verdict) -> None:
        self.backups_verified += other.backups_verified
        self.restores_verified += other.restores_verified
        self.mismatches += other.mismatches
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.problems.extend(other.problems)


def read_topic(
    bootstrap: str, topic: str, partitions: int, deadline_s: float = 30.0
) -> dict[int, list[tuple[int, bytes]]]:
    """Every committed record of a topic, per partition, read up to its current end."""
    consumer = make_consumer(
        bootstrap, f"cutline-faults-reader-{time.monotonic_ns()}", **{"enable.partition.eof": True}
    )
    out: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        at_end: set[int] = set()
        end = time.monotonic() + deadline_s
        while len(at_end) < partitions:
            if time.monotonic() > end:
                raise AssertionError(f"reading {topic} did not reach its end in {deadline_s} s")
            for message in consumer.consume(1000, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                    continue
                at_end.discard(message.partition())
                out[message.partition()].append((message.offset(), message.value()))
    finally:
        consumer.close()
    return out


def control_events(bootstrap: str, source: str) -> list[ControlEvent]:
    events = []
    for _, value in read_topic(bootstrap, Topics(source).control, 1)[0]:
        try:
            record = decode(value)
        except CodecError:
            continue
        if isinstance(record, ControlEvent) and record.source == source:
            events.append(record)
    return events


def ops_records(bootstrap: str, source: str, partitions: int) -> list[tuple[int, int, object]]:
    """Every decodable record of the ops topic as (partition, offset, record)."""
    out = []
    for p, records in read_topic(bootstrap, Topics(source).ops, partitions).items():
        for offset, value in records:
            try:
                out.append((p, offset, decode(value)))
            except CodecError:
                continue
    return out


def marker_positions(records: list[tuple[int, int, object]]) -> dict[int, dict[int, int]]:
    """Where each marker sits in each partition of the ops topic: {marker: {p: offset}}."""
    found: dict[int, dict[int, int]] = {}
    for p, offset, record in records:
        if isinstance(record, ConsistencyMarker):
            found.setdefault(record.marker_id, {})[p] = offset
    return found


def explain_missing(
    records: list[tuple[int, int, object]],
    table: str,
    row: tuple,
    columns: list[str],
) -> str:
    """Whether a row missing from a backup or the replica was ever published by capture."""
    image = dict(zip(columns, row, strict=True))
    for p, offset, record in records:
        if isinstance(record, Operation) and record.table == table and record.after == image:
            return f"published at partition {p} offset {offset} ({record.op})"
    return "never published on the ops topic (lost before replication)"


def final_statuses(events: list[ControlEvent]) -> dict[int, CutStatus]:
    alignment = Alignment(timeout_s=float("inf"))
    for event in events:
        alignment.apply(event, 0.0)
    return {m: cut.status for m, cut in alignment.cuts.items()}


def diff_rows(expected: Rows, observed: Rows) -> tuple[int, int]:
    """(lost, extra) rows between two table sets, as multisets."""
    lost = extra = 0
    for table in set(expected) | set(observed):
        want, have = Counter(expected.get(table, [])), Counter(observed.get(table, []))
        lost += sum((want - have).values())
        extra += sum((have - want).values())
    return lost, extra


def shard_state(replica: Path, source: str, partition: int) -> ShardState | None:
    """A shard's state, or None while the shard is absent or still being created.

    A replication process creates a shard in steps (the file, WAL mode, then its tables),
    so a reader polling meanwhile can open a file without ``_cutline_state``; on a loaded
    machine that window is wide enough to hit. That is "no state yet", not an error. A
    shard being written may be locked for a moment, too; anything else is raised.
    """
    path = shard_path(replica, source, partition)
    if not path.is_file():
        return None
    try:
        conn = open_readonly(path)
        try:
            created = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (STATE,)
            ).fetchone()
            return read_state(conn, partition) if created else None
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "unable to open" in str(exc):
            return None
        raise


def shards_settled(replica: Path, source: str, partitions: int, marker_id: int) -> bool:
    """True once every shard has passed ``marker_id`` and holds no marker."""
    for p in range(partitions):
        state = shard_state(replica, source, p)
        if state is None or state.marker_id < marker_id or state.held:
            return False
    return True


def check_backup_files(backup: Backup) -> list[str]:
    """Every file the manifest lists exists with the recorded size and SHA-256."""
    problems = []
    for entry in backup.manifest["files"]:
        path = backup.path / entry["path"]
        if not path.is_file():
            problems.append(f"backup {backup.marker_id}: {entry['path']} is missing")
        elif path.stat().st_size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
            problems.append(f"backup {backup.marker_id}: {entry['path']} differs from its manifest")
    return problems


def layout_differences(backup: Backup, layout: dict[str, list[str]]) -> list[str]:
    """How a backup's tables and columns differ from the primary's at its cut (none: [])."""
    problems = []
    if sorted(backup.tables) != sorted(layout):
        problems.append(
            f"backup {backup.marker_id} holds tables {sorted(backup.tables)}, the source "
            f"captured {sorted(layout)} at the cut"
        )
    for table, columns in layout.items():
        info = backup.tables.get(table)
        have = [c["name"] for c in info["columns"]] if info else None
        if info and have != columns:
            problems.append(
                f"backup {backup.marker_id}: {table} has columns {have}, the primary had "
                f"{columns} at the cut"
            )
    return problems


def restores_to_check(
    layouts: dict[int, dict[str, list[str]]], published: list[int], at_most: int
) -> list[int]:
    """Which backups to restore: the newest of each layout the published backups have (so
    both sides of a schema change), at most ``at_most``, the newest always among them."""
    newest: dict[str, int] = {}
    for marker_id in sorted(published):
        newest[repr(sorted(layouts[marker_id].items()))] = marker_id
    chosen = sorted(newest.values())
    if len(chosen) <= at_most:
        return chosen
    if at_most <= 1:
        return chosen[-at_most:] if at_most else []
    n = len(chosen) - 1  # evenly spread, the oldest and the newest layouts included
    return sorted({chosen[round(i * n / (at_most - 1))] for i in range(at_most)})


def check_restore(backups: Path, source: str, marker_id: int, expected: Rows, into: Path) -> str:
    """`cutline restore` of one backup equals the primary at its cut, each value with its
    storage class, and holds no other table; '' if so, else what differs."""
    target = into / f"restore-{source[-12:]}-{marker_id}.sqlite"
    target.unlink(missing_ok=True)
    result = subprocess.run(
        [*CUTLINE, "restore", "--backups", str(backups), "--source", source,
         "--marker", str(marker_id), "--to", str(target)],
        capture_output=True, text=True, timeout=120, cwd=into,
    )  # fmt: skip
    if result.returncode != 0:
        return f"restore of backup {marker_id} failed: {result.stderr.strip()}"
    rows, _ = restored_rows(target)
    target.unlink(missing_ok=True)
    if sorted(rows) != sorted(expected):
        return f"restore of backup {marker_id} holds tables {sorted(rows)}, not {sorted(expected)}"
    differ = [t for t in expected if typed(rows[t]) != typed(expected[t])]
    if differ:
        return f"restore of backup {marker_id} differs from the primary at its cut in {differ}"
    return ""


def verify_run(
    *,
    bootstrap: str,
    source: str,
    partitions: int,
    backups: Path,
    replica: Path,
    oracle: dict[int, Rows],
    primary_now: Rows,
    primary_columns: dict[str, list[str]],
    layouts: dict[int, dict[str, list[str]]] | None = None,
    check_replica: bool = True,
    restore_into: Path | None = None,
    restores: int = 1,
) -> Verdict:
    """Check one source of a finished (drained) run; see the module docstring for what
    counts. ``oracle`` and ``layouts`` hold, per marker, this source's tables' rows and
    columns at the cut (without ``layouts``, every cut is taken to have the final
    layout and layouts are not checked); ``primary_now`` and ``primary_columns`` the same
    after the drain. With ``restore_into`` (a scratch directory) and ``layouts``, up to
    ``restores`` backups (:func:`restores_to_check`) are also restored and compared."""
    verdict = Verdict()
    events = control_events(bootstrap, source)
    statuses = final_statuses(events)
    verdict.statuses = statuses
    records = ops_records(bootstrap, source, partitions)
    positions = marker_positions(records)

    for event in events:
        if event.kind is ControlKind.FAILED and event.detail and (gap := _GAP.search(event.detail)):
            expected, applied = int(gap.group(1)), int(gap.group(2))
            if applied > expected:
                verdict.duplicated += applied - expected
            else:
                verdict.lost += expected - applied
            verdict.problem(f"marker {event.marker_id}: {event.detail}", mismatch=False)

    published = {b.marker_id: b for b in list_backups(backups, source)}
    for marker_id, backup in sorted(published.items()):
        if marker_id not in oracle:
            verdict.problem(f"backup {marker_id} is of a marker the workload never cut")
            continue
        status = statuses.get(marker_id)
        if status is not CutStatus.PUBLISHED:
            verdict.problem(f"backup {marker_id} exists but the control topic says {status}")
        offsets = {int(p): o for p, o in backup.manifest["offsets"].items()}
        if offsets != positions.get(marker_id):
            verdict.problem(
                f"backup {marker_id} covers offsets {offsets}, but the marker sits at "
                f"{positions.get(marker_id)}: not a cut every partition reached"
            )
        for text in check_backup_files(backup):
            verdict.problem(text)
        proof = backup.manifest.get("proof") or {}
        if proof.get("checked") is not True:  # every marker of the workload has a digest
            verdict.problem(f"backup {marker_id} was not proven against the primary: {proof}")
        expected = oracle[marker_id]
        layout = layouts[marker_id] if layouts is not None else primary_columns
        for text in layout_differences(backup, layout) if layouts is not None else ():
            verdict.problem(text)
        for label, rows in (("DuckDB", backup_rows(backup)), ("Avro", avro_rows(backup)[0])):
            lost, extra = diff_rows(expected, rows)
            if lost or extra:
                verdict.lost += lost
                verdict.duplicated += extra
                verdict.problem(
                    f"backup {marker_id} ({label}) differs from the primary at its cut: "
                    f"{lost} rows missing, {extra} rows extra"
                )
                for table in layout if label == "DuckDB" else ():
                    for row in list(Counter(expected[table]) - Counter(rows.get(table, [])))[:2]:
                        why = explain_missing(records, table, row, layout[table])
                        verdict.problems.append(f"  {table} row {row!r} missing: {why}")
        verdict.backups_verified += 1

    if restore_into is not None and layouts is not None:
        chosen = restores_to_check(layouts, [m for m in published if m in oracle], restores)
        for marker_id in chosen:
            text = check_restore(backups, source, marker_id, oracle[marker_id], restore_into)
            if text:
                verdict.problem(text)
            else:
                verdict.restores_verified += 1

    for marker_id in sorted(oracle):
        status = statuses.get(marker_id)
        if status is None or not status.resolved:
            verdict.problem(f"cut {marker_id} was never resolved (status {status})")
        elif status is CutStatus.PUBLISHED and marker_id not in published:
            verdict.problem(f"cut {marker_id} is PUBLISHED on the control topic but has no backup")

    dead = sum(len(r) for r in read_topic(bootstrap, Topics(source).dead_letter, 1).values())
    if dead:
        verdict.duplicated += dead
        verdict.problem(f"{dead} dead letters in a run without bad input", mismatch=False)

    if check_replica:
        in_replica = replica_rows(replica, source, partitions, primary_columns)
        lost, extra = diff_rows(primary_now, in_replica)
        if lost or extra:
            verdict.lost += lost
            verdict.duplicated += extra
            verdict.problem(f"the drained replica differs from the primary: -{lost} +{extra} rows")
            for table in primary_columns:
                missing = Counter(primary_now[table]) - Counter(in_replica[table])
                surplus = Counter(in_replica[table]) - Counter(primary_now[table])
                for row in list(missing)[:3]:
                    why = explain_missing(records, table, row, primary_columns[table])
                    verdict.problems.append(
                        f"  {table} row {row!r} missing from the replica: {why}"
                    )
                for row in list(surplus)[:3]:
                    verdict.problems.append(f"  {table} row {row!r} is in the replica only")
    return verdict
