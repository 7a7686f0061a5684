"""Which sources a cluster holds, told from its topic names: the answer to a typo'd --source.

A command that only reads (``status``, ``dlq``, ``replay``) must not create anything for a
source nobody captures, and its one line should help the operator find the right name.
The sources are the ``{source}`` of every ops topic the topic template matches.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from cutline.settings import Topics, topic_template

SHOWN = 8  # sources named in the line; the closest to the typo come first


def _ops_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{source\}|\{kind\})", template)
    regex = "".join(
        "(?P<source>[A-Za-z0-9][A-Za-z0-9._-]{0,99})"
        if part == "{source}"
        else "ops"
        if part == "{kind}"
        else re.escape(part)
        for part in parts
    )
    return re.compile(regex)


def sources_on_cluster(topic_names: Iterable[str], template: str | None = None) -> list[str]:
    """The sources whose ops topic exists, sorted."""
    pattern = _ops_pattern(template or topic_template())
    found = {m["source"] for name in topic_names if (m := pattern.fullmatch(name))}
    return sorted(found)


def listing(source: str, sources: list[str]) -> str:
    if not sources:
        return "no cutline source has topics on this cluster (`cutline capture` creates them)"
    close = difflib.get_close_matches(source, sources, n=SHOWN, cutoff=0.6)
    shown = close + [s for s in sources if s not in close][: SHOWN - len(close)]
    more = len(sources) - len(shown)
    return f"sources here: {', '.join(shown)}" + (f" and {more} more" if more > 0 else "")


def ops_topic_hint(bootstrap: str, source: str) -> str:
    """What ``replicate`` says while it waits for the ops topic: start capture, or (when
    the source has no topics) check --source, naming the sources that exist."""
    from cutline.kafka_clients import make_admin

    base = f"start `cutline capture --source {source}` to create it"
    names = make_admin(bootstrap).list_topics(timeout=10).topics
    if Topics(source).ops in names:
        return base
    return f"{base}, or check --source: {listing(source, sources_on_cluster(names))}"


def no_such_source(source: str, topic_names: Iterable[str]) -> str | None:
    """One line for a source without an ops topic; None when the source has one."""
    names = set(topic_names)
    ops = Topics(source).ops
    if ops in names:
        return None
    return (
        f"source {source!r} has no topics on this cluster (no {ops}); nothing was created: "
        f"check --source and --topic-template; {listing(source, sources_on_cluster(names))}"
    )
