"""README "Into your estate": every cutline command in its code blocks parses and uses only
options its ``--help`` lists, and the files, metrics and alert rule it points to exist."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

from cutline.parser import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)


def estate_sections() -> str:
    """The text of every section whose heading starts with "Into your estate"."""
    text = README.read_text()
    parts = re.split(r"^(?=## )", text, flags=re.M)
    found = [p for p in parts if p.startswith("## Into your estate")]
    assert len(found) >= 2, "the connecting section and the walk-through"
    return "\n".join(found)


def cutline_lines() -> list[str]:
    lines = []
    for block in FENCE.finditer(estate_sections()):
        if block["lang"] not in ("", "sh"):
            continue
        body = re.sub(r"\\\n\s*", " ", block["body"])  # join continuation lines
        lines += [line.strip() for line in body.splitlines() if line.strip().startswith("cutline ")]
    return lines


def _help_of(command: str) -> str:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command].format_help()


def test_the_walk_through_shows_every_step() -> None:
    commands = {line.split()[1] for line in cutline_lines()}
    assert {"capture", "replicate", "status", "dlq"} <= commands, commands


@pytest.mark.parametrize("line", cutline_lines())
def test_every_command_parses_and_its_options_are_in_its_help(line: str) -> None:
    argv = shlex.split(line, comments=True)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`{line}` does not parse") from exc
    documented = _help_of(argv[0])
    for option in (a.split("=")[0] for a in argv if a.startswith("-") and a != "-"):
        assert option in documented, f"{option} is not in `cutline {argv[0]} --help`"


def test_the_files_metrics_and_alert_it_points_to_exist() -> None:
    text = estate_sections()
    for path in set(re.findall(r"`((?:docker|docs)/[\w./-]+)`", text)):
        assert (ROOT / path).exists(), path
    rules = yaml.safe_load((ROOT / "docker" / "prometheus-alerts.yml").read_text())
    expressions = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert any("cutline_last_backup_t1_seconds" in e and "3600" in e for e in expressions)
    metrics = (ROOT / "cutline" / "metrics.py").read_text()
    for name in set(re.findall(r"\b(cutline_[a-z0-9_]+)", text)):
        declared = f'"{name.removesuffix("_total")}"'  # a Counter adds _total itself
        assert declared in metrics, f"{name} is not a metric cutline has"
