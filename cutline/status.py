"""``cutline status``: one screen for an operator of a source.

Everything comes from what cutline already writes, read without joining a group or
creating a topic: the control topic (every cut's fate, with reasons), the dead-letter
topic, the replication group's committed offsets, and, when given, the backups
directory and the primary's change log (capture backlog).

Group lag is the ops topic's end minus the group's committed offset. It never drops
below 1 per partition when idle: capture writes in transactions, and each commit marker
takes an offset after the last record. Alert on the newest backup's age instead.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backups.catalog import list_backups
from consumers.alignment import Alignment, CutStatus
from consumers.topic_reader import (
    existing_topics,
    group_committed,
    read_partition,
    reader_group,
    require_topic,
    watermarks,
)
from cutline.dlq import newest_dead_letters
from cutline.settings import Topics, resolve_kafka, validate_source
from producers.backlog import capture_backlog
from schemas.codec import CodecError, decode
from schemas.records import ControlEvent, ControlKind


def _iso(us: int | None) -> str | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, UTC).isoformat()


def _age(now_us: int, us: int | None) -> float | None:
    return None if us is None else round((now_us - us) / 1e6, 3)


def cuts_from_control(bootstrap: str, topic: str, source: str, now_us: int) -> dict[str, Any]:
    """Every cut's fate, replayed from the control topic like the coordinator does."""
    group = reader_group(Topics(source))
    span = watermarks(bootstrap, group, topic, 1)[0]
    alignment = Alignment(timeout_s=float("inf"))  # status only reads: nobody abandons here
    t1: dict[int, int] = {}
    resolved_at: dict[int, int] = {}
    first_at: dict[int, int] = {}
    for message in read_partition(bootstrap, group, topic, 0, span.low, span.high, 60.0):
        try:
            event = decode(message.value())
        except CodecError:
            continue
        if not isinstance(event, ControlEvent) or event.source != source:
            continue
        first_at.setdefault(event.marker_id, event.at_us)
        if event.kind is ControlKind.REACHED and event.t1_us:
            t1[event.marker_id] = event.t1_us
        if alignment.apply(event, event.at_us / 1e6) is not None and event.kind in (
            ControlKind.PUBLISHED,
            ControlKind.FAILED,
            ControlKind.ABANDONED,
        ):
            resolved_at[event.marker_id] = event.at_us

    def entry(cut) -> dict[str, Any]:
        return {
            "marker_id": cut.marker_id,
            "status": cut.status.value,
            "t1": _iso(t1.get(cut.marker_id)),
            "at": _iso(resolved_at.get(cut.marker_id) or first_at.get(cut.marker_id)),
            "partitions_reached": sorted(cut.reached),
            "partitions": cut.partitions,
            "reason": cut.detail,
        }

    cuts = sorted(alignment.cuts.values(), key=lambda c: c.marker_id)
    by = {s: [c for c in cuts if c.status is s] for s in CutStatus}
    published = by[CutStatus.PUBLISHED]
    newest = None
    if published:
        last = published[-1]
        newest = {
            "marker_id": last.marker_id,
            "t1": _iso(t1.get(last.marker_id)),
            "t1_age_s": _age(now_us, t1.get(last.marker_id)),
            "published_at": _iso(resolved_at.get(last.marker_id)),
            "from": "control topic",
        }
    return {
        "newest_published": newest,
        "published": len(published),
        "in_flight": [
            entry(c) for c in by[CutStatus.ALIGNING] + by[CutStatus.READY] + by[CutStatus.PINNED]
        ],
        "failed": [entry(c) for c in by[CutStatus.FAILED]],
        "abandoned": [entry(c) for c in by[CutStatus.ABANDONED]],
    }


def newest_in_catalog(backups: Path, source: str, now_us: int) -> dict[str, Any] | None:
    found = list_backups(backups, source)
    if not found:
        return None
    b = found[-1]
    return {
        "marker_id": b.marker_id,
        "t1": b.t1,
        "t1_age_s": _age(now_us, b.t1_us),
        "t2": b.t2,
        "kind": b.kind,
        "rows": sum(t["rows"] for t in b.tables.values()),
        "path": str(b.path),
        "from": "catalog",
    }


def group_lag(bootstrap: str, topics: Topics, partitions: int) -> dict[str, Any]:
    ends = watermarks(bootstrap, reader_group(topics), topics.ops, partitions)
    committed = group_committed(bootstrap, topics.replication_group, topics.ops, partitions)
    rows = {}
    for p, span in ends.items():
        done = committed.get(p)
        rows[str(p)] = {
            "end": span.high,
            "committed": done,
            "lag": span.high - (done if done is not None else span.low),
        }
    return {
        "group": topics.replication_group,
        "partitions": rows,
        "total": sum(r["lag"] for r in rows.values()),
    }


