"""Option values from a TOML file and the environment, layered under the command line.

Precedence, highest first: a flag on the command line, then ``CUTLINE_<OPTION>`` in the
environment (``--keep-last`` is ``CUTLINE_KEEP_LAST``), then the ``--config`` file (or
``$CUTLINE_CONFIG``), then cutline's defaults. Both layers become argparse defaults of
the command being run, so a flag always wins and ``--help`` stays the one reference.

The file: a top-level key, or a key in ``[common]`` or ``[kafka]``, applies to every
command that has that option; a key in ``[COMMAND]`` (``[replicate]``, ``[kafka.start]``)
applies to that command only and wins over the shared ones. Keys are option names with or without
dashes (``keep-last`` or ``keep_last``). A key that is no option is an error naming the
key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cutline.errors import ConfigError

ENV_CONFIG = "CUTLINE_CONFIG"
ENV_PREFIX = "CUTLINE_"
# Keys here apply to every command with the option: connection settings in [kafka], and
# the rest in [common] (a top-level key cannot share a name with a command's table).
SHARED_TABLES = ("kafka", "common")
# Options that are not settings: where the file is, and what a command is asked to do.
NOT_SETTINGS = frozenset({"help", "config"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# These environment variables already had a meaning; as the environment layer they win
# over the file, as every environment variable does.
ENV_ALIASES = {"bootstrap_servers": ("KAFKA_BOOTSTRAP_SERVERS",)}


@dataclass(frozen=True)
class Command:
    """One runnable command (``replicate``, ``kafka start``) and its settable options."""

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    options: dict[str, argparse.Action]  # dest -> action

    @property
    def name(self) -> str:
        return " ".join(self.path)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` on the top-level parser and on every command."""
    for target in [parser, *(c.parser for c in commands(parser))]:
        target.add_argument(
            "--config",
            metavar="FILE",
            type=Path,
            default=argparse.SUPPRESS,
            help="TOML file of option values (default: $CUTLINE_CONFIG); a flag wins over "
            "CUTLINE_<OPTION> in the environment, which wins over the file",
        )


def root_command(parser: argparse.ArgumentParser) -> Command:
    """The options before the command (``--verbose``): settable like the shared ones."""
    options = {
        action.dest: action
        for action in parser._actions
        if action.option_strings
        and action.dest not in NOT_SETTINGS
        and any(s.startswith("--") for s in action.option_strings)
    }
    return Command((), parser, options)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[Command]:
    """Every leaf command under ``parser`` with the options a file may set."""
    found = []
    for name, sub in _subcommands(parser).items():
        if _subcommands(sub):
            found.extend(commands(sub, (*prefix, name)))
            continue
        options = {
            action.dest: action
            for action in sub._actions
            if action.option_strings
            and action.dest not in NOT_SETTINGS
            and any(s.startswith("--") for s in action.option_strings)
        }
        found.append(Command((*prefix, name), sub, options))
    return found


def _key(name: str) -> str:
    return name.replace("-", "_")


def _flag(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))


