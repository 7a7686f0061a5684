"""A partition's records applied to its shard: the one step ``replicate`` and ``replay`` share.

Why one copy: replay rebuilds backups from the same history that replication applied, so
every rule about what a shard takes (decode, the source check, table definitions, bulk
operations, stale markers) must be the same in both, or a replayed backup could differ
from the one ``replicate`` wrote. Only what happens to a record the shard cannot use
differs (replication dead-letters it, replay counts it), and that is the caller's
``reject``.

:func:`apply_records` never commits: it fills the shard's open batch (the caller began it)
and stops at the first usable marker, so the caller commits the batch, then handles the
marker (its count and the cut) with the shard exactly at it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from consumers.replica import ApplyError, Shard
from schemas.codec import OPERATION_HEADER, CodecError, decode
from schemas.operation_runs import RunLayout, decode_run
from schemas.records import ConsistencyMarker, Operation, TableDefinition

R = TypeVar("R")  # the caller's record: a Kafka message for replication, a pair for replay

# After an operation, the records that follow are tried as one run of its layout
# (``schemas.operation_runs``) of at most RUN_WINDOW records; a run shorter than MIN_RUN
# goes one by one, and the next try waits twice as many records (up to MAX_BACKOFF), so
# a stream of mixed layouts pays for a try only now and then.
MIN_RUN = 16
RUN_WINDOW = 4096
MAX_BACKOFF = 4096


@dataclass
class Applied(Generic[R]):
    """What :func:`apply_records` did with a run of records, up to the first marker."""

    applied: int = 0  # operations now in the shard's open batch
    rejected: int = 0  # records handed to ``reject``
    last: int | None = None  # offset of the last record taken (applied or rejected)
    marker: ConsistencyMarker | None = None  # the marker the run stopped at, if any
    marker_offset: int = -1
    rest: Sequence[R] = ()  # the records after the marker, not looked at


def stale_marker(marker: ConsistencyMarker, last_id: int, partition: int) -> str | None:
    """Why ``marker`` must not start a cut on ``partition``, or None if it may.

    Capture numbers markers in the primary's commit order, so on one partition each
    marker id is greater than the last. An id already reached (or lower) is a duplicate
    or a stray record: starting its cut again could publish a second, different backup M.
    """
    if marker.marker_id < 1:
        return f"marker id {marker.marker_id} is not positive: capture numbers markers from 1"
    if marker.marker_id > last_id:
        return None
    if marker.marker_id == last_id:
        return (
            f"duplicated marker id {marker.marker_id}: partition {partition} already reached "
            f"marker {last_id} at an earlier offset; this copy is set aside and cut "
            f"{marker.marker_id} is left as it was"
        )
    return (
        f"marker {marker.marker_id} arrived after marker {last_id} on partition {partition}: "
        "marker ids only grow, so this one is a duplicate or out of order; set aside"
    )


def apply_records(
    shard: Shard,
    source: str,
    records: Sequence[R],
    *,
    offset_of: Callable[[R], int],
    value_of: Callable[[R], bytes | None],
    done_up_to: int,
    reject: Callable[[R, str], None],
) -> Applied[R]:
    """Apply ``records`` (one partition's, in offset order) to ``shard``'s open batch.

    Records at or below ``done_up_to`` are already in the shard (redelivered after a
    rebalance or restart) and are passed over. Consecutive operations go to the shard
    together, in bulk; anything else first flushes them, so the order of every effect
    stays the order of the partition.
    """
    partition = shard.partition
    result: Applied[R] = Applied()
    pending: list[Operation] = []
    pending_records: list[R] = []

    def flush() -> None:
        if not pending:
            return
        failures = shard.apply_all(pending)
        for i, exc in failures:
            reject(pending_records[i], f"cannot apply operation: {exc}")
        result.applied += len(pending) - len(failures)
        result.rejected += len(failures)
        pending.clear()
        pending_records.clear()

    def set_aside(item: R, offset: int, reason: str) -> None:
        reject(item, reason)
        result.rejected += 1
        result.last = offset

    index, next_try, backoff = -1, 0, MIN_RUN
    while index + 1 < len(records):
        index += 1
        item = records[index]
        offset = offset_of(item)
        if offset <= done_up_to:
            continue
        try:
            record = decode(value_of(item))
        except CodecError as exc:
            flush()
            set_aside(item, offset, f"{exc.reason}: {exc}")
            continue
        if type(record) is Operation and record.source == source:
            pending.append(record)
            pending_records.append(item)
            result.last = offset
            if index + 1 >= next_try:
                window = records[index + 1 : index + 1 + RUN_WINDOW]
                taken = _operation_run(shard, record, window, value_of, flush)
                if taken:
                    index += taken
                    result.applied += taken
                    result.last = offset_of(window[taken - 1])
                    backoff = MIN_RUN
                else:
                    next_try = index + 1 + backoff
                    backoff = min(2 * backoff, MAX_BACKOFF)
            continue
        flush()
        if getattr(record, "source", source) != source:
            reason = f"record of source {record.source!r} on source {source!r}'s topic"
            set_aside(item, offset, reason)
            continue
        if isinstance(record, TableDefinition):
            try:
                shard.define(record)
            except ApplyError as exc:
                reject(item, f"cannot apply table definition: {exc}")
                result.rejected += 1
            result.last = offset
        elif isinstance(record, ConsistencyMarker):
            stale = stale_marker(record, shard.state().marker_id, partition)
            if stale is not None:  # never re-opens (or overwrites) a cut: set aside
                set_aside(item, offset, stale)
                continue
            result.marker, result.marker_offset = record, offset
            result.rest = records[index + 1 :]
            return result
        else:
            set_aside(
                item, offset, f"a {type(record).__name__} record does not belong on the ops topic"
            )
    flush()
    return result


def _operation_run(
    shard: Shard,
    first: Operation,
    window: Sequence[R],
    value_of: Callable[[R], bytes | None],
    flush: Callable[[], None],
) -> int:
    """Apply the operations right after ``first`` that share its layout, in bulk; return
    how many records that took (0: none, they go one by one)."""
    if len(window) < MIN_RUN:
        return 0
    values: list[bytes] = []
    for item in window:
        value = value_of(item)
        if type(value) is not bytes:
            break
        values.append(value)
    if len(values) < MIN_RUN:
        return 0
    layout = RunLayout.of(first)
    run = decode_run(values, layout, OPERATION_HEADER)
    if run.count < MIN_RUN:
        return 0
    flush()  # everything before the run first, in partition order
    if not shard.apply_run(layout, run):
        return 0
    return run.count
