"""An older DuckDB in its own virtual environment, to prove backups open in it.

Built once (``python -m venv`` + ``pip install duckdb==1.1.3`` from PyPI) under
``$CUTLINE_CACHE`` (default ``~/.cache/cutline``), then reused by every run; ``make
duckdb-compat-env`` builds it ahead of time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from cutline.settings import cache_dir

OLD_DUCKDB = "1.1.3"

# Runs inside the old environment: each table's rows, sorted as tests.integration.pipeline
# sorts them, as a Python literal (the same interpreter version writes and reads it).
_READER = """
import json, sys
import duckdb
spec = json.loads(sys.argv[2])
conn = duckdb.connect(sys.argv[1], read_only=True)
out = {"duckdb": duckdb.__version__, "tables": {}}
for table, columns in spec.items():
    cols = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    rows = conn.execute('SELECT ' + cols + ' FROM "' + table.replace('"', '""') + '"').fetchall()
    out["tables"][table] = repr(sorted(rows, key=repr))
print(json.dumps(out))
"""


def old_duckdb_python() -> Path:
    """The interpreter of the environment holding DuckDB ``OLD_DUCKDB`` (built if missing)."""
    env = cache_dir() / f"duckdb-{OLD_DUCKDB}"
    python = env / "bin" / "python"
    ready = env / ".ready"
    if not ready.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"duckdb=={OLD_DUCKDB}"],
            check=True,
            timeout=900,
        )
        ready.touch()
    return python


def read_with_old_duckdb(path: Path, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    """Every table of ``path`` as DuckDB ``OLD_DUCKDB`` reads it (rows sorted by repr)."""
    result = subprocess.run(
        [str(old_duckdb_python()), "-c", _READER, str(path), json.dumps(columns)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"DuckDB {OLD_DUCKDB} cannot read {path}:\n{result.stderr}"
    out = json.loads(result.stdout)
    assert out["duckdb"] == OLD_DUCKDB
    return {table: ast.literal_eval(rows) for table, rows in out["tables"].items()}


if __name__ == "__main__":
    print(old_duckdb_python())
