"""Telling a cluster's sources from its topic names, for the line a typo'd --source gets."""

from __future__ import annotations

from cutline.source_names import SHOWN, listing, no_such_source, sources_on_cluster


def test_sources_are_read_from_ops_topics_under_the_topic_template() -> None:
    names = ["cutline.shop.ops", "cutline.shop.control", "cutline.a.b.ops", "other.ops", "x"]
    assert sources_on_cluster(names, "cutline.{source}.{kind}") == ["a.b", "shop"]
    templated = ["team-a.ops.shop", "team-a.control.shop", "cutline.shop.ops"]
    assert sources_on_cluster(templated, "team-a.{kind}.{source}") == ["shop"]


def test_the_closest_sources_come_first_and_the_rest_are_counted() -> None:
    sources = [f"s{i:03}" for i in range(40)] + ["shop", "shops"]
    line = listing("shpo", sorted(sources))
    shown = line.removeprefix("sources here: ").split(" and ")[0].split(", ")
    assert shown[0] == "shop" and len(shown) == SHOWN
    assert line.endswith(f"and {len(sources) - SHOWN} more")
    assert "no cutline source" in listing("shop", [])


def test_a_source_with_an_ops_topic_is_no_typo(monkeypatch) -> None:
    monkeypatch.delenv("CUTLINE_TOPIC_TEMPLATE", raising=False)
    assert no_such_source("shop", ["cutline.shop.ops"]) is None
    line = no_such_source("shpo", ["cutline.shop.ops"])
    assert line is not None and "'shpo' has no topics" in line and "sources here: shop" in line