def backlog_of(db: Path, bootstrap: str, topics: Topics, known: dict[str, int]) -> dict[str, Any]:
    from producers.capture import read_last_position

    position = None
    if topics.capture_position in known:
        position = read_last_position(bootstrap, topics)
    published = position.seq if position is not None else 0
    uri = f"file:{db.resolve()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as exc:
        return {"error": f"cannot open {db}: {exc}"}
    try:
        backlog = capture_backlog(conn, published)
    finally:
        conn.close()
    return {
        "published_seq": published,
        "changes": backlog.changes,
        "oldest_age_s": round(backlog.age_s(), 3),
    }


def gather(args: argparse.Namespace, now_us: int | None = None) -> dict[str, Any]:
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    bootstrap = resolve_kafka(args.bootstrap_servers, args.kafka_config, args.kafka_settings)
    source = validate_source(args.source)
    topics = Topics(source)
    known = existing_topics(bootstrap)
    require_topic(known, topics.control, source, "`cutline replicate`")
    cuts = cuts_from_control(bootstrap, topics.control, source, now_us)
    newest = cuts.pop("newest_published")
    if args.backups is not None:
        newest = newest_in_catalog(args.backups, source, now_us) or newest
    limit = max(0, args.limit)
    status: dict[str, Any] = {
        "source": source,
        "at": _iso(now_us),
        "newest_backup": newest,
        "cuts": {
            **cuts,
            "failed_count": len(cuts["failed"]),
            "abandoned_count": len(cuts["abandoned"]),
            "failed": cuts["failed"][-limit:] if limit else [],
            "abandoned": cuts["abandoned"][-limit:] if limit else [],
        },
    }
    if topics.dead_letter in known:
        count, letters = newest_dead_letters(bootstrap, topics, limit)
        status["dead_letters"] = {"count": count, "newest": letters}
    else:
        status["dead_letters"] = {"count": 0, "newest": []}
    if topics.ops in known:
        status["group_lag"] = group_lag(bootstrap, topics, known[topics.ops])
    if args.db is not None:
        status["capture_backlog"] = backlog_of(args.db, bootstrap, topics, known)
    return status


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(status: dict[str, Any]) -> list[str]:
    lines = [f"source {status['source']} at {status['at']}"]
    newest = status["newest_backup"]
    if newest is None:
        lines.append("newest backup: none published yet")
    else:
        lines.append(
            f"newest backup: marker {newest['marker_id']}, the primary as of {newest['t1']} "
            f"({_duration(newest['t1_age_s'])} ago; from the {newest['from']})"
        )
    cuts = status["cuts"]
    lines.append(
        f"cuts: {cuts['published']} published, {len(cuts['in_flight'])} in flight, "
        f"{cuts['failed_count']} failed, {cuts['abandoned_count']} abandoned"
    )
    for cut in cuts["in_flight"]:
        lines.append(
            f"  in flight: marker {cut['marker_id']} ({cut['status']}), partitions reached "
            f"{cut['partitions_reached']} of {cut['partitions']}"
        )
    for kind in ("failed", "abandoned"):
        for cut in cuts[kind]:
            lines.append(f"  {kind}: marker {cut['marker_id']} at {cut['at']}: {cut['reason']}")
    letters = status["dead_letters"]
    lines.append(f"dead letters: {letters['count']}")
    for e in letters["newest"]:
        origin = e["origin"]
        lines.append(
            f"  offset {e['offset']} from {origin['topic']}[{origin['partition']}]@"
            f"{origin['offset']}: {e['reason']}"
        )
    lag = status.get("group_lag")
    if lag is not None:
        parts = ", ".join(f"p{p}={r['lag']}" for p, r in lag["partitions"].items())
        lines.append(
            f"group lag ({lag['group']}): {lag['total']} ({parts}; 1 per partition is idle: "
            "the transaction commit marker)"
        )
    backlog = status.get("capture_backlog")
    if backlog is not None:
        if "error" in backlog:
            lines.append(f"capture backlog: {backlog['error']}")
        else:
            lines.append(
                f"capture backlog: {backlog['changes']} changes not yet published, oldest "
                f"{_duration(backlog['oldest_age_s'])} old (published up to change "
                f"{backlog['published_seq']})"
            )
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    status = gather(args)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print("\n".join(render(status)))
    return 0
