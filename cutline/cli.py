"""The ``cutline`` command line. Each verb is a thin shell around a library call.

Exit status: 0 success, 1 a failure cutline explains, 2 invalid options or settings,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from cutline.errors import ConfigError, CutlineError
from cutline.settings import resolve_bootstrap, validate_source

DESCRIPTION = """\
cutline: backups that are exactly the primary's state at one instant.

Change capture writes every committed change of a SQLite primary to a Kafka topic, with
consistency markers in every partition; replication threads apply the changes to a
replica and, when all partitions reach a marker, a backup (DuckDB + Avro) is written and
catalogued as the primary at the marker's time T1. Query backups with SQL.

Quick start (a local broker, then four terminals' worth of commands):
  cutline kafka start
  cutline capture --db shop.sqlite --tables accounts,transfers --mark-every 10
  cutline replicate --replica ./replica --backups ./backups
  cutline mark --db shop.sqlite
  cutline backups --backups ./backups
  cutline query --backups ./backups "SELECT sum(balance) FROM accounts"

Kafka: --bootstrap-servers, else $KAFKA_BOOTSTRAP_SERVERS, else the broker recorded by
`cutline kafka start`.
"""


def _log_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _add_kafka(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka to use (default: $KAFKA_BOOTSTRAP_SERVERS, else the broker recorded by "
        "`cutline kafka start`)",
    )


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        default="default",
        help="name of the captured primary; it names the topics cutline.<source>.* and the "
        "backup folders (default: %(default)s)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cutline",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log Kafka client details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    kafka = sub.add_parser("kafka", help="run a local Apache Kafka broker (KRaft)")
    ksub = kafka.add_subparsers(dest="kafka_command", metavar="ACTION", required=True)
    start = ksub.add_parser(
        "start",
        help="start a local broker (or reuse the running one); prints its bootstrap servers last",
        description="Start Apache Kafka from its own jars (resolved from Maven Central with "
        "Maven on first use), in KRaft mode on free loopback ports. The bootstrap servers are "
        "recorded, so other cutline commands use them by default. With a Docker engine, "
        "`docker compose -f docker/docker-compose.yml up` is an alternative.",
    )
    start.add_argument(
        "--brokers", type=int, choices=(1, 3), default=1, help="1 broker, or a 3-broker cluster"
    )
    ksub.add_parser("stop", help="stop the local broker started by `cutline kafka start`")

    capture = sub.add_parser(
        "capture",
        help="capture changes of a SQLite primary into Kafka (runs until Ctrl-C)",
        description="Install change capture on the chosen tables (triggers writing to a change "
        "log in the same database; existing rows are captured as inserts) and publish every "
        "committed change to cutline.<source>.ops, keyed so one row always lands in one "
        "partition. Applications keep writing the whole time. Markers (`cutline mark`, or "
        "--mark-every) are written to every partition in one Kafka transaction.",
    )
    capture.add_argument("--db", required=True, type=Path, help="the SQLite primary")
    capture.add_argument("--tables", required=True, help="comma-separated tables to capture")
    capture.add_argument(
        "--partitions",
        type=_positive_int,
        help="partitions of a new ops topic (default 4; an existing topic keeps its own)",
    )
    capture.add_argument(
        "--mark-every",
        type=_positive_float,
        metavar="SECONDS",
        help="commit a marker request on the primary this often",
    )
    _add_kafka(capture)
    _add_source(capture)

    mark = sub.add_parser(
        "mark",
        help="cut a consistency point now; prints {marker_id, t1}",
        description="Commit a marker request on the primary. Its place among the primary's "
        "commits is exact: the backup of this marker holds every change committed before it "
        "and none after. Needs a running `cutline capture` to reach Kafka.",
    )
    mark.add_argument("--db", required=True, type=Path, help="the SQLite primary")

    replicate = sub.add_parser(
        "replicate",
        help="replicate into a replica and write backups at markers (runs until Ctrl-C)",
        description="Join the source's consumer group; one replication thread per assigned "
        "partition applies operations to a SQLite replica under --replica. At each marker "
        "all threads pause; once every partition reached it, a backup (DuckDB + Avro) is "
        "written under --backups, offsets are committed at the marker and threads resume. "
        "Several processes with the same --source share the partitions (on one host, give "
        "them the same --replica and --backups).",
    )
    replicate.add_argument("--replica", required=True, type=Path, help="replica directory")
    replicate.add_argument("--backups", required=True, type=Path, help="backups directory")
    replicate.add_argument(
        "--threads",
        type=_positive_int,
        help="at most this many replication threads (default: one per assigned partition)",
    )
    replicate.add_argument(
        "--alignment-timeout",
        type=_positive_float,
        default=120.0,
        metavar="SECONDS",
        help="abandon a cut whose partitions do not all reach its marker in time "
        "(default: %(default)s)",
    )
    replicate.add_argument(
        "--session-timeout",
        type=_positive_float,
        default=15.0,
        metavar="SECONDS",
        help="how long the group waits for a silent (killed, frozen) process before its "
        "partitions move to the others; Kafka accepts 6-1800 by default (default: %(default)s)",
    )
    replicate.add_argument(
        "--full-every",
        type=_positive_int,
        default=1,
        metavar="N",
        help="write a full backup every N backups and, in between, incrementals holding only "
        "the rows changed and the keys deleted since the previous backup (N=3: full, 2 "
        "incrementals, full, ...). Readers resolve incrementals through their chain. "
        "A backup whose previous one has other tables or column types is written full "
        "(default: %(default)s, every backup full)",
    )
    _add_kafka(replicate)
    _add_source(replicate)

    replay = sub.add_parser(
        "replay",
        help="rebuild the replica and every backup still in the ops topic's history",
        description="Read every partition of cutline.<source>.ops from its start up to its "
        "end at launch (read committed) into fresh replica shards under --replica, and write "
        "the backup of every marker met into --backups, each exactly the cut it would have "
        "been. Use it when the backup store is lost, or to produce backups in a new place. "
        "It runs beside a `cutline replicate` of the same source without disturbing it: its "
        "own consumer group (cutline.<source>.replay.<id>), no offset commits, nothing "
        "written to the control or dead-letter topics, and backups written under the "
        "backups directory's writer lock. Backups already in --backups are skipped. "
        "Malformed records are skipped and counted. A cut whose operation counts do not "
        "match is reported failed and gets no backup; replay goes on (exit status 1 at the "
        "end). A live progress line is shown on a terminal.",
    )
    replay.add_argument("--replica", required=True, type=Path, help="replica directory to build")
    replay.add_argument("--backups", required=True, type=Path, help="backups directory")
    replay.add_argument(
        "--from-marker",
        type=int,
        metavar="ID",
        help="write backups only for markers >= ID (everything before is still applied)",
    )
    replay.add_argument(
        "--until-marker",
        type=int,
        metavar="ID",
        help="stop after the backup of marker ID",
    )
    replay.add_argument(
        "--force",
        action="store_true",
        help="delete this source's shards already in --replica first (never use it on the "
        "replica of a running `cutline replicate`)",
    )
    replay.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="fail if no record arrives for this long before the end is reached "
        "(default: %(default)s)",
    )
    replay.add_argument(
        "--full-every",
        type=_positive_int,
        default=1,
        metavar="N",
        help="as for replicate: a full backup every N backups, incrementals in between "
        "(default: %(default)s, every backup full)",
    )
    replay.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    _add_kafka(replay)
    _add_source(replay)

    backups = sub.add_parser("backups", help="list backups, each as the primary at its T1")
    backups.add_argument("--backups", required=True, type=Path, help="backups directory")
    backups.add_argument("--source", help="only this source (default: all)")
    backups.add_argument("--json", action="store_true", help="print JSON")

    query = sub.add_parser(
        "query",
        help="SQL (DuckDB) over the backup that is the primary at a point in time",
        description="Run read-only SQL against one backup: by --marker, by --as-of (the "
        "newest backup with T1 <= that time), or the newest backup. Tables have the primary's "
        "names; _cutline_backup holds the backup's marker, T1 and T2. With --all the query "
        "sees every backup of the source at once: each table holds the rows of every backup, "
        "with the backup's marker_id and t1 as extra columns, e.g. "
        '"SELECT marker_id, sum(balance) FROM accounts GROUP BY ALL ORDER BY marker_id". '
        "Statements that would write (INSERT, CREATE, COPY ... TO, ATTACH, SET, ...) are "
        "refused.",
    )
    query.add_argument("--backups", required=True, type=Path, help="backups directory")
    which = query.add_mutually_exclusive_group()
    which.add_argument("--marker", type=int, metavar="ID", help="the backup of this marker")
    which.add_argument("--as-of", metavar="ISO-8601", help="the primary as of this time")
    which.add_argument(
        "--all",
        action="store_true",
        help="every backup at once; each table gains marker_id and t1 columns",
    )
    query.add_argument("--json", action="store_true", help="print a JSON list of row objects")
    query.add_argument("sql", help="the SQL statement")
    _add_source(query)

    restore = sub.add_parser(
        "restore",
        help="write a backup back as a SQLite database: the primary as it was at T1",
        description="Write the backup of --marker (or the newest with T1 <= --as-of) as a "
        "SQLite database at --to: every table created from the primary's own CREATE TABLE "
        "statement, with its rows. The backup is verified first (a damaged one is refused). "
        "The file is written beside --to under a temporary name and renamed into place at "
        "the end, so --to never holds a half-restored database. Prints a JSON summary.",
    )
    restore.add_argument("--backups", required=True, type=Path, help="backups directory")
    point = restore.add_mutually_exclusive_group(required=True)
    point.add_argument("--marker", type=int, metavar="ID", help="the backup of this marker")
    point.add_argument("--as-of", metavar="ISO-8601", help="the primary as of this time")
    restore.add_argument("--to", required=True, type=Path, help="the SQLite file to write")
    restore.add_argument("--tables", help="only these tables, comma-separated")
    restore.add_argument("--force", action="store_true", help="replace an existing --to file")
    _add_source(restore)

    diff = sub.add_parser(
        "diff",
        help="rows added, removed and changed between the backups of two markers",
        description="Compare the backups of markers FROM and TO table by table; rows are "
        "matched by primary key. Text: a summary per table, then the rows (+ added, "
        "- removed, ~ changed). --json: {from, to, tables: {T: {added, removed, changed: "
        "[{key, before, after}]}}}; a table in one backup only also has only_in: from|to.",
    )
    diff.add_argument("--backups", required=True, type=Path, help="backups directory")
    diff.add_argument("from_marker", type=int, metavar="FROM", help="marker id of the older state")
    diff.add_argument("to_marker", type=int, metavar="TO", help="marker id of the newer state")
    diff.add_argument("--table", help="only this table")
    diff.add_argument("--json", action="store_true", help="print JSON")
    _add_source(diff)

    _add_retention_commands(sub)

    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline on a small live workload (what `make demo` runs)",
    )
    demo.add_argument("--workdir", type=Path, default=Path("demo-data"), help="where to put files")
    demo.add_argument("--markers", type=_positive_int, default=4, help="markers to cut")
    _add_kafka(demo)
    return parser


def _install_stop_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum, _frame) -> None:
        _log_progress(f"received {signal.Signals(signum).name}, finishing current work...")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


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
    from cutline.broker import local

    if args.kafka_command == "start":
        info = local.start_local_cluster(args.brokers, progress=_log_progress)
        print(info.bootstrap_servers)
        return 0
    if not local.stop_local_cluster(progress=_log_progress):
        _log_progress("no local broker was recorded; nothing to stop")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from producers.capture import Capture, CaptureConfig

    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    if not tables:
        raise ConfigError("--tables needs at least one table name, e.g. --tables accounts,orders")
    config = CaptureConfig(
        db_path=str(args.db),
        tables=tables,
        bootstrap=resolve_bootstrap(args.bootstrap_servers),
        source=validate_source(args.source),
        partitions=args.partitions,
        mark_every_s=args.mark_every,
    )
    capture = Capture(config, progress=_log_progress)
    stop = _install_stop_signals()
    try:
        capture.open()
        stats = capture.run(stop)
    finally:
        capture.close()
    _log_progress(capture.status_line())
    return 0 if stats is not None else 1


def cmd_mark(args: argparse.Namespace) -> int:
    from producers.markers import request_marker
    from producers.sqlite_changelog import connect

    conn = connect(args.db)
    try:
        ticket = request_marker(conn, note="cutline mark")
    finally:
        conn.close()
    print(json.dumps(ticket.as_json()))
    return 0


def cmd_replicate(args: argparse.Namespace) -> int:
    from consumers.replicator import ReplicateConfig, Replicator

    config = ReplicateConfig(
        bootstrap=resolve_bootstrap(args.bootstrap_servers),
        replica_dir=args.replica,
        backups_dir=args.backups,
        source=validate_source(args.source),
        threads=args.threads,
        alignment_timeout_s=args.alignment_timeout,
        session_timeout_s=args.session_timeout,
        full_every=args.full_every,
    )
    replicator = Replicator(config, progress=_log_progress)
    stop = _install_stop_signals()
    replicator.open()
    replicator.run(stop)
    _log_progress(replicator.status_line())
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import shutil

    from consumers.replay import ReplayConfig, run_replay
    from cutline.progress import Progress

    config = ReplayConfig(
        bootstrap=resolve_bootstrap(args.bootstrap_servers),
        replica_dir=args.replica,
        backups_dir=args.backups,
        source=validate_source(args.source),
        from_marker=args.from_marker,
        until_marker=args.until_marker,
        force=args.force,
        full_every=args.full_every,
        idle_timeout_s=args.idle_timeout,
    )
    progress = Progress(sys.stderr, label="replay", width=shutil.get_terminal_size().columns - 1)
    stop = _install_stop_signals()
    try:
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
    from consumers.catalog import list_backups

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


def cmd_query(args: argparse.Namespace) -> int:
    from consumers.catalog import backups_of_source, select_backup
    from consumers.query import run_query, run_query_all

    source = validate_source(args.source)
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
    from consumers.catalog import select_backup
    from consumers.restore import restore_backup

    tables = None
    if args.tables is not None:
        tables = [t.strip() for t in args.tables.split(",") if t.strip()]
        if not tables:
            raise ConfigError("--tables needs at least one table name, e.g. --tables accounts")
    backup = select_backup(
        args.backups, validate_source(args.source), marker_id=args.marker, as_of=args.as_of
    )
    _log_progress(f"restoring backup {backup.marker_id}: the primary as of {backup.t1}")
    result = restore_backup(
        backup, args.to, tables=tables, force=args.force, progress=_log_progress
    )
    print(json.dumps(result.summary()))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from consumers.catalog import select_backup
    from consumers.diff import diff_backups, summary_lines

    source = validate_source(args.source)
    before = select_backup(args.backups, source, marker_id=args.from_marker)
    after = select_backup(args.backups, source, marker_id=args.to_marker)
    diff = diff_backups(before, after, table=args.table)
    if args.json:
        print(json.dumps(diff.as_json(), default=_json_value))
    else:
        for line in summary_lines(diff):
            print(line)
    return 0


def _add_retention_commands(sub: Any) -> None:
    verify = sub.add_parser(
        "verify",
        help="check that backups are intact: checksums, row counts, Avro = DuckDB, chains",
        description="Check every backup (or one --source, or one --marker): each file the "
        "manifest lists has its size and SHA-256; each table has the manifest's row count; "
        "each table's Avro file holds the same rows as its DuckDB table (compared by "
        "content); an incremental's chain back to its full backup is present and intact, "
        "and resolves to the manifest's row counts. Prints one line per backup and a "
        "summary. Exit status 1 if any problem is found (each names the marker and the "
        "file), 0 if all are intact.",
    )
    verify.add_argument("--backups", required=True, type=Path, help="backups directory")
    verify.add_argument("--source", help="only this source (default: all)")
    verify.add_argument("--marker", type=int, metavar="ID", help="only the backup of this marker")
    verify.add_argument("--json", action="store_true", help="print JSON")

    prune = sub.add_parser(
        "prune",
        help="remove old backups, keeping the newest N and the chains they need",
        description="Keep the newest --keep-last backups of each source, and every older "
        "backup that a kept incremental needs (its chain back to its full backup); remove "
        "the rest. Says what it removed and what it kept for chains. Each backup is first "
        "renamed to a hidden .tmp- name, so no half-deleted backup is ever listed, then "
        "deleted. --dry-run only says what would be removed.",
    )
    prune.add_argument("--backups", required=True, type=Path, help="backups directory")
    prune.add_argument(
        "--keep-last", required=True, type=_positive_int, metavar="N", help="backups to keep"
    )
    prune.add_argument("--source", help="only this source (default: all)")
    prune.add_argument("--dry-run", action="store_true", help="remove nothing; say what would go")
    prune.add_argument("--json", action="store_true", help="print JSON")


def cmd_verify(args: argparse.Namespace) -> int:
    from consumers.catalog import CatalogError
    from consumers.verify import verify_catalog

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
    from consumers.retention import prune

    source = validate_source(args.source) if args.source else None
    plans = prune(args.backups, args.keep_last, source, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "sources": [p.as_json() for p in plans]}))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    if not plans:
        print(f"no backups under {args.backups}")
    for plan in plans:
        removed = ", ".join(str(b.marker_id) for b in reversed(plan.remove)) or "nothing"
        print(f"{plan.source}: {verb} {removed}")
        print(f"{plan.source}: kept the newest {', '.join(str(b.marker_id) for b in plan.newest)}")
        for kept, needers in sorted(plan.for_chains.items()):
            print(
                f"{plan.source}: kept {kept} for the chain of incremental "
                f"{', '.join(map(str, needers))}"
            )
        for broken in plan.broken:
            print(f"{plan.source}: warning: {broken}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cutline.demo import run_demo

    return run_demo(args.workdir, markers=args.markers, bootstrap=args.bootstrap_servers)


COMMANDS = {
    "kafka": cmd_kafka,
    "capture": cmd_capture,
    "mark": cmd_mark,
    "replicate": cmd_replicate,
    "replay": cmd_replay,
    "backups": cmd_backups,
    "query": cmd_query,
    "restore": cmd_restore,
    "diff": cmd_diff,
    "verify": cmd_verify,
    "prune": cmd_prune,
    "demo": cmd_demo,
}


# Commands that only look at existing backups: a --backups that is not there is a typo.
READS_BACKUPS = frozenset({"backups", "query", "restore", "diff", "verify", "prune"})


def _check_backups_exist(args: argparse.Namespace) -> None:
    path = getattr(args, "backups", None)
    if args.command not in READS_BACKUPS or path is None:
        return
    if not path.exists():
        raise ConfigError(f"--backups {path} does not exist: pass the directory `replicate` writes")
    if not path.is_dir():
        raise ConfigError(f"--backups {path} is not a directory: pass the backups directory")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("cutline.kafka.librdkafka").setLevel(
        logging.DEBUG if args.verbose else logging.CRITICAL
    )
    try:
        _check_backups_exist(args)
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        parser.exit(exc.exit_code, f"cutline {args.command}: error: {exc}\n")
    except CutlineError as exc:
        print(f"cutline {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KafkaException as exc:
        print(f"cutline {args.command}: Kafka error: {exc.args[0].str()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
