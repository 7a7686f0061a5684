"""The fault workload's statement forms and mid-run events under SIGKILLs, on a real broker:
every backup of both sources equals the primary at its cut, in rows and in layout."""

from __future__ import annotations

from pathlib import Path

from tests.faults.scenarios import statement_forms
from tests.faults.statements import DEFAULT_KINDS, EXTRA_KINDS
from tests.faults.workload import MID_RUN_EVENTS
from tests.integration.test_faults_replication import _assert_clean


def test_statement_forms_and_mid_run_events_are_exact_under_sigkill(
    kafka: str, tmp_path: Path
) -> None:
    report = statement_forms(kafka, tmp_path, seed=21)
    _assert_clean(report)  # also fails if a kind or an event never ran
    assert report.kills >= 1, "the run should have killed a replication process"
    assert set(EXTRA_KINDS) == {"upsert-tag", "upsert-account", "insert-or-ignore"}
    for kind in [*DEFAULT_KINDS, *EXTRA_KINDS.values()]:
        assert report.kinds[kind.name] >= 1, f"{kind.name} never ran: {report.kinds}"
    for event in MID_RUN_EVENTS:
        assert report.events[event] >= 1, f"{event} never ran: {report.events}"
    assert report.events["mark-waited"] >= 1, "no cutline mark waited out the long transaction"
    assert report.second_source_backups >= 2, report.line()
