"""The docker-compose files (Docker itself is not needed): they parse, every cutline command
they run or show parses and uses only options its ``--help`` lists, and the secured
variant's set-up script makes certificates and settings that fit together."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cutline.kafka_config import from_file, parse_properties, resolve_client_settings
from cutline.parser import build_parser

DOCKER = Path(__file__).resolve().parents[2] / "docker"
PLAIN = DOCKER / "docker-compose.yml"
SECURED = DOCKER / "docker-compose.secured.yml"
SETUP = DOCKER / "secured" / "setup.py"
SHOWN = re.compile(r"run --rm --no-deps capture (?P<args>.+)$", re.MULTILINE)


def _compose(path: Path) -> dict:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict) and loaded["services"], path
    return loaded


def cutline_commands(path: Path) -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every cutline command line: services and the header's examples."""
    found = []
    for name, service in _compose(path)["services"].items():
        if service.get("image") != "cutline:local" or "entrypoint" in service:
            continue
        command = service["command"]
        found.append((name, shlex.split(command) if isinstance(command, str) else command))
    for match in SHOWN.finditer(path.read_text()):
        found.append((match[0], shlex.split(match["args"])))
    return found


def _help_of(command: str) -> str:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command].format_help()


CASES = [(p.name, where, argv) for p in (PLAIN, SECURED) for where, argv in cutline_commands(p)]


def test_both_files_parse_and_the_secured_one_is_a_whole_variant() -> None:
    secured = _compose(SECURED)["services"]
    assert {"certs", "kafka", "acls", "capture", "replicate-a", "replicate-b"} <= set(secured)
    assert secured["kafka"]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert secured["capture"]["depends_on"]["acls"]["condition"] == (
        "service_completed_successfully"
    )
    ports = {p for s in secured.values() for p in s.get("ports", [])}
    assert {"9464:9464", "9465:9464", "9466:9464"} <= ports, "the metrics ports are published"
    assert "9464:9464" in _compose(PLAIN)["services"]["capture"]["ports"]
    assert len(CASES) >= 10


@pytest.mark.parametrize(("file", "where", "argv"), CASES)
def test_every_cutline_command_parses_and_its_options_are_in_its_help(
    file: str, where: str, argv: list[str]
) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"{file} {where}: cutline {' '.join(argv)} does not parse") from exc
    documented = _help_of(argv[0])
    for option in (a.split("=")[0] for a in argv if a.startswith("--")):
        assert option in documented, f"{file} {where}: {option} not in `cutline {argv[0]} --help`"


def test_every_secured_cutline_service_uses_the_client_settings_and_a_password_file() -> None:
    compose = _compose(SECURED)
    for name in ("capture", "replicate-a", "replicate-b"):
        service = compose["services"][name]
        assert "--kafka-config /secrets/client.properties" in service["command"], name
        assert service["environment"]["CUTLINE_KAFKA_SASL_PASSWORD"].startswith("@/secrets/")
        assert "secrets:/secrets:ro" in service["volumes"], name
        assert "--metrics-address 0.0.0.0:9464" in service["command"], name


def test_the_set_up_script_makes_certificates_and_settings_that_fit(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, str(SETUP), "certs", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # every /secrets file the compose file names is one the script wrote
    named = set(re.findall(r"/secrets/([\w.-]+)", SECURED.read_text()))
    assert named and all((out / name).exists() for name in named), named
    for host in ("kafka", "localhost"):
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(out / "ca.pem"), "-verify_hostname", host,
             str(out / "broker.pem")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert verified.returncode == 0, f"{host}: {verified.stdout}{verified.stderr}"
    server = parse_properties((out / "server.properties").read_text())
    assert server["auto.create.topics.enable"] == "false"
    assert server["authorizer.class.name"].endswith("StandardAuthorizer")
    assert server["ssl.keystore.location"] == str(out / "broker.p12")
    opened = subprocess.run(
        ["openssl", "pkcs12", "-in", str(out / "broker.p12"), "-noout",
         "-passin", f"pass:{server['ssl.keystore.password']}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    users = dict(re.findall(r"name=(\w+),password=([^\]]+)\]", (out / "scram-users").read_text()))
    client = resolve_client_settings(
        out / "client.properties", (), {"CUTLINE_KAFKA_SASL_PASSWORD": f"@{out}/cutline.password"}
    ).properties
    assert client["security.protocol"] == "SASL_SSL" and client["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (client["sasl.username"], client["sasl.password"]) == ("cutline", users["cutline"])
    assert "password" not in (out / "client.properties").read_text()
    admin = resolve_client_settings(out / "admin.properties", (), {}).properties
    assert (admin["sasl.username"], admin["sasl.password"]) == ("admin", users["admin"])
    assert admin["ssl.ca.location"] == str(out / "ca.pem")
    assert from_file(out / "admin.properties")["bootstrap.servers"] == "kafka:9093"
    again = subprocess.run(
        [sys.executable, str(SETUP), "certs", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0 and "keeping them" in again.stdout, "a restart keeps them"
