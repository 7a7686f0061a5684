"""``cutline dlq``: the dead letters of a source, listed or shown one by one.

A dead letter is the original record, key and value unchanged, with headers saying why
and where from (``consumers.dead_letter``). A value that is a cutline record is shown
decoded, so an operator sees which operation, marker or definition was set aside;
anything else is shown as a hex preview.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Message

from consumers.dead_letter import ORIGIN_OFFSET, ORIGIN_PARTITION, ORIGIN_TOPIC, REASON
from consumers.topic_reader import (
    existing_topics,
    read_partition,
    reader_group,
    require_topic,
    watermarks,
)
from cutline.errors import CutlineError
from cutline.settings import Topics, resolve_kafka, validate_source
from schemas.codec import CodecError, decode

PREVIEW_BYTES = 32


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _hex(value: bytes | None, limit: int | None) -> str | None:
    if value is None:
        return None
    shown = value if limit is None else value[:limit]
    return shown.hex() + ("..." if limit is not None and len(value) > limit else "")


def _plain(value: Any) -> Any:
    """A decoded record as JSON-friendly values (bytes as hex)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def describe(message: Message, *, full: bool = False) -> dict[str, Any]:
    """One dead letter as a dict: offset, time, reason, origin, key and value."""
    headers = {k: v for k, v in (message.headers() or [])}
    _kind, stamp = message.timestamp()
    value = message.value()
    entry: dict[str, Any] = {
        "offset": message.offset(),
        "timestamp": datetime.fromtimestamp(stamp / 1000, UTC).isoformat() if stamp > 0 else None,
        "reason": _text(headers.get(REASON)),
        "origin": {
            "topic": _text(headers.get(ORIGIN_TOPIC)),
            "partition": _int(headers.get(ORIGIN_PARTITION)),
            "offset": _int(headers.get(ORIGIN_OFFSET)),
        },
        "key_hex": _hex(message.key(), None if full else PREVIEW_BYTES),
        "value_bytes": 0 if value is None else len(value),
    }
    try:
        record = decode(value)
    except CodecError as exc:
        entry["record_type"] = None
        entry["value_hex"] = _hex(value, None if full else PREVIEW_BYTES)
        entry["not_a_record"] = str(exc)
    else:
        entry["record_type"] = type(record).__name__
        entry["record"] = _plain(dataclasses.asdict(record)) if full else _summary(record)
    return entry


def _summary(record: Any) -> str:
    fields = dataclasses.asdict(record)
    keep = {k: fields[k] for k in ("op", "table", "marker_id", "key") if k in fields}
    return ", ".join(f"{k}={_plain(v)}" for k, v in keep.items())


def _int(value: bytes | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def newest_dead_letters(bootstrap: str, topics: Topics, limit: int) -> tuple[int, list[dict]]:
    """How many dead letters the topic holds, and the newest ``limit`` of them, described."""
    group, topic = reader_group(topics), topics.dead_letter
    span = watermarks(bootstrap, group, topic, 1)[0]
    start = max(span.low, span.high - limit)
    messages = read_partition(bootstrap, group, topic, 0, start, span.high)
    return span.count, [describe(m) for m in messages]


def cmd_dlq(args: argparse.Namespace) -> int:
    bootstrap = resolve_kafka(args.bootstrap_servers, args.kafka_config, args.kafka_settings)
    topics = Topics(validate_source(args.source))
    require_topic(
        existing_topics(bootstrap), topics.dead_letter, args.source, "`cutline replicate`"
    )
    if args.show is not None:
        group = reader_group(topics)
        span = watermarks(bootstrap, group, topics.dead_letter, 1)[0]
        if not span.low <= args.show < span.high:
            raise CutlineError(
                f"no dead letter at offset {args.show}: {topics.dead_letter} holds offsets "
                f"{span.low}..{span.high - 1}"
                if span.count
                else f"{topics.dead_letter} is empty"
            )
        found = read_partition(bootstrap, group, topics.dead_letter, 0, args.show, args.show + 1)
        if not found:
            raise CutlineError(f"no dead letter at offset {args.show} (a transaction marker?)")
        entry = describe(found[0], full=True)
        if args.json:
            print(json.dumps(entry, indent=2))
        else:
            for key, value in entry.items():
                print(f"{key:14} {json.dumps(value) if isinstance(value, dict | list) else value}")
        return 0
    count, entries = newest_dead_letters(bootstrap, topics, max(0, args.limit))
    if args.json:
        print(json.dumps({"topic": topics.dead_letter, "count": count, "dead_letters": entries}))
        return 0
    print(f"{topics.dead_letter}: {count} dead letter(s); newest {len(entries)}:")
    for e in entries:
        origin = e["origin"]
        what = e["record_type"] or f"not a cutline record ({e['value_bytes']} bytes)"
        print(
            f"  offset {e['offset']}  {e['timestamp']}  from {origin['topic']}"
            f"[{origin['partition']}]@{origin['offset']}: {e['reason']}\n      {what}"
            + (f": {e['record']}" if e.get("record") else "")
        )
    if entries:
        print(f"(cutline dlq --source {args.source} --show OFFSET prints one in full)")
    return 0
