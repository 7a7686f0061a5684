"""The fault workload's extra statement forms (upserts, INSERT OR IGNORE, ...) under
SIGKILLs, on a real broker: every backup equals the primary at its cut."""

from __future__ import annotations

from pathlib import Path

from tests.faults.scenarios import statement_forms
from tests.faults.statements import EXTRA_KINDS
from tests.integration.test_faults_replication import _assert_clean


def test_extra_statement_forms_are_exact_under_sigkill(kafka: str, tmp_path: Path) -> None:
    report = statement_forms(kafka, tmp_path, seed=21)
    _assert_clean(report)  # also fails if an extra kind never ran
    assert report.kills >= 1, "the run should have killed a replication process"
    assert set(EXTRA_KINDS) == {"upsert-tag", "upsert-account", "insert-or-ignore"}
