"""Topic, group and transactional-id names follow the estate's template."""

from __future__ import annotations

import pytest

from consumers.replay.config import replay_group
from cutline.errors import ConfigError
from cutline.settings import ENV_TOPIC_TEMPLATE, Topics, validate_topic_template


def test_default_names_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TOPIC_TEMPLATE, raising=False)
    t = Topics("shop")
    assert (t.ops, t.capture_position, t.control, t.dead_letter) == (
        "cutline.shop.ops",
        "cutline.shop.capture",
        "cutline.shop.control",
        "cutline.shop.dlq",
    )
    assert (t.replication_group, t.capture_transactional_id) == (
        "cutline.shop.replicate",
        "cutline.shop.capture",
    )
    assert replay_group("shop").startswith("cutline.shop.replay.")


def test_the_template_from_the_environment_names_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_TOPIC_TEMPLATE, "prod.backup.{source}-{kind}")
    t = Topics("shop")
    assert t.ops == "prod.backup.shop-ops"
    assert t.replication_group == "prod.backup.shop-replicate"
    assert replay_group("shop").startswith("prod.backup.shop-replay.")


@pytest.mark.parametrize(
    "bad", ["cutline.{source}", "{kind}", "x.{source}.{kind}.{env}", "a b{source}{kind}"]
)
def test_a_bad_template_is_refused_in_one_line(bad: str) -> None:
    with pytest.raises(ConfigError, match="--topic-template"):
        validate_topic_template(bad)
