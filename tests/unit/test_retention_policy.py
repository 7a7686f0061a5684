"""Retention rules: ``--keep-within`` beside ``--keep-last`` (prune and replicate share them),
and the readers' default source."""

from __future__ import annotations

import pytest
from test_chain import SOURCE
from test_cli import _published_backup
from test_verify_prune import marker_ids, prune, write_history

from backups.catalog import CatalogError, default_source, list_backups
from backups.retention import RetentionPolicy, apply_retention, parse_duration
from cutline import cli


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7", "d", "-1d", "0h", "1y", "one day"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_keep_within_counts_back_from_the_newest_backups_t1(tmp_path):
    backups = write_history(tmp_path, 5, full_every=1)
    t1 = {b.marker_id: b.t1_us for b in backups}
    # keep everything whose T1 is no older than marker 3's
    window = (t1[5] - t1[3]) / 1_000_000
    kept = RetentionPolicy(keep_within_s=window).keeps(backups)
    assert [b.marker_id for b in kept] == [3, 4, 5]
    both = RetentionPolicy(keep_last=4, keep_within_s=window).keeps(backups)
    assert [b.marker_id for b in both] == [2, 3, 4, 5]  # either rule keeps a backup


def test_prune_keep_within_keeps_chains_whole(tmp_path, capsys):
    backups = write_history(tmp_path, 7, full_every=3)  # F1 I2 I3 F4 I5 I6 F7
    t1 = {b.marker_id: b.t1_us for b in backups}
    window = (t1[7] - t1[6]) / 1_000_000
    code, out = prune(tmp_path, capsys, "--keep-within", f"{window + 2e-7:.7f}s")
    assert code == 0, out
    assert marker_ids(tmp_path) == [4, 5, 6, 7]  # 6 needs 5 and 4
    assert f"{SOURCE}: kept 4 for the chain of incremental 6" in out


def test_prune_needs_a_rule(tmp_path, capsys):
    write_history(tmp_path, 1, full_every=1)
    with pytest.raises(SystemExit) as info:
        cli.main(["prune", "--backups", str(tmp_path / "backups")])
    assert info.value.code == 2
    assert "give --keep-last N, --keep-within DURATION, or both" in capsys.readouterr().err


def test_apply_retention_reports_what_it_removed(tmp_path):
    write_history(tmp_path, 4, full_every=2)  # F1 I2 F3 I4
    said: list[str] = []
    plan = apply_retention(tmp_path / "backups", SOURCE, RetentionPolicy(keep_last=1), said.append)
    assert plan is not None and marker_ids(tmp_path) == [3, 4]
    assert said == [f"retention: removed backups 1, 2 of source {SOURCE!r}, 1 kept for chains"]


def test_readers_default_to_the_only_source(tmp_path, capsys):
    _published_backup(tmp_path, "shop", 4, 1_764_065_700_000_000)
    assert default_source(tmp_path, None) == "shop"
    assert cli.main(["query", "--backups", str(tmp_path), "--json", "SELECT 1 AS one"]) == 0
    assert '"one": 1' in capsys.readouterr().out
    _published_backup(tmp_path, "bank", 2, 1_764_065_700_000_000)
    with pytest.raises(CatalogError, match=r"holds backups of 2 sources \(bank, shop\)"):
        default_source(tmp_path, None)
    assert cli.main(["query", "--backups", str(tmp_path), "SELECT 1"]) == 1
    assert "pass --source with one of them" in capsys.readouterr().err
    assert [b.source for b in list_backups(tmp_path)] == ["bank", "shop"]