def convert(action: argparse.Action, value: Any, origin: str) -> Any:
    """``value`` (from TOML or the environment) as the option would hold it, or an error."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            value = value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise ConfigError(f"{origin}: {value!r} is not true or false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._AppendAction):  # a repeatable option takes a list
        items = value if isinstance(value, list) else [value]
        single = argparse.Action(action.option_strings, action.dest, type=action.type)
        return [convert(single, item, origin) for item in items]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)  # --tables = ["a", "b"]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{origin}: {value!r} is not a value {_flag(action)} takes")
    text = str(value)
    try:
        result = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        detail = str(exc) or f"{text!r} is not valid for {_flag(action)}"
        raise ConfigError(f"{origin}: {detail}") from None
    if action.choices is not None and result not in action.choices:
        allowed = ", ".join(map(str, action.choices))
        raise ConfigError(f"{origin}: {text!r} is not one of {allowed}")
    return result


def load_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist: pass an existing --config FILE"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def file_values(
    data: Mapping[str, Any], every: Sequence[Command], path: Path, root: Command | None = None
) -> dict[tuple[str, ...], dict[str, Any]]:
    """Each command's values from the file, checked: ``{command path: {dest: value}}``.

    ``root``'s options (``--verbose``) are shared keys; their values are under path ``()``.
    """
    by_path = {c.path: c for c in every}
    shared_keys = {_key(d) for c in [*every, *([root] if root else [])] for d in c.options}
    shared: dict[str, Any] = {}
    specific: dict[tuple[str, ...], dict[str, Any]] = {}

    def take_table(prefix: tuple[str, ...], table: Mapping[str, Any]) -> None:
        command = by_path.get(prefix)
        for raw, value in table.items():
            where = ".".join((*prefix, raw))
            if isinstance(value, dict) and command is None:
                take_table((*prefix, raw), value)
            elif command is not None:
                if _key(raw) not in command.options:
                    raise ConfigError(
                        f"unknown key {where!r} in config file {path}: `cutline "
                        f"{command.name}` has no option --{raw.replace('_', '-')}; see "
                        f"`cutline {command.name} --help`"
                    )
                specific.setdefault(prefix, {})[_key(raw)] = (value, where)
            elif (
                (not prefix or prefix[0] in SHARED_TABLES)
                and len(prefix) <= 1
                and (_key(raw) in shared_keys)
            ):
                shared[_key(raw)] = (value, where)
            else:
                names = ", ".join(sorted(".".join(p) for p in by_path))
                raise ConfigError(
                    f"unknown key {where!r} in config file {path}: it is neither an option of "
                    f"a command nor a table of one ({names})"
                )

    take_table((), data)
    result: dict[tuple[str, ...], dict[str, Any]] = {}
    for command in [*every, *([root] if root else [])]:
        merged = {k: v for k, v in shared.items() if k in command.options}
        merged.update(specific.get(command.path, {}))
        result[command.path] = {
            dest: convert(command.options[dest], value, f"config file {path}, key {where!r}")
            for dest, (value, where) in merged.items()
        }
    return result


def env_values(
    command: Command, environ: Mapping[str, str], in_file: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``CUTLINE_<OPTION>`` for ``command``'s options.

    An older variable (``KAFKA_BOOTSTRAP_SERVERS``) is read here only where the file sets
    the option, to keep it above the file; otherwise the command reads it as it always did.
    """
    values = {}
    for dest, action in command.options.items():
        aliases = ENV_ALIASES.get(dest, ()) if dest in in_file else ()
        for name in (f"{ENV_PREFIX}{dest.upper()}", *aliases):
            raw = environ.get(name)
            if raw is not None and raw != "":
                values[dest] = convert(action, raw, f"environment variable {name}")
                break
    return values


def chosen_command(argv: Sequence[str], every: Sequence[Command]) -> Command | None:
    """The command ``argv`` runs: its first words that name one (options skipped)."""
    words = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--config":
            skip = True
            continue
        if token.startswith("-"):
            continue
        words.append(token)
        match = next((c for c in every if c.path == tuple(words)), None)
        if match is not None:
            return match
        if not any(c.path[: len(words)] == tuple(words) for c in every):
            return None
    return None


def config_path(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if token.startswith("--config="):
            return Path(token.split("=", 1)[1])
    from_env = environ.get(ENV_CONFIG)
    return Path(from_env) if from_env else None


def apply_settings(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> None:
    """Make the file's and the environment's values the defaults of the command to run.

    The whole file is checked (a typo anywhere is an error); the environment only for
    the command being run, so a variable meant for another command does no harm.
    """
    environ = os.environ if environ is None else environ
    every = commands(parser)
    root = root_command(parser)
    command = chosen_command(argv, every)
    path = config_path(argv, environ)
    from_file = file_values(load_file(path), every, path, root) if path is not None else {}
    parser.set_defaults(**{**from_file.get((), {}), **env_values(root, environ)})
    if command is None:
        return
    in_file = from_file.get(command.path, {})
    values = {**in_file, **env_values(command, environ, frozenset(in_file))}
    for dest in values:
        command.options[dest].required = False  # given by a lower layer: the flag may go
    command.parser.set_defaults(**values)
