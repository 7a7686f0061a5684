"""Backups in use on a real broker: restore, diff and SQL over every backup, each checked
against the oracle (the primary's exact rows at each marker's commit boundary).

One pipeline runs for the whole module: capture, a replicator writing a full backup every
3 backups and incrementals in between, a writer committing the whole time, and six
markers. The tests then read its backups only through the `cutline` command.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.pipeline import TABLES, Pipeline, Rows, primary_columns, table_rows
from tests.integration.workload import random_transactions

KEYS = {"accounts": ["id"], "transfers": ["id"], "tags": ["account", "tag"], "events": ["id"]}


@pytest.fixture(scope="module")
def history(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Six published backups of a primary written to the whole time (full every 3)."""
    root = tmp_path_factory.mktemp("in-use")
    with Pipeline(kafka, f"it-use-{uuid.uuid4().hex[:8]}", root) as pipeline:
        pipeline.create_primary(accounts=30)
        capture = pipeline.start_capture(partitions=4)
        replicator = pipeline.start_replicator("replicate", "--full-every", "3")
        stop = threading.Event()
        counts: list[int] = []
        writer = threading.Thread(
            target=lambda: counts.append(random_transactions(pipeline, stop, seed=11))
        )
        conn = pipeline.connect()
        try:
            writer.start()
            for _ in range(5):
                time.sleep(0.5)
                pipeline.cut(conn)
        finally:
            stop.set()
            writer.join(30)
        pipeline.cut(conn)
        conn.close()
        assert counts and counts[0] > 20, "the writer should have committed many transactions"
        pipeline.wait_for_backups(sorted(pipeline.oracle), deadline_s=90)
        for process in (capture, replicator):
            assert process.stop() == 0, process.tail()
        yield pipeline


def typed(rows: list[tuple]) -> list[tuple]:
    """Rows with each value's Python type, which is its SQLite storage class."""
    return [tuple((type(v).__name__, v) for v in row) for row in rows]


