"""``python -m bench --scale``: sizes as an operator writes them, and the one-line errors."""

from __future__ import annotations

import argparse

import pytest

from bench.__main__ import parse_args, parse_sizes


def test_sizes_accept_plain_numbers_and_k_m_suffixes() -> None:
    assert parse_sizes("100000,1M,10m,5k") == [100_000, 1_000_000, 10_000_000, 5_000]


@pytest.mark.parametrize("text", ["ten", "1M,x", "50"])
def test_bad_sizes_are_refused_with_a_message(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--scale"):
        parse_sizes(text)


def test_scale_alone_skips_the_other_phases_and_quick_shrinks_the_default() -> None:
    assert parse_args(["--scale", "2k"]).scale_only
    quick = parse_args(["--quick"])
    assert not quick.scale_only and quick.scale == [2_000]
    assert parse_args([]).scale == [100_000, 1_000_000]
