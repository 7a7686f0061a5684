"""The ``cutline`` command line. Each verb is a thin shell around a library call.

Exit status: 0 success, 1 a failure cutline explains, 2 invalid options or settings,
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException

from cutline import logs
from cutline.config_file import apply_settings
from cutline.directories import distinct_directories
from cutline.errors import ConfigError, CutlineError
from cutline.gc_tuning import streaming_gc
from cutline.kafka_config import redacted
from cutline.kafka_errors import describe
from cutline.parser import build_parser
from cutline.settings import (
    ENV_TOPIC_TEMPLATE,
    resolve_kafka,
    validate_source,
    validate_topic_template,
)
from cutline.stopping import SIGNALS, Interrupted


def _kafka(args: argparse.Namespace) -> str:
    """The command's cluster and client settings (a ``KafkaTarget``; see kafka_config)."""
    target = resolve_kafka(args.bootstrap_servers, args.kafka_config, args.kafka_settings)
    if args.verbose:  # secrets masked; a plain run stays quiet about its settings
        logging.getLogger("cutline.kafka").info(
            "Kafka at %s with client settings %s", target, redacted(target.properties)
        )
    return target


def _log_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _install_stop_signals(say=_log_progress) -> threading.Event:
    """The stop event SIGINT/SIGTERM set (installed by ``main``; see ``cutline.stopping``)."""
    SIGNALS.say = say
    return SIGNALS.event


def _stopped(command: str, exc: Interrupted, when: str) -> int:
    """A service stopped in a wait has nothing half-done to finish: a clean exit (0).

    A second signal during a clean stop cuts it short: 130, as for any interrupted work.
    """
    if exc.forced:
        logs.progress(f"cutline {command}: {exc}")
        return exc.exit_code
    logs.progress(f"cutline {command}: {exc} {when}")
    return 0


