"""Every path argument of every command, in the situations a user creates: each is either
handled or refused with exit 2 and one line, before any Kafka connection, and nothing is
created or overwritten where it must not be (README "Every path argument").

The CLI runs as a subprocess, as a user runs it; no broker is needed (127.0.0.1:1 is never
reached because the path is refused first).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KAFKA = ["--bootstrap-servers", "127.0.0.1:1"]


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A working directory with a primary, a plain file, a directory and symlinks."""
    conn = sqlite3.connect(tmp_path / "primary.sqlite")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "backups").mkdir()
    (tmp_path / "backups-link").symlink_to("backups")
    (tmp_path / "dangling.sqlite").symlink_to("nowhere.sqlite")
    spaced = tmp_path / "my data ü"
    spaced.mkdir()
    (spaced / "prímary db.sqlite").write_bytes((tmp_path / "primary.sqlite").read_bytes())
    (spaced / "link.sqlite").symlink_to(spaced / "prímary db.sqlite")
    return tmp_path


def run_cli(place: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CUTLINE_"))}
    env.update(PYTHONPATH=str(ROOT), CUTLINE_HOME=str(place / "home"), HOME=str(place / "h"))
    return subprocess.run(
        [sys.executable, "-m", "cutline.cli", *args],
        cwd=place,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def tree(place: Path) -> dict[str, str]:
    """Every entry under ``place`` with its content hash: proof nothing changed."""
    out = {}
    for p in sorted(place.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "->" + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = "dir"
    return out


def assert_refused(place: Path, args: list[str], needle: str, *, empty_dir: str = "") -> None:
    """Exit 2, one line holding ``needle``, no traceback, nothing changed (but the home
    and, where named, one new EMPTY directory: a limit the README lists)."""
    before = tree(place)
    result = run_cli(place, *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]
    if empty_dir:
        assert not any((place / empty_dir).iterdir())
        before[str(place / empty_dir)] = "dir"
    after = {k: v for k, v in tree(place).items() if not k.startswith(str(place / "home"))}
    assert after == before


DB_COMMANDS = [
    ["capture", "--tables", "t", *KAFKA],
    ["mark"],
    ["sources"],
    ["migrate", "ALTER TABLE t ADD COLUMN c"],
]


@pytest.mark.parametrize("command", DB_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("db", "needle"),
    [
        ("missing.sqlite", "does not exist"),
        ("no/such/dir/p.sqlite", "does not exist"),
        ("a-dir", "is a directory"),
        ("~/primary.sqlite", "does not exist"),  # quoted ~ is not expanded
        ("dangling.sqlite", "does not exist"),
    ],
)
def test_db_that_is_not_a_sqlite_file_is_refused(place, command, db, needle):
    assert_refused(place, [command[0], "--db", db, *command[1:]], needle)


@pytest.mark.parametrize("db", ["my data ü/prímary db.sqlite", "my data ü/link.sqlite"])
def test_db_with_spaces_unicode_or_a_symlink_is_opened(place, db):
    """Relative, spaced, unicode and symlinked --db paths reach the database itself."""
    result = run_cli(place, "sources", "--db", db)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--kafka-config", "missing.properties"], "cannot read it"),
        (["--kafka-config", "a-dir"], "cannot read it"),
        (["-X", "sasl.password=@missing"], "cannot read the value"),
        (["-X", "sasl.password=@a-dir"], "cannot read the value"),
    ],
)
def test_kafka_settings_file_that_cannot_be_read_is_refused(place, option, needle):
    assert_refused(
        place, ["capture", "--db", "primary.sqlite", "--tables", "t", *option, *KAFKA], needle
    )


@pytest.mark.parametrize(
    ("dirs", "needle"),
    [
        (["--replica", "a-file", "--backups", "backups"], "is not a directory"),
        (["--replica", "r", "--backups", "a-file"], "is not a directory"),
        (["--replica", "no/such/r", "--backups", "backups"], "nor does its parent"),
        (["--replica", "r", "--backups", "/proc"], "is not writable"),
        (["--replica", "backups", "--backups", "backups"], "same directory"),
        (["--replica", "backups-link", "--backups", "backups"], "same directory"),
    ],
)
def test_replicate_directories_refused(place, dirs, needle):
    empty = "r" if dirs[1] == "r" and needle == "is not writable" else ""
    assert_refused(place, ["replicate", *dirs, *KAFKA], needle, empty_dir=empty)


@pytest.mark.parametrize(
    ("dirs", "needle"),
    [
        (["--replica", "a-file", "--backups", "backups"], "is not a directory"),
        (["--replica", "r", "--backups", "a-file"], "is not a directory"),
        (["--replica", "backups", "--backups", "backups"], "same directory"),
        (["--replica", "backups-link", "--backups", "backups"], "same directory"),
    ],
)
def test_replay_directories_refused(place, dirs, needle):
    assert_refused(place, ["replay", *dirs, *KAFKA], needle)


READERS = [
    ["backups"],
    ["query", "SELECT 1"],
    ["restore", "--marker", "1", "--to", "out.sqlite"],
    ["diff", "1", "2"],
    ["verify"],
    ["prune", "--keep-last", "1"],
    ["status", *KAFKA],
]


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("backups", "needle"),
    [("missing", "does not exist"), ("a-file", "is not a directory")],
)
def test_backups_to_read_that_are_not_a_directory_are_refused(place, command, backups, needle):
    assert_refused(place, [command[0], "--backups", backups, *command[1:]], needle)


@pytest.mark.parametrize(
    ("to", "needle"),
    [
        ("primary.sqlite", "already exists"),  # the primary is never overwritten
        ("a-file", "already exists"),
        ("dangling.sqlite", "already exists"),  # nor written through a symlink
        ("a-dir", "is a directory"),
        ("no/such/out.sqlite", "does not exist"),
    ],
)
def test_restore_to_refused_before_any_backup_is_read(place, to, needle):
    assert_refused(place, ["restore", "--backups", "backups", "--marker", "1", "--to", to], needle)


@pytest.mark.parametrize(
    ("workdir", "needle"),
    [("a-file", "is a file"), ("my data ü", "not empty"), (".", "not empty")],
)
def test_demo_never_deletes_a_directory_it_did_not_make(place, workdir, needle):
    assert_refused(place, ["demo", "--workdir", workdir, *KAFKA], needle)
