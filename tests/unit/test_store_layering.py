"""The backup store stays apart from the replication pipeline: no Kafka past the edge.

Why a test: the layering is what lets the store be read, verified and pruned without a
broker, and a second storage backend be added as one package; an import is all it takes
to lose that quietly.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the writer reads the pinned replica shards, its input: the only pipeline modules allowed
SHARD_READERS = {"consumers.replica", "consumers.changed_keys"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_backup_store_imports_no_kafka_client_and_no_pipeline_module():
    offending = []
    for path in sorted((ROOT / "backups").rglob("*.py")):
        for name in sorted(_imports(path)):
            kafka = name.split(".")[0] in ("confluent_kafka", "kafka") or "kafka" in name
            shard_reader = any(name == m or name.startswith(f"{m}.") for m in SHARD_READERS)
            pipeline = name.startswith("consumers.") and not shard_reader
            if kafka or pipeline:
                offending.append(f"{path.relative_to(ROOT)}: {name}")
    assert offending == []
