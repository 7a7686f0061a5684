"""Every cutline command runs with the collector set for streaming, and gives it back."""

from __future__ import annotations

import gc

from cutline import cli
from cutline.gc_tuning import OLDER_THRESHOLDS, YOUNG_THRESHOLD, streaming_gc


def test_the_collector_is_set_inside_and_restored_after():
    before = gc.get_threshold()
    with streaming_gc():
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
        assert gc.get_freeze_count() > 0  # start-up's objects are no longer scanned
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_command_runs_with_it(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "sources", lambda args: seen.append(gc.get_threshold()))
    before = gc.get_threshold()
    cli.main(["sources", "--db", str(tmp_path / "absent.sqlite")])
    assert seen == [(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)]
    assert gc.get_threshold() == before
