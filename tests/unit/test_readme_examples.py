"""The README's shell examples that need no Kafka run as written.

A block marked ``<!-- readme-example: in a backup directory ... -->`` runs inside one
backup's directory; ``<!-- readme-example: in a directory holding ./backups ... -->``
beside a backups directory. Both get real backups (a full and an incremental) written
by the snapshotter, and a PATH whose ``python`` and ``cutline`` are this environment's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_verify_prune import write_history

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = re.compile(r"<!-- readme-example: (?P<where>[^(>]*?)\s*(?:\(.*?\))?\s*-->\n```sh\n")


def examples() -> list[tuple[str, str]]:
    """``(where, script)`` for every marked block, in README order."""
    text = README.read_text()
    found = []
    for match in MARKER.finditer(text):
        end = text.index("\n```", match.end())
        found.append((match["where"], text[match.end() : end + 1]))
    return found


def test_the_readme_marks_its_offline_examples():
    wheres = [where for where, _ in examples()]
    assert "in a backup directory" in wheres
    assert "in a directory holding ./backups" in wheres


@pytest.mark.parametrize(("where", "script"), examples())
def test_readme_example_runs_as_written(where, script, tmp_path):
    backups = write_history(tmp_path, 3, full_every=2)  # full, incremental, full
    if where == "in a backup directory":
        cwd = backups[-1].path
    elif where == "in a directory holding ./backups":
        cwd = tmp_path
    else:
        raise AssertionError(f"unknown readme-example place {where!r}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUTLINE_", "KAFKA_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["CUTLINE_HOME"] = str(tmp_path / "home")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, f"{script}\n{output}"
    assert result.stdout.strip(), script
    assert "Traceback" not in result.stderr
