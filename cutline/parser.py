"""The ``cutline`` argument parser: every command, option and ``--help`` text.

Kept apart from the commands (``cutline.cli``) so that ``--help`` is one place to read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cutline.config_file import add_config_option
from cutline.digest_options import add_digest_every, add_digest_timeout
from cutline.parser_observe import add_log_options, add_metrics_address, add_observe_commands

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
  cutline query --backups ./backups --all "SELECT marker_id, sum(balance) FROM accounts GROUP BY 1"
  cutline verify --backups ./backups
  cutline restore --backups ./backups --as-of 2026-11-25T10:15:00Z --to restored.sqlite

Kafka: --bootstrap-servers, else $KAFKA_BOOTSTRAP_SERVERS, else the broker recorded by
`cutline kafka start`. A secured cluster: --kafka-config client.properties, -X key=value,
or CUTLINE_KAFKA_<KEY> variables (-X > environment > file).
"""


def _add_kafka(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka to use (default: bootstrap.servers of the client settings, else "
        "$KAFKA_BOOTSTRAP_SERVERS, else the broker recorded by `cutline kafka start`)",
    )
    p.add_argument(
        "--kafka-config",
        type=Path,
        metavar="FILE",
        help="the estate's client.properties (Java style, as for the Kafka CLIs' "
        "--command-config or kcat -F): security.protocol, sasl.*, ssl.* ... "
        "(default: $CUTLINE_KAFKA_CONFIG)",
    )
    p.add_argument(
        "-X",
        dest="kafka_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one librdkafka client setting, repeatable; it wins over $CUTLINE_KAFKA_<KEY> "
        "(e.g. CUTLINE_KAFKA_SASL_PASSWORD), which wins over --kafka-config. A value @PATH "
        "is read from that file, so secrets stay off the command line",
    )
    p.add_argument(
        "--topic-template",
        metavar="TEMPLATE",
        help="how the source's topics, group ids and transactional id are named, with "
        "{source} and {kind} (ops, capture, control, dlq, replicate, replay); give every "
        "command of a source the same one (default: $CUTLINE_TOPIC_TEMPLATE, else "
        "cutline.{source}.{kind})",
    )


def _add_source(p: argparse.ArgumentParser, *, reads_backups: bool = False) -> None:
    p.add_argument(
        "--source",
        default=None if reads_backups else "default",
        help="name of the captured primary; it names the topics cutline.<source>.* and the "
        "backup folders (default: "
        + ("the only source under --backups)" if reads_backups else "%(default)s)"),
    )


def _add_lock_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lock-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for an application's write transaction on the primary to end "
        "before giving up (default: %(default)s)",
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


def _duration(text: str) -> float:
    from backups.retention import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_retention(p: argparse.ArgumentParser, verb: str) -> None:
    """``--keep-last`` / ``--keep-within``, shared by ``prune`` and ``replicate``."""
    p.add_argument(
        "--keep-last",
        type=_positive_int,
        metavar="N",
        help=f"{verb} the newest N backups of the source (and the chains they need)",
    )
    p.add_argument(
        "--keep-within",
        type=_duration,
        metavar="DURATION",
        help=f"{verb} the backups whose T1 is within DURATION (e.g. 7d, 12h, 30m) of the "
        "newest one's; with --keep-last too, a backup either keeps stays",
    )


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
    start.add_argument(
        "--fresh",
        action="store_true",
        help="DELETE the local cluster's data (every topic and offset) and start a new cluster; "
        "without it, a cluster that died is restarted on its data",
    )
    start.add_argument(
        "--secure",
        action="store_true",
        help="a separate single-node cluster as estates run them: SASL_SSL (SCRAM-SHA-512) "
        "and mutual-TLS listeners, ACLs enforced; prints the path of an admin "
        "client.properties to pass as --kafka-config",
    )
    stop = ksub.add_parser("stop", help="stop the local broker started by `cutline kafka start`")
    stop.add_argument("--secure", action="store_true", help="stop the secured cluster instead")

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
    add_digest_every(capture)
    capture.add_argument(
        "--new-incarnation",
        action="store_true",
        help="this database is the source's primary restored from a backup: capture it as "
        "the source's next incarnation (its content replaces the replica's; marker ids go on "
        "after the last one published)",
    )
    capture.add_argument(
        "--snapshot-chunk-rows",
        type=_positive_int,
        default=20_000,
        metavar="N",
        help="rows per chunk of a table's initial snapshot, read while applications write "
        "(default 20000); a table of at most N rows is copied in the install's transaction",
    )
    _add_lock_timeout(capture)
    _add_kafka(capture)
    _add_source(capture)
    add_metrics_address(capture)
    add_log_options(capture)

    mark = sub.add_parser(
        "mark",
        help="cut a consistency point now; prints {marker_id, t1}",
        description="Commit a marker request on the primary. Its place among the primary's "
        "commits is exact: the backup of this marker holds every change committed before it "
        "and none after. Needs a running `cutline capture` to reach Kafka.",
    )
    mark.add_argument("--db", required=True, type=Path, help="the SQLite primary")
    add_digest_every(mark)
    _add_lock_timeout(mark)

    sources = sub.add_parser(
        "sources",
        help="list the sources capturing a SQLite primary, or drop one for good",
        description="Several sources may capture one database, each with its own cursor; the "
        "change log is trimmed only past what every source has published. A source that is "
        "gone for good holds the log back: drop it with --drop SOURCE.",
    )
    sources.add_argument("--db", required=True, type=Path, help="the SQLite primary")
    sources.add_argument("--drop", metavar="SOURCE", help="forget this source on the database")
    sources.add_argument("--json", action="store_true", help="print JSON")
    _add_lock_timeout(sources)

    migrate = sub.add_parser(
        "migrate",
        help="change the schema of a captured primary (e.g. DROP COLUMN); capture follows",
        description="Run SQL (one or more statements, typically ALTER TABLE) on the primary in "
        "ONE write transaction: capture's triggers on the captured tables it names are "
        "dropped first (SQLite refuses DROP COLUMN while a trigger reads the column), the "
        "statements run, and capture is re-installed for every changed table, whose new "
        "definition and content then flow to the replicas. All or nothing. Any DDL may run "
        "this way; ADD/RENAME COLUMN and migrations also work when run by the application.",
    )
    migrate.add_argument("--db", required=True, type=Path, help="the SQLite primary")
    migrate.epilog = (
        'Prints {"reinstalled": [tables], "no_longer_captured": [tables]}. A captured table the '
        "SQL names that no longer exists afterwards (e.g. 'DROP TABLE IF EXISTS t') is no "
        "longer captured."
    )
    migrate.add_argument("sql", help='e.g. "ALTER TABLE accounts DROP COLUMN avatar"')

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
    add_digest_timeout(replicate)
    _add_retention(replicate, "after each backup it publishes, keep")
    _add_kafka(replicate)
    _add_source(replicate)
    add_metrics_address(replicate)
    add_log_options(replicate)

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
    add_digest_timeout(replay)
    _add_kafka(replay)
    _add_source(replay)
    add_log_options(replay)

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
    _add_source(query, reads_backups=True)

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
    _add_source(restore, reads_backups=True)

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
    _add_source(diff, reads_backups=True)

    _add_retention_commands(sub)
    add_observe_commands(sub, _add_kafka, _add_source)

    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline on a small live workload (what `make demo` runs)",
    )
    demo.add_argument("--workdir", type=Path, default=Path("demo-data"), help="where to put files")
    demo.add_argument("--markers", type=_positive_int, default=4, help="markers to cut")
    _add_kafka(demo)
    add_log_options(demo)
    add_config_option(parser)  # last: every command is there to get it
    return parser


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
    _add_retention(prune, "keep")
    prune.add_argument("--source", help="only this source (default: all)")
    prune.add_argument("--dry-run", action="store_true", help="remove nothing; say what would go")
    prune.add_argument("--json", action="store_true", help="print JSON")
