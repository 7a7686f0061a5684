"""``--config cutline.toml`` and ``CUTLINE_<OPTION>``: flag > environment > file > default."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import pytest
from test_cli import _published_backup

from cutline import cli, settings
from cutline.config_file import apply_settings, commands, root_command
from cutline.errors import ConfigError
from cutline.parser import build_parser

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "cutline.example.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.delenv(settings.ENV_BOOTSTRAP, raising=False)
    monkeypatch.delenv("CUTLINE_CONFIG", raising=False)


def parse(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    apply_settings(parser, argv, environ or {})
    return parser.parse_args(argv)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cutline.toml"
    path.write_text(text)
    return path


def test_the_file_fills_options_and_required_ones_may_come_from_it(tmp_path):
    config = write(
        tmp_path,
        'source = "shop"\n'
        '[kafka]\nbootstrap-servers = "k1:9092"\n'
        '[replicate]\nreplica = "/r"\nbackups = "/b"\nkeep_last = 5\nkeep-within = "7d"\n'
        '[capture]\ntables = ["accounts", "orders"]\ndb = "shop.sqlite"\n'
        "[kafka.start]\nbrokers = 3\n",
    )
    args = parse(["replicate", "--config", str(config)])
    assert (args.replica, args.backups, args.source) == (Path("/r"), Path("/b"), "shop")
    assert (args.keep_last, args.keep_within, args.bootstrap_servers) == (5, 7 * 86400.0, "k1:9092")
    args = parse(["--config", str(config), "capture"])
    assert (args.tables, args.db, args.source) == ("accounts,orders", Path("shop.sqlite"), "shop")
    assert parse(["kafka", "start", "--config", str(config)]).brokers == 3


def test_precedence_is_flag_then_environment_then_file_then_default(tmp_path):
    config = write(tmp_path, '[replicate]\nreplica = "r"\nbackups = "b"\nthreads = 2\n')
    base = ["replicate", "--config", str(config)]
    assert parse(base).threads == 2  # file over default (None)
    assert parse(base).alignment_timeout == 120.0  # default where nothing is said
    assert parse(base, {"CUTLINE_THREADS": "3"}).threads == 3  # environment over file
    assert parse([*base, "--threads", "4"], {"CUTLINE_THREADS": "3"}).threads == 4  # flag first
    env = {"CUTLINE_CONFIG": str(config), "CUTLINE_BACKUPS": "/elsewhere"}
    assert parse(["replicate"], env).backups == Path("/elsewhere")


def test_kafka_bootstrap_servers_in_the_environment_wins_over_the_file(tmp_path):
    config = write(tmp_path, 'bootstrap-servers = "file:9092"\n')
    argv = ["replicate", "--replica", "r", "--backups", "b", "--config", str(config)]
    assert parse(argv).bootstrap_servers == "file:9092"
    env = {"KAFKA_BOOTSTRAP_SERVERS": "env:9092"}
    assert parse(argv, env).bootstrap_servers == "env:9092"


def test_options_before_the_command_come_from_the_file_and_the_environment(tmp_path):
    config = write(tmp_path, "[common]\nverbose = true\n")
    assert parse(["backups", "--backups", "b", "--config", str(config)]).verbose is True
    assert parse(["backups", "--backups", "b"], {"CUTLINE_VERBOSE": "1"}).verbose is True
    argv = ["backups", "--backups", "b", "--config", str(config)]
    assert parse(argv, {"CUTLINE_VERBOSE": "no"}).verbose is False  # environment over file
    assert parse(["backups", "--backups", "b"]).verbose is False


def test_boolean_options_from_file_and_environment(tmp_path):
    config = write(tmp_path, "[prune]\ndry-run = true\njson = false\n")
    args = parse(["prune", "--backups", "b", "--keep-last", "1", "--config", str(config)])
    assert (args.dry_run, args.json) == (True, False)
    args = parse(["backups", "--backups", "b"], {"CUTLINE_JSON": "yes"})
    assert args.json is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[replicate]\nkeep_lats = 3\n", "unknown key 'replicate.keep_lats' in config file"),
        ("bakups = '/b'\n", "unknown key 'bakups' in config file"),
        ("[replicat]\nthreads = 1\n", "unknown key 'replicat.threads' in config file"),
        ("[replicate]\nthreads = 0\n", "key 'replicate.threads': '0' must be at least 1"),
        ("[replicate]\nkeep-within = 'a week'\n", "'a week' is not a duration"),
        ("[kafka.start]\nbrokers = 2\n", "'2' is not one of 1, 3"),
        ("[backups]\njson = 'maybe'\n", "'maybe' is not true or false"),
        ("[replicate\n", "is not valid TOML"),
    ],
)
def test_a_wrong_file_is_one_line_naming_the_key_and_the_file(tmp_path, capsys, text, message):
    config = write(tmp_path, text)
    with pytest.raises(SystemExit) as info:
        cli.main(["backups", "--backups", str(tmp_path), "--config", str(config)])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert message in err and str(config) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_file_and_a_bad_environment_value_are_one_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as info:
        cli.main(["backups", "--backups", str(tmp_path), "--config", str(tmp_path / "no.toml")])
    assert info.value.code == 2
    assert "config file" in capsys.readouterr().err
    monkeypatch.setenv("CUTLINE_KEEP_LAST", "many")
    with pytest.raises(SystemExit) as info:
        cli.main(["prune", "--backups", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "environment variable CUTLINE_KEEP_LAST: 'many' is not a whole number" in err
    # a variable for an option the command does not have is not this command's business
    assert cli.main(["backups", "--backups", str(tmp_path)]) == 0


def test_the_config_file_serves_commands_that_read_backups(tmp_path, capsys):
    _published_backup(tmp_path / "backups", "shop", 4, 1_764_065_700_000_000)
    shared = f'[common]\nbackups = "{tmp_path / "backups"}"\n'
    config = write(tmp_path, shared + "[query]\njson = true\n")
    assert cli.main(["query", "--config", str(config), "SELECT count(*) AS n FROM accounts"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 2}]


def test_the_example_file_parses_and_every_key_is_a_real_option():
    data = tomllib.loads(EXAMPLE.read_text())
    parser = build_parser()
    every = {c.path: c for c in commands(parser)}
    shared = {d for c in [*every.values(), root_command(parser)] for d in c.options}
    seen = 0

    def check(prefix: tuple[str, ...], table: dict) -> None:
        nonlocal seen
        for key, value in table.items():
            if isinstance(value, dict):
                check((*prefix, key), value)
                continue
            seen += 1
            name = key.replace("-", "_")
            if prefix in ((), ("kafka",), ("common",)):
                assert name in shared, key
            else:
                assert name in every[prefix].options, (prefix, key)

    check((), data)
    assert seen >= 25
    for command in every.values():  # the file applies to every command without an error
        parser = build_parser()
        apply_settings(parser, [*command.path, "--config", str(EXAMPLE)], {})


def test_config_error_is_a_config_error(tmp_path):
    config = write(tmp_path, "nonsense = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'nonsense'"):
        apply_settings(build_parser(), ["backups", "--config", str(config)], {})
