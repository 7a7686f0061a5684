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
    _add_kafka(replicate)
    _add_source(replicate)

    backups = sub.add_parser("backups", help="list backups, each as the primary at its T1")
    backups.add_argument("--backups", required=True, type=Path, help="backups directory")
    backups.add_argument("--source", help="only this source (default: all)")
    backups.add_argument("--json", action="store_true", help="print JSON")

    query = sub.add_parser(
        "query",
        help="SQL (DuckDB) over the backup that is the primary at a point in time",
        description="Run read-only SQL against one backup: by --marker, by --as-of (the "
        "newest backup with T1 <= that time), or the newest backup. Tables have the primary's "
        "names; _cutline_backup holds the backup's marker, T1 and T2.",
    )
    query.add_argument("--backups", required=True, type=Path, help="backups directory")
    which = query.add_mutually_exclusive_group()
    which.add_argument("--marker", type=int, metavar="ID", help="the backup of this marker")
    which.add_argument("--as-of", metavar="ISO-8601", help="the primary as of this time")
    query.add_argument("--json", action="store_true", help="print a JSON list of row objects")
    query.add_argument("sql", help="the SQL statement")
    _add_source(query)

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
    )
    replicator = Replicator(config, progress=_log_progress)
    stop = _install_stop_signals()
    replicator.open()
    replicator.run(stop)
    _log_progress(replicator.status_line())
    return 0


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
            ", ".join(f"{t}={n}" for t, n in b.summary()["tables"].items()),
        )
        for b in found
    ]
    _print_table(["source", "marker", "T1 (primary as of)", "T2 (written)", "rows"], rows)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from consumers.catalog import select_backup
    from consumers.query import run_query

    backup = select_backup(
        args.backups, validate_source(args.source), marker_id=args.marker, as_of=args.as_of
    )
    columns, rows = run_query(backup, args.sql)
    if args.json:
        print(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=_json_value))
    else:
        _log_progress(f"backup {backup.marker_id}: the primary as of {backup.t1}")
        _print_table(columns, rows)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cutline.demo import run_demo

    return run_demo(args.workdir, markers=args.markers, bootstrap=args.bootstrap_servers)


COMMANDS = {
    "kafka": cmd_kafka,
    "capture": cmd_capture,
    "mark": cmd_mark,
    "replicate": cmd_replicate,
    "backups": cmd_backups,
    "query": cmd_query,
    "demo": cmd_demo,
}


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
