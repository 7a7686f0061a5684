"""Input that used to be silently wrong or fatal: TEXT with NUL or not UTF-8, huge change
batches, duplicated markers, and directories that cannot be written."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from consumers.replica import Shard
from consumers.replication import stale_marker
from cutline.directories import writable_directory
from cutline.errors import ConfigError
from producers.operations import TableLayout, to_operations
from producers.sqlite_changelog import (
    connect,
    describe_table,
    install,
    parse_literal,
    read_changes,
)
from schemas.records import ConsistencyMarker


def _captured(tmp_path: Path, rows: list[tuple], after: list[str]) -> tuple[list, Shard]:
    """Capture table odd(k TEXT PRIMARY KEY, v) and replay every change into a shard."""
    db = tmp_path / "p.sqlite"
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("CREATE TABLE odd (k TEXT PRIMARY KEY, v)")
    for row in rows:
        raw.execute("INSERT INTO odd VALUES (?, ?)", row)
    conn = connect(db)
    (definition,) = install(conn, "s", ["odd"])
    for statement in after:
        raw.execute(statement)
    layout = TableLayout.of(describe_table(conn, "s", "odd"))
    operations = [
        op for change in read_changes(conn, 0, 100) for op in to_operations(change, layout, "s")
    ]
    shard = Shard(tmp_path / "shard.sqlite", 0)
    shard.begin()
    shard.define(definition)
    for _, operation in operations:
        shard.apply(operation)
    shard.commit(len(operations))
    return operations, shard


def test_text_with_nul_is_captured_exactly_not_cut_at_the_nul(tmp_path: Path) -> None:
    operations, shard = _captured(
        tmp_path,
        [("a\x00b", "x\x00y"), ("a\x00c", "2")],
        [
            "INSERT INTO odd VALUES ('n' || char(0), char(0) || 'v')",
            "DELETE FROM odd WHERE k = 'a'",
        ],
    )
    keys = {key for key, _ in operations}
    assert len(keys) == 3, "keys that differ only after a NUL stay different keys"
    assert sorted(shard.conn.execute("SELECT k, v FROM odd").fetchall()) == [
        ("a\x00b", "x\x00y"),
        ("a\x00c", "2"),
        ("n\x00", "\x00v"),
    ]
    assert shard.conn.execute("SELECT DISTINCT typeof(k) FROM odd").fetchall() == [("text",)]


def test_text_that_is_not_utf8_is_kept_byte_for_byte_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cutline.capture"):
        operations, shard = _captured(
            tmp_path,
            [("ok", "fine")],
            [
                "INSERT INTO odd VALUES (CAST(x'ff61' AS TEXT), CAST(x'c328' AS TEXT))",
                "UPDATE odd SET v = 'now utf-8' WHERE k = CAST(x'ff61' AS TEXT)",
            ],
        )
    assert sorted(shard.conn.execute("SELECT k, v FROM odd").fetchall(), key=repr) == [
        ("ok", "fine"),
        (b"\xffa", "now utf-8"),
    ]
    assert "holds TEXT that is not valid UTF-8" in caplog.text and "'odd'" in caplog.text
    assert len({key for key, _ in operations}) == 2, "the update found the row it changed"


def test_literals_of_text_as_hex_read_back() -> None:
    assert parse_literal("T'610062'") == "a\x00b"
    assert parse_literal("T'FF00'") == b"\xff\x00"


def test_a_batch_of_changes_stops_growing_at_its_byte_budget(tmp_path: Path) -> None:
    db = tmp_path / "p.sqlite"
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB)")
    conn = connect(db)
    install(conn, "s", ["big"])
    for i in range(10):
        raw.execute("INSERT INTO big VALUES (?, zeroblob(100000))", (i,))
    first = read_changes(conn, 0, 1000, max_bytes=450_000)
    assert len(first) == 3  # each image is ~200 kB of hex; the third crosses the budget
    rest = read_changes(conn, first[-1].seq, 1000, max_bytes=450_000)
    assert rest[0].seq == first[-1].seq + 1
    assert len(read_changes(conn, 0, 1000, max_bytes=1)) == 1, "always at least one row"


def _marker(marker_id: int) -> ConsistencyMarker:
    return ConsistencyMarker("s", marker_id, 0, 0, 2, (0, 0), ())


def test_a_marker_id_already_reached_is_set_aside_with_a_reason() -> None:
    assert stale_marker(_marker(8), 7, 1) is None
    assert stale_marker(_marker(1), 0, 0) is None
    duplicate = stale_marker(_marker(7), 7, 1)
    assert duplicate is not None and "duplicated marker id 7" in duplicate
    assert "partition 1" in duplicate
    older = stale_marker(_marker(3), 7, 0)
    assert older is not None and "marker 3 arrived after marker 7" in older
    assert "not positive" in (stale_marker(_marker(0), 0, 0) or "")


def test_a_writable_directory_is_created_when_only_it_is_missing(tmp_path: Path) -> None:
    assert writable_directory("--backups", tmp_path / "new").is_dir()
    assert writable_directory("--backups", tmp_path / "new").is_dir(), "existing is fine"
    assert [p.name for p in (tmp_path / "new").iterdir()] == [], "the probe is removed"


def test_a_directory_with_a_missing_parent_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist, nor does its parent") as info:
        writable_directory("--backups", tmp_path / "typo" / "backups")
    assert info.value.exit_code == 2
    assert not (tmp_path / "typo").exists()


def test_a_file_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        writable_directory("--replica", tmp_path / "f")


def test_a_directory_that_cannot_be_written_is_refused_even_for_root() -> None:
    # /proc refuses new files to everyone, root included (unlike permission bits)
    with pytest.raises(ConfigError, match=r"--backups /proc is not writable \(.+\)"):
        writable_directory("--backups", Path("/proc"))
