"""Estates' naming rules on a real broker: a topic template used by every command, and a
typo'd --source that leaves no topics behind."""

from __future__ import annotations

from cutline.kafka_clients import committed_offsets, make_admin
from cutline.settings import Topics
from tests.integration.pipeline import TABLES, Pipeline, backup_rows, wait_until

TEMPLATE = "team-a.{kind}.{source}"


def _topics_naming(bootstrap: str, source: str) -> set[str]:
    return {t for t in make_admin(bootstrap).list_topics(timeout=10).topics if source in t}


def test_replicate_of_a_source_nobody_captures_creates_no_topics(pipeline: Pipeline) -> None:
    typo = pipeline.start_replicator("replicate-typo")
    wait_until(
        lambda: "waiting up to" in typo.log.read_text(), 60, "replicate to wait for the ops topic"
    )
    typo.popen.kill()
    typo.popen.wait(10)
    assert _topics_naming(pipeline.bootstrap, pipeline.source) == set()


def test_a_topic_template_names_every_topic_group_and_transaction(pipeline: Pipeline) -> None:
    named = ("--topic-template", TEMPLATE)
    pipeline.create_primary()
    pipeline.start_capture(2, *named)
    pipeline.start_replicator("replicate", *named)
    conn = pipeline.connect()
    conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id < 5")
    ticket = pipeline.cut(conn)
    backup = pipeline.wait_for_backups([ticket.marker_id])[ticket.marker_id]
    assert backup_rows(backup) == {t: pipeline.oracle[ticket.marker_id][t] for t in TABLES}

    topics = Topics(pipeline.source, TEMPLATE)
    assert _topics_naming(pipeline.bootstrap, pipeline.source) == {
        topics.ops,
        topics.capture_position,
        topics.control,
        topics.dead_letter,
    }
    assert topics.ops == f"team-a.ops.{pipeline.source}"

    def committed() -> bool:
        got = committed_offsets(pipeline.bootstrap, topics.replication_group, topics.ops, 2)
        return bool(got)

    wait_until(committed, 30, f"offsets committed by group {topics.replication_group}")