def restore(pipeline: Pipeline, marker_id: int, target: Path, *extra: str) -> dict[str, Any]:
    result = pipeline.cli(
        "restore", "--backups", str(pipeline.backups), "--source", pipeline.source,
        "--marker", str(marker_id), "--to", str(target), *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def restored_rows(target: Path) -> tuple[Rows, dict[str, list[tuple]]]:
    conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        tables = [t for t in tables if not t.startswith("sqlite_")]
        rows = {t: table_rows(conn, t, primary_columns(conn, t)) for t in tables}
        info = {t: conn.execute(f'PRAGMA table_info("{t}")').fetchall() for t in tables}
    finally:
        conn.close()
    return rows, info


def primary_table_info(pipeline: Pipeline) -> dict[str, list[tuple]]:
    conn = pipeline.connect()
    try:
        return {t: conn.execute(f'PRAGMA table_info("{t}")').fetchall() for t in TABLES}
    finally:
        conn.close()


def test_restore_of_every_marker_equals_the_primary_at_its_cut(history: Pipeline) -> None:
    published = history.published()
    primary_info = primary_table_info(history)
    for marker_id, expected in sorted(history.oracle.items()):
        target = history.root / f"restore-{marker_id}.sqlite"
        summary = restore(history, marker_id, target)
        assert summary["marker_id"] == marker_id
        assert summary["t1"] == history.tickets[marker_id].t1
        rows, info = restored_rows(target)
        assert sorted(rows) == sorted(TABLES)
        for table in TABLES:
            assert typed(rows[table]) == typed(expected[table]), (
                f"restore of marker {marker_id} ({published[marker_id].kind}): table "
                f"{table} differs from the primary at its cut"
            )
            assert info[table] == primary_info[table], f"{table}: columns, types, keys"


def test_restore_after_an_incremental_chain(history: Pipeline) -> None:
    published = history.published()
    kinds = [published[m].kind for m in sorted(published)]
    assert kinds == ["full", "incremental", "incremental", "full", "incremental", "incremental"]
    last = max(published)
    target = history.root / "restore-chain.sqlite"
    restore(history, last, target)
    rows, _ = restored_rows(target)
    assert {t: typed(r) for t, r in rows.items()} == {
        t: typed(history.oracle[last][t]) for t in TABLES
    }


def test_restore_a_subset_of_tables(history: Pipeline) -> None:
    marker_id = sorted(history.oracle)[2]
    target = history.root / "subset.sqlite"
    summary = restore(history, marker_id, target, "--tables", "tags,accounts")
    assert set(summary["tables"]) == {"tags", "accounts"}
    rows, _ = restored_rows(target)
    assert sorted(rows) == ["accounts", "tags"]
    for table in ("accounts", "tags"):
        assert typed(rows[table]) == typed(history.oracle[marker_id][table])

    refused = history.cli(
        "restore", "--backups", str(history.backups), "--source", history.source,
        "--marker", str(marker_id), "--to", str(history.root / "none.sqlite"),
        "--tables", "accounts,ledger",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "ledger" in refused.stderr and "tables there: accounts" in refused.stderr
    assert not (history.root / "none.sqlite").exists()


def _json_row(columns: list[str], row: tuple) -> dict[str, Any]:
    return {c: (v.hex() if isinstance(v, bytes) else v) for c, v in zip(columns, row, strict=True)}


def _oracle_diff(pipeline: Pipeline, table: str, old: list[tuple], new: list[tuple]) -> dict:
    conn = pipeline.connect()
    try:
        columns = primary_columns(conn, table)
    finally:
        conn.close()
    index = [columns.index(k) for k in KEYS[table]]
    before = {tuple(r[i] for i in index): _json_row(columns, r) for r in old}
    after = {tuple(r[i] for i in index): _json_row(columns, r) for r in new}
    return {
        "added": sorted(json.dumps(after[k], sort_keys=True) for k in after.keys() - before),
        "removed": sorted(json.dumps(before[k], sort_keys=True) for k in before.keys() - after),
        "changed": sorted(
            json.dumps({"before": before[k], "after": after[k]}, sort_keys=True)
            for k in before.keys() & after.keys()
            if before[k] != after[k]
        ),
    }


def test_diff_between_markers_equals_the_diff_of_the_primary(history: Pipeline) -> None:
    markers = sorted(history.oracle)
    diffs: dict[tuple[int, int], dict[str, Any]] = {}
    for first, second in [(markers[0], markers[-1]), (markers[1], markers[2])]:
        result = history.cli(
            "diff", "--backups", str(history.backups), "--source", history.source,
            str(first), str(second), "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        diff = diffs[(first, second)] = json.loads(result.stdout)
        assert diff["from"] == {"marker_id": first, "t1": history.tickets[first].t1}
        assert diff["to"] == {"marker_id": second, "t1": history.tickets[second].t1}
        assert sorted(diff["tables"]) == sorted(TABLES)
        for table in TABLES:
            got = diff["tables"][table]
            expected = _oracle_diff(
                history, table, history.oracle[first][table], history.oracle[second][table]
            )
            assert {
                "added": sorted(json.dumps(r, sort_keys=True) for r in got["added"]),
                "removed": sorted(json.dumps(r, sort_keys=True) for r in got["removed"]),
                "changed": sorted(
                    json.dumps({"before": c["before"], "after": c["after"]}, sort_keys=True)
                    for c in got["changed"]
                ),
            } == expected, f"diff {first}->{second} of {table}"
            for change in got["changed"]:
                assert change["key"] == {k: change["after"][k] for k in KEYS[table]}
    assert diffs[(markers[0], markers[-1])]["tables"]["accounts"]["changed"], (
        "the writer's transfers should show as changed accounts"
    )


def test_query_all_follows_every_marker_like_the_oracle(history: Pipeline) -> None:
    sql = (
        "SELECT a.marker_id, a.t1, a.n, a.total, t.transfers FROM "
        "(SELECT marker_id, t1, count(*) AS n, sum(balance) AS total FROM accounts "
        "GROUP BY ALL) a JOIN (SELECT marker_id, count(*) AS transfers FROM transfers "
        "GROUP BY ALL) t USING (marker_id) ORDER BY a.marker_id"
    )
    result = history.cli(
        "query", "--backups", str(history.backups), "--source", history.source,
        "--all", "--json", sql,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    expected = [
        {
            "marker_id": m,
            "t1": history.tickets[m].t1,
            "n": len(rows["accounts"]),
            "total": sum(r[2] for r in rows["accounts"]),
            "transfers": len(rows["transfers"]),
        }
        for m, rows in sorted(history.oracle.items())
    ]
    for entry in got:  # DuckDB prints T1 without trailing zero microseconds
        entry["t1"] = entry["t1"] and _iso_us(entry["t1"])
    assert got == expected
    assert len({e["total"] for e in got}) == 1, "transfers move money; the total stays"

    write = history.cli(
        "query", "--backups", str(history.backups), "--source", history.source,
        "--all", "CREATE TABLE x AS SELECT 1",
    )  # fmt: skip
    assert write.returncode == 1 and "read-only" in write.stderr


def _iso_us(text: str) -> str:
    return datetime.fromisoformat(text).isoformat(timespec="microseconds")