START_UP = "during start-up; nothing to finish"


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _print_table(columns: list[str], rows: list[tuple]) -> None:
    cells = [[("NULL" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def cmd_kafka(args: argparse.Namespace) -> int:
    from cutline.broker import local, secure

    if args.secure:
        return secure.kafka_command(args.kafka_command, progress=_log_progress)
    if args.kafka_command == "start":
        info = local.start_local_cluster(args.brokers, progress=_log_progress, fresh=args.fresh)
        print(info.bootstrap_servers)
        return 0
    if not local.stop_local_cluster(progress=_log_progress):
        _log_progress("no local broker was recorded; nothing to stop")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from cutline.metrics import NO_METRICS
    from cutline.metrics_server import serve_metrics
    from producers.capture import Capture, CaptureConfig

    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    if not tables:
        raise ConfigError("--tables needs at least one table name, e.g. --tables accounts,orders")
    config = CaptureConfig(
        db_path=str(args.db),
        tables=tables,
        bootstrap=_kafka(args),
        source=validate_source(args.source),
        partitions=args.partitions,
        mark_every_s=args.mark_every,
        digest_every=args.digest_every,
        new_incarnation=args.new_incarnation,
        lock_timeout_s=args.lock_timeout,
        snapshot_chunk_rows=args.snapshot_chunk_rows,
    )
    holder: list[Capture] = []
    metrics, server = serve_metrics(
        args.metrics_address,
        config.source,
        lambda: holder[0].ready() if holder else (False, "starting"),
        logs.progress,
    )
    capture = Capture(config, progress=logs.progress, metrics=metrics or NO_METRICS)
    holder.append(capture)
    stop = _install_stop_signals(logs.progress)
    phase = START_UP
    try:  # a signal stops the loop cleanly; only the waits marked interruptible end at once
        with SIGNALS.cooperating():
            capture.open()
            phase = "while Kafka was away; nothing is lost"
            stats = capture.run(stop)
    except Interrupted as exc:
        return _stopped("capture", exc, phase)
    finally:
        capture.close()
        if server is not None:
            server.close()
    logs.progress(capture.status_line())
    return 0 if stats is not None else 1


def cmd_mark(args: argparse.Namespace) -> int:
    from producers.markers import request_marker
    from producers.sqlite_changelog import connect

    conn = connect(args.db)
    try:
        ticket = request_marker(
            conn,
            note="cutline mark",
            digest_every=args.digest_every,
            lock_timeout_s=args.lock_timeout,
        )
    finally:
        conn.close()
    print(json.dumps(ticket.as_json()))
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from producers.sources_command import run_sources

    return run_sources(args.db, drop=args.drop, as_json=args.json, lock_timeout_s=args.lock_timeout)


def cmd_migrate(args: argparse.Namespace) -> int:
    from producers.schema_changes import migrate
    from producers.sqlite_changelog import connect

    conn = connect(args.db)
    try:
        summary = migrate(conn, args.sql)
    finally:
        conn.close()
    print(json.dumps(summary))
    return 0


def cmd_replicate(args: argparse.Namespace) -> int:
    from backups.retention import retention_policy
    from consumers.replicator import ReplicateConfig, Replicator
    from cutline.metrics import NO_METRICS
    from cutline.metrics_server import serve_metrics

    config = ReplicateConfig(
        bootstrap=_kafka(args),
        replica_dir=args.replica,
        backups_dir=args.backups,
        source=validate_source(args.source),
        threads=args.threads,
        alignment_timeout_s=args.alignment_timeout,
        session_timeout_s=args.session_timeout,
        full_every=args.full_every,
        digest_timeout_s=args.digest_timeout,
        retention=retention_policy(args.keep_last, args.keep_within),
    )
    holder: list[Replicator] = []
    metrics, server = serve_metrics(
        args.metrics_address,
        config.source,
        lambda: holder[0].ready() if holder else (False, "starting"),
        logs.progress,
    )
    replicator = Replicator(config, progress=logs.progress, metrics=metrics or NO_METRICS)
    holder.append(replicator)
    stop = _install_stop_signals(logs.progress)
    phase = START_UP
    try:  # a signal stops the loop cleanly; only the waits marked interruptible end at once
        with SIGNALS.cooperating():
            try:
                replicator.open()
            except BaseException:
                replicator.close()
                raise
            phase = "while taking partitions over; nothing to finish"
            replicator.run(stop)  # closes the replicator whatever happens
    except Interrupted as exc:
        return _stopped("replicate", exc, phase)
    finally:
        if server is not None:
            server.close()
    logs.progress(replicator.status_line())
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import shutil

    from consumers.replay import ReplayConfig, run_replay
    from cutline.progress import Progress

    config = ReplayConfig(
        bootstrap=_kafka(args),
        replica_dir=args.replica,
        backups_dir=args.backups,
        source=validate_source(args.source),
        from_marker=args.from_marker,
        until_marker=args.until_marker,
        force=args.force,
        full_every=args.full_every,
        idle_timeout_s=args.idle_timeout,
        digest_timeout_s=args.digest_timeout,
    )
    # a live line on a terminal; elsewhere, and in JSON, progress lines are log lines
    live = sys.stderr.isatty() and args.log_format == "text"
    stream = sys.stderr if live else logs.LogStream()
    progress = Progress(stream, label="replay", width=shutil.get_terminal_size().columns - 1)
    stop = _install_stop_signals(logs.progress)
    try:
        with SIGNALS.cooperating():
            report = run_replay(
                config,
                stop,
                progress=progress.note,
                on_status=lambda s: progress.update(s.records, s.total, s.detail()),
            )
    except BaseException:
        progress.clear()
        raise
    progress.finish(report.summary())
    if args.json:
        print(json.dumps(report.as_json()))
    if report.interrupted:
        return 130
    return 1 if report.failed else 0


def cmd_backups(args: argparse.Namespace) -> int:
    from backups.catalog import list_backups

    found = list_backups(args.backups, args.source)
    if args.json:
        print(json.dumps([b.summary() for b in found], indent=2))
        return 0
    if not found:
        print(f"no backups under {args.backups}")
        return 0

    rows = [
        (
            b.source,
            b.marker_id,
            b.t1,
            b.t2,
            "full" if b.kind == "full" else f"incremental on {b.parent_marker_id}",
            ", ".join(f"{t}={n}" for t, n in b.summary()["tables"].items()),
        )
        for b in found
    ]
    _print_table(["source", "marker", "T1 (primary as of)", "T2 (written)", "kind", "rows"], rows)
    return 0


def _reader_source(args: argparse.Namespace) -> str:
    """``--source``, else the backups directory's only source; bad input is checked first."""
    from backups.catalog import default_source, parse_instant

    if args.source:
        return validate_source(args.source)
    if getattr(args, "as_of", None) is not None:
        parse_instant(args.as_of)  # an invalid time is exit 2 even where no backup is
    return validate_source(default_source(args.backups, None))


def cmd_query(args: argparse.Namespace) -> int:
    from backups.catalog import backups_of_source, select_backup
    from backups.readers.query import run_query, run_query_all

    source = _reader_source(args)
    if args.all:
        every = backups_of_source(args.backups, source)
        columns, rows = run_query_all(every, args.sql)
        described = (
            f"{len(every)} backups, markers {every[0].marker_id}..{every[-1].marker_id}: "
            f"the primary from {every[0].t1} to {every[-1].t1}"
        )
    else:
        backup = select_backup(args.backups, source, marker_id=args.marker, as_of=args.as_of)
        columns, rows = run_query(backup, args.sql)
        described = f"backup {backup.marker_id}: the primary as of {backup.t1}"
    if args.json:
        print(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=_json_value))
    else:
        _log_progress(described)
        _print_table(columns, rows)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from backups.catalog import select_backup
    from backups.readers.restore import check_target, restore_backup

    tables = None
    if args.tables is not None:
        tables = [t.strip() for t in args.tables.split(",") if t.strip()]
        if not tables:
            raise ConfigError("--tables needs at least one table name, e.g. --tables accounts")
    check_target(args.to, args.force)  # a bad --to is refused before any backup is read
    source = _reader_source(args)
    backup = select_backup(args.backups, source, marker_id=args.marker, as_of=args.as_of)
    _log_progress(f"restoring backup {backup.marker_id}: the primary as of {backup.t1}")
    result = restore_backup(
        backup, args.to, tables=tables, force=args.force, progress=_log_progress
    )
    print(json.dumps(result.summary()))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from backups.catalog import select_backup
    from backups.readers.diff import diff_backups, summary_lines

    source = _reader_source(args)
    before = select_backup(args.backups, source, marker_id=args.from_marker)
    after = select_backup(args.backups, source, marker_id=args.to_marker)
    diff = diff_backups(before, after, table=args.table)
    if args.json:
        print(json.dumps(diff.as_json(), default=_json_value))
    else:
        for line in summary_lines(diff):
            print(line)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from backups.catalog import CatalogError
    from backups.verify import verify_catalog

    source = validate_source(args.source) if args.source else None
    results = verify_catalog(args.backups, source, args.marker)
    if not results:
        which = f" for marker {args.marker}" if args.marker is not None else ""
        raise CatalogError(f"no backups{which} to verify under {args.backups}")
    damaged = [r for r in results if r.problems]
    if args.json:
        report = [r.as_json() for r in results]
        print(json.dumps({"ok": not damaged, "backups": report}, indent=2))
    else:
        for r in results:
            state = "ok" if not r.problems else "DAMAGED"
            print(f"{state:8} {r.source} marker {r.marker_id} ({r.kind or 'unreadable'})")
            for problem in r.problems:
                print(f"         {problem}")
        count = sum(len(r.problems) for r in damaged)
        print(
            f"verified {len(results)} backup(s): {len(results) - len(damaged)} intact, "
            f"{len(damaged)} damaged ({count} problem(s))"
        )
    return 1 if damaged else 0


def cmd_prune(args: argparse.Namespace) -> int:
    from backups.retention import RetentionPolicy, prune

    source = validate_source(args.source) if args.source else None
    policy = RetentionPolicy(keep_last=args.keep_last, keep_within_s=args.keep_within)
    plans = prune(args.backups, policy, source, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "sources": [p.as_json() for p in plans]}))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    if not plans:
        print(f"no backups under {args.backups}")
    for plan in plans:
        removed = ", ".join(str(b.marker_id) for b in reversed(plan.remove)) or "nothing"
        print(f"{plan.source}: {verb} {removed}")
        print(f"{plan.source}: kept {', '.join(str(b.marker_id) for b in plan.newest)}")
        for kept, needers in sorted(plan.for_chains.items()):
            print(
                f"{plan.source}: kept {kept} for the chain of incremental "
                f"{', '.join(map(str, needers))}"
            )
        for broken in plan.broken:
            print(f"{plan.source}: warning: {broken}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cutline.demo import named_cluster, run_demo

    bootstrap = named_cluster(args.bootstrap_servers, args.kafka_config, args.kafka_settings)
    return run_demo(
        args.workdir,
        markers=args.markers,
        bootstrap=bootstrap,
        log_args=("--log-format", args.log_format, "--log-level", args.log_level),
    )


COMMANDS = {
    "kafka": cmd_kafka,
    "capture": cmd_capture,
    "mark": cmd_mark,
    "sources": cmd_sources,
    "migrate": cmd_migrate,
    "replicate": cmd_replicate,
    "replay": cmd_replay,
    "backups": cmd_backups,
    "query": cmd_query,
    "restore": cmd_restore,
    "diff": cmd_diff,
    "verify": cmd_verify,
    "prune": cmd_prune,
    "demo": cmd_demo,
    "status": lambda args: _run("cutline.status", "cmd_status", args),
    "dlq": lambda args: _run("cutline.dlq", "cmd_dlq", args),
}


def _run(module: str, name: str, args: argparse.Namespace) -> int:
    """A command that lives in its own module (imported only when it runs)."""
    import importlib

    return getattr(importlib.import_module(module), name)(args)


def _say_error(args: argparse.Namespace, text: str) -> None:
    """The one error line: a log line in --log-format json, so a log shipper sees it."""
    if getattr(args, "log_format", "text") == "json":
        logs.error(text)
    else:
        print(text, file=sys.stderr)


# Commands that only look at existing backups: a --backups that is not there is a typo.
READS_BACKUPS = frozenset({"backups", "query", "restore", "diff", "verify", "prune", "status"})


def _check_backups_exist(args: argparse.Namespace) -> None:
    if args.command in ("replicate", "replay"):
        distinct_directories(args.replica, args.backups)
    path = getattr(args, "backups", None)
    if args.command not in READS_BACKUPS or path is None:
        return
    if not path.exists():
        raise ConfigError(f"--backups {path} does not exist: pass the directory `replicate` writes")
    if not path.is_dir():
        raise ConfigError(f"--backups {path} is not a directory: pass the backups directory")


def _use_topic_template(args: argparse.Namespace) -> None:
    """--topic-template reaches every ``Topics`` (and child processes) via the environment."""
    template = getattr(args, "topic_template", None)
    if template:
        os.environ[ENV_TOPIC_TEMPLATE] = validate_topic_template(template)


def _dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack to stderr, even while the main
    thread is stuck inside a C call (a process that does not stop can say where it is)."""
    if hasattr(signal, "SIGUSR1"):
        with contextlib.suppress(AttributeError, ValueError, OSError, RuntimeError):
            faulthandler.register(signal.SIGUSR1, all_threads=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        apply_settings(parser, sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        parser.exit(exc.exit_code, f"cutline: error: {exc}\n")
    args = parser.parse_args(argv)
    # long-running commands log at --log-level (info); the others only warnings
    logs.setup_logging(
        getattr(args, "log_format", "text"),
        getattr(args, "log_level", "warning"),
        verbose=args.verbose,
    )
    # cutline reports client errors itself, in one line (kafka_errors); librdkafka's own
    # log (even its FATAL lines) is for --verbose
    logging.getLogger("cutline.kafka.librdkafka").setLevel(
        logging.DEBUG if args.verbose else logging.CRITICAL + 1
    )
    previous_handlers = SIGNALS.install()  # every command, every phase: cutline.stopping
    _dump_stacks_on_sigusr1()
    try:
        _use_topic_template(args)
        _check_backups_exist(args)
        with streaming_gc():
            return COMMANDS[args.command](args)
    except ConfigError as exc:
        parser.exit(exc.exit_code, f"cutline {args.command}: error: {exc}\n")
    except CutlineError as exc:
        _say_error(args, f"cutline {args.command}: {exc}")
        return exc.exit_code
    except KafkaException as exc:
        _say_error(args, f"cutline {args.command}: Kafka error: {describe(exc.args[0])}")
        return 1
    except sqlite3.Error as exc:
        print(f"cutline {args.command}: SQLite error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        SIGNALS.restore(previous_handlers)


if __name__ == "__main__":
    sys.exit(main())
