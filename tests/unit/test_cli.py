"""The command line (parsing, exit statuses, commands that need no Kafka) and the settings
that every command shares (bootstrap resolution, source names)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import duckdb
import pytest

from cutline import cli, settings
from cutline.errors import ConfigError
from producers.markers import format_time
from producers.sqlite_changelog import connect, install


@pytest.fixture(autouse=True)
def scratch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cutline-home"
    monkeypatch.setenv(settings.ENV_HOME, str(home))
    monkeypatch.setenv(settings.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(settings.ENV_BOOTSTRAP, raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    return home


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def exit_status(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


# -- parsing ---------------------------------------------------------------------------------

HELP = {
    (): [
        "kafka",
        "capture",
        "mark",
        "replicate",
        "replay",
        "backups",
        "query",
        "restore",
        "diff",
        "verify",
        "prune",
        "demo",
        "--verbose",
    ],
    ("kafka",): ["start", "stop"],
    ("kafka", "start"): ["--brokers", "{1,3}"],
    ("kafka", "stop"): ["stop"],
    ("capture",): [
        "--db",
        "--tables",
        "--partitions",
        "--mark-every",
        "--bootstrap-servers",
        "--source",
    ],
    ("mark",): ["--db"],
    ("replicate",): [
        "--replica",
        "--backups",
        "--threads",
        "--alignment-timeout",
        "--session-timeout",
        "--full-every",
        "--bootstrap-servers",
        "--source",
    ],
    ("replay",): [
        "--replica",
        "--backups",
        "--from-marker",
        "--until-marker",
        "--force",
        "--full-every",
        "--idle-timeout",
        "--json",
        "--bootstrap-servers",
        "--source",
    ],
    ("backups",): ["--backups", "--source", "--json"],
    ("query",): ["--backups", "--marker", "--as-of", "--all", "--json", "--source", "sql"],
    ("restore",): [
        "--backups",
        "--marker",
        "--as-of",
        "--to",
        "--tables",
        "--force",
        "--source",
    ],
    ("diff",): ["--backups", "--table", "--json", "--source", "FROM", "TO"],
    ("verify",): ["--backups", "--source", "--marker", "--json"],
    ("prune",): ["--backups", "--keep-last", "--source", "--dry-run", "--json"],
    ("demo",): ["--workdir", "--markers", "--bootstrap-servers"],
}


@pytest.mark.parametrize("command", list(HELP), ids=lambda c: " ".join(c) or "cutline")
def test_help_exits_zero_and_mentions_key_options(capsys, command):
    code, out, _err = exit_status(capsys, *command, "--help")
    assert code == 0
    assert out.startswith(f"usage: cutline {' '.join(command)}".rstrip())
    for word in HELP[command]:
        assert word in out, (command, word)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nonsense"],
        ["capture", "--db", "x.sqlite", "--tables", "t", "--mark-every", "-1"],
        ["capture", "--db", "x.sqlite", "--tables", "t", "--mark-every", "0"],
        ["capture", "--db", "x.sqlite", "--tables", "t", "--mark-every", "soon"],
        ["capture", "--db", "x.sqlite", "--tables", "t", "--partitions", "0"],
        ["capture", "--db", "x.sqlite", "--tables", "t", "--partitions", "1.5"],
        ["capture", "--tables", "t"],
        ["capture", "--db", "x.sqlite"],
        ["mark"],
        ["replicate", "--replica", "r", "--backups", "b", "--threads", "0"],
        ["replicate", "--replica", "r", "--backups", "b", "--alignment-timeout", "-5"],
        ["replicate", "--backups", "b"],
        ["kafka"],
        ["kafka", "start", "--brokers", "2"],
        ["kafka", "restart"],
        ["backups"],
        ["query", "--backups", "b", "--marker", "1", "--as-of", "2026-01-01", "SELECT 1"],
        ["query", "--backups", "b", "--marker", "one", "SELECT 1"],
        ["query", "--backups", "b"],
        ["demo", "--markers", "0"],
    ],
    ids=lambda a: " ".join(a) or "no-command",
)
def test_invalid_options_exit_with_status_2(capsys, argv):
    code, out, err = exit_status(capsys, *argv)
    assert code == 2
    assert "error:" in err
    assert out == ""


def test_validation_messages_say_what_is_wrong(capsys):
    _, _, err = exit_status(capsys, "capture", "--db", "x", "--tables", "t", "--mark-every", "-1")
    assert "must be greater than 0" in err
    _, _, err = exit_status(
        capsys, "replicate", "--replica", "r", "--backups", "b", "--threads", "0"
    )
    assert "must be at least 1" in err
    _, _, err = exit_status(
        capsys, "query", "--backups", "b", "--marker", "1", "--as-of", "2026", "SELECT 1"
    )
    assert "not allowed with argument" in err


def test_valid_options_parse_with_defaults():
    args = parse("capture", "--db", "shop.sqlite", "--tables", "a,b", "--mark-every", "0.5")
    assert (args.db, args.tables, args.mark_every, args.partitions, args.source) == (
        Path("shop.sqlite"),
        "a,b",
        0.5,
        None,
        "default",
    )
    args = parse("replicate", "--replica", "r", "--backups", "b")
    assert (args.threads, args.alignment_timeout, args.bootstrap_servers) == (None, 120.0, None)
    assert parse("kafka", "start").brokers == 1
    assert parse("kafka", "start", "--brokers", "3").brokers == 3
    args = parse("query", "--backups", "b", "--as-of", "2026-01-01T00:00:00Z", "SELECT 1")
    assert (args.marker, args.as_of, args.sql, args.json) == (
        None,
        "2026-01-01T00:00:00Z",
        "SELECT 1",
        False,
    )
    assert parse("demo").markers == 4


# -- main() ----------------------------------------------------------------------------------


def test_mark_on_missing_database_exits_2_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "no-such-primary.sqlite"
    with pytest.raises(SystemExit) as info:
        cli.main(["mark", "--db", str(missing)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert err.startswith("cutline mark: error:")
    assert not missing.exists()


def test_mark_without_capture_exits_2(tmp_path, capsys):
    db = tmp_path / "plain.sqlite"
    sqlite3.connect(db).close()
    with pytest.raises(SystemExit) as info:
        cli.main(["mark", "--db", str(db)])
    assert info.value.code == 2
    assert "capture is not installed" in capsys.readouterr().err


def test_mark_prints_marker_json(tmp_path, capsys):
    db = tmp_path / "shop.sqlite"
    setup = sqlite3.connect(db)
    setup.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a)")
    setup.commit()
    setup.close()
    conn = connect(db)
    install(conn, "shop", ["t"])
    conn.close()
    assert cli.main(["mark", "--db", str(db)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli.main(["mark", "--db", str(db)]) == 0
    second = json.loads(capsys.readouterr().out)
    assert set(first) == {"marker_id", "t1"}
    assert second["marker_id"] == first["marker_id"] + 1
    check = sqlite3.connect(db)
    t1_us = check.execute(
        "SELECT t1_us FROM _cutline_markers WHERE marker_id = ?", (first["marker_id"],)
    ).fetchone()[0]
    check.close()
    assert first["t1"] == format_time(t1_us)


def test_backups_json_on_empty_dir_prints_empty_list(tmp_path, capsys):
    assert cli.main(["backups", "--backups", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == []
    assert out.strip() == "[]"


def test_backups_table_on_empty_dir(tmp_path, capsys):
    assert cli.main(["backups", "--backups", str(tmp_path)]) == 0
    assert f"no backups under {tmp_path}" in capsys.readouterr().out


def _published_backup(root: Path, source: str, marker_id: int, t1_us: int) -> Path:
    path = root / source / f"marker-{marker_id:010d}"
    path.mkdir(parents=True)
    db = duckdb.connect(str(path / "backup.duckdb"))
    db.execute("CREATE TABLE accounts(id BIGINT, balance DOUBLE)")
    db.execute("INSERT INTO accounts VALUES (1, 10.0), (2, 5.5)")
    db.close()
    manifest = {
        "format": 1,
        "source": source,
        "marker_id": marker_id,
        "t1": format_time(t1_us),
        "t1_us": t1_us,
        "t2": format_time(t1_us + 5),
        "t2_us": t1_us + 5,
        "duckdb": "backup.duckdb",
        "tables": {"accounts": {"rows": 2, "avro": "avro/accounts.avro"}},
        "files": [{"path": "backup.duckdb", "bytes": 0, "sha256": ""}],
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_backups_json_and_query_json_over_a_published_backup(tmp_path, capsys):
    path = _published_backup(tmp_path, "shop", 4, 1_764_065_700_000_000)
    assert cli.main(["backups", "--backups", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {
            "marker_id": 4,
            "t1": format_time(1_764_065_700_000_000),
            "t2": format_time(1_764_065_700_000_005),
            "source": "shop",
            "kind": "full",
            "parent_marker_id": None,
            "tables": {"accounts": 2},
            "files": [str(path / "backup.duckdb")],
        }
    ]
    argv = ["query", "--backups", str(tmp_path), "--source", "shop", "--json"]
    assert cli.main([*argv, "SELECT id, balance FROM accounts ORDER BY id"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"id": 1, "balance": 10.0},
        {"id": 2, "balance": 5.5},
    ]
    assert cli.main([*argv[:-1], "SELECT sum(balance) AS total FROM accounts"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "15.5" in out and "(1 row)" in out


def test_query_write_is_refused_with_status_1(tmp_path, capsys):
    _published_backup(tmp_path, "shop", 4, 1_764_065_700_000_000)
    argv = ["query", "--backups", str(tmp_path), "--source", "shop", "DELETE FROM accounts"]
    assert cli.main(argv) == 1
    assert "backups are read-only" in capsys.readouterr().err


def test_query_without_backups_fails_with_status_1(tmp_path, capsys):
    assert cli.main(["query", "--backups", str(tmp_path), "SELECT 1"]) == 1
    assert f"no backups under {tmp_path}: run `cutline replicate`" in capsys.readouterr().err


def test_query_with_invalid_source_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["query", "--backups", str(tmp_path), "--source", "a/b", "SELECT 1"])
    assert info.value.code == 2
    assert "invalid source name" in capsys.readouterr().err


def test_capture_with_empty_table_list_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["capture", "--db", str(tmp_path / "x.sqlite"), "--tables", " , "])
    assert info.value.code == 2
    assert "--tables needs at least one table" in capsys.readouterr().err


def test_capture_without_any_kafka_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["capture", "--db", str(tmp_path / "x.sqlite"), "--tables", "t"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "no Kafka cluster" in err and "--bootstrap-servers" in err


# -- settings --------------------------------------------------------------------------------


def _record_broker(home: Path, value) -> None:
    state = home / "kafka" / "state.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"bootstrap_servers": value}))


def test_state_file_lives_under_cutline_home(scratch_home):
    assert settings.cutline_home() == scratch_home
    assert settings.broker_state_file() == scratch_home / "kafka" / "state.json"


def test_resolve_bootstrap_prefers_flag_then_env_then_recorded(scratch_home, monkeypatch):
    _record_broker(scratch_home, "127.0.0.1:19092")
    monkeypatch.setenv(settings.ENV_BOOTSTRAP, "env:9092")
    assert settings.resolve_bootstrap("flag:9092") == "flag:9092"
    assert settings.resolve_bootstrap(None) == "env:9092"
    monkeypatch.setenv(settings.ENV_BOOTSTRAP, "")
    assert settings.resolve_bootstrap(None) == "127.0.0.1:19092"
    assert settings.resolve_bootstrap("") == "127.0.0.1:19092"
    monkeypatch.delenv(settings.ENV_BOOTSTRAP)
    assert settings.resolve_bootstrap(None) == "127.0.0.1:19092"


def test_resolve_bootstrap_env_without_state(monkeypatch):
    monkeypatch.setenv(settings.ENV_BOOTSTRAP, "env:9092")
    assert settings.resolve_bootstrap(None) == "env:9092"


def test_resolve_bootstrap_with_nothing_is_config_error():
    with pytest.raises(ConfigError) as info:
        settings.resolve_bootstrap(None)
    message = str(info.value)
    assert "--bootstrap-servers" in message
    assert settings.ENV_BOOTSTRAP in message
    assert "cutline kafka start" in message


@pytest.mark.parametrize("content", ["{not json", "", '{"bootstrap_servers": 9092}', "{}"])
def test_unusable_state_file_is_ignored(scratch_home, content):
    state = scratch_home / "kafka" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(content)
    assert settings.recorded_bootstrap() is None
    with pytest.raises(ConfigError):
        settings.resolve_bootstrap(None)
    assert settings.resolve_bootstrap("x:1") == "x:1"


@pytest.mark.parametrize("content", ["[]", "null", '"127.0.0.1:9092"'])
def test_non_object_state_file_is_ignored(scratch_home, content):
    state = scratch_home / "kafka" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(content)
    assert settings.resolve_bootstrap("x:1") == "x:1"
    assert settings.recorded_bootstrap() is None


def test_empty_recorded_value_is_ignored(scratch_home):
    _record_broker(scratch_home, "")
    assert settings.recorded_bootstrap() is None


@pytest.mark.parametrize("name", ["shop.v1", "default", "a", "A-b_c.9", "0shop", "x" * 100])
def test_validate_source_accepts_safe_names(name):
    assert settings.validate_source(name) == name


@pytest.mark.parametrize(
    "name", ["a/b", "", ".hidden", "-x", "_x", "sp ace", "a\\b", "..", "x" * 101, "é"]
)
def test_validate_source_rejects_unsafe_names(name):
    with pytest.raises(ConfigError, match="invalid source name"):
        settings.validate_source(name)


def test_validate_source_rejects_trailing_newline():
    with pytest.raises(ConfigError):
        settings.validate_source("shop\n")


def test_topic_names():
    topics = settings.Topics("shop.v1")
    assert topics.ops == "cutline.shop.v1.ops"
    assert topics.control == "cutline.shop.v1.control"
    assert topics.dead_letter == "cutline.shop.v1.dlq"
    assert topics.capture_position == "cutline.shop.v1.capture"
    assert topics.replication_group == "cutline.shop.v1.replicate"
