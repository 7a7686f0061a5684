"""Invalid options that parse but cannot work: every command exits with status 2 at once
and says why (``cutline.cli.main``, no broker needed)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from cutline import cli, settings

KAFKA = ["--bootstrap-servers", "127.0.0.1:9"]  # never reached: the input is refused first


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.delenv(settings.ENV_BOOTSTRAP, raising=False)
    monkeypatch.chdir(tmp_path)
    sqlite3.connect(tmp_path / "primary.sqlite").execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY)"
    ).connection.close()
    (tmp_path / "not-sqlite.db").write_text("hello")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "backups").mkdir()
    return tmp_path


CASES = [
    # capture
    (["capture", "--db", "missing.sqlite", "--tables", "t", *KAFKA], "does not exist"),
    (["capture", "--db", "not-sqlite.db", "--tables", "t", *KAFKA], "not a usable SQLite"),
    (["capture", "--db", "primary.sqlite", "--tables", " , ", *KAFKA], "at least one table"),
    (["capture", "--db", "primary.sqlite", "--tables", "t", "--source", "a b", *KAFKA], "source"),
    (["capture", "--db", "primary.sqlite", "--tables", "t"], "no Kafka cluster"),
    (
        ["capture", "--db", "primary.sqlite", "--tables", "t", "--bootstrap-servers", "nohost"],
        "HOST:PORT",
    ),
    (
        ["capture", "--db", "primary.sqlite", "--tables", "t", "--bootstrap-servers", "h:99999"],
        "HOST:PORT",
    ),
    # mark
    (["mark", "--db", "missing.sqlite"], "does not exist"),
    (["mark", "--db", "primary.sqlite"], "capture is not installed"),
    # replicate
    (["replicate", "--replica", "r", "--backups", "a-file", *KAFKA], "is not a directory"),
    (["replicate", "--replica", "no/such/r", "--backups", "b", *KAFKA], "nor does its parent"),
    (["replicate", "--replica", "r", "--backups", "/proc", *KAFKA], "is not writable"),
    (["replicate", "--replica", "r", "--backups", "b", "--source", "../x", *KAFKA], "source"),
    # commands that read backups
    (["backups", "--backups", "missing"], "does not exist"),
    (["backups", "--backups", "a-file"], "not a directory"),
    (["query", "--backups", "missing", "SELECT 1"], "does not exist"),
    (["query", "--backups", "backups", "--as-of", "yesterday", "SELECT 1"], "ISO-8601"),
    (["query", "--backups", "backups", "--source", "x/y", "SELECT 1"], "source"),
    (["restore", "--backups", "missing", "--marker", "1", "--to", "out.sqlite"], "does not exist"),
    (["restore", "--backups", "backups", "--as-of", "noon", "--to", "o.sqlite"], "ISO-8601"),
    (["diff", "--backups", "missing", "1", "2"], "does not exist"),
    (["verify", "--backups", "missing"], "does not exist"),
    (["prune", "--backups", "a-file", "--keep-last", "1"], "not a directory"),
]


@pytest.mark.parametrize(
    "argv,says", CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_invalid_input_exits_2_and_says_why(argv: list[str], says: str, capsys) -> None:
    started = time.monotonic()
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert says in err, err
    assert err.startswith(f"cutline {argv[0]}: error: "), err
    assert time.monotonic() - started < 5, "refused before any wait"
