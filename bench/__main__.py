"""``python -m bench``: measure cutline against bare Kafka and DuckDB on one broker, one run.

Prints one JSON document on stdout; progress goes to stderr. Phases, in order, all under a
source name unique to the run (runs never collide on a shared broker):

1. capture: ``Capture`` publishing a pre-filled change log vs a bare producer;
2. replication: bare consume-and-decode, then a ``Replicator`` applying the same topic;
3. markers: capture, a writer and the replicator run while markers are cut;
4. backup: ``write_backup`` over held shards vs DuckDB loading an Arrow table;
5. incremental: a full backup, 1 % of rows changed, then an incremental: size and time;
6. digest: the primary's and the replica's table digest, rows/s by table size;
7. scale (``bench.scale``): per size (default 100k and 1M rows), ``cutline capture`` and
   ``cutline replicate`` as processes: initial load, pause per marker, backup seconds and
   bytes (full and incremental), peak RSS of replicate, ratios to DuckDB-from-Arrow;
8. write cost (``bench.write_cost_phase``): the primary's update throughput with capture
   installed ÷ without, 1 and 100 updates per transaction.

``--scale 100k,1M,10M`` runs phases 7 and 8 only, at those sizes.

Kafka: ``--bootstrap-servers``, else ``$KAFKA_BOOTSTRAP_SERVERS``, else a cluster from
``cutline.broker.provision.provide_cluster`` (stopped at the end if this run started it).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.backup_bench import backup_phase
from bench.capture_bench import bare_producer_phase, capture_phase
from bench.common import PARTITIONS, BenchError, build_primary, log, read_topic, timed
from bench.digest_bench import SIZES_FULL, SIZES_QUICK, digest_phase
from bench.incremental_bench import incremental_phase
from bench.replication_bench import (
    bare_consumer_phase,
    marker_phase,
    replication_json,
    replication_phase,
)
from bench.scale import DEFAULT_SIZES, scale_phase, scale_sources
from bench.write_cost_phase import write_cost_phase
from cutline.errors import CutlineError
from cutline.kafka_clients import make_admin, wait_for_cluster
from cutline.settings import ENV_BOOTSTRAP, Topics

QUICK = {"ops": 20_000, "markers": 5, "rows": 20_000, "incremental_rows": 100_000}
FULL = {"ops": 200_000, "markers": 20, "rows": 200_000, "incremental_rows": 1_000_000}
QUICK_SCALE = [2_000]
QUICK_WRITE_COST = {"writes": 2_000, "runs": 3}
FULL_WRITE_COST = {"writes": 20_000, "runs": 5}


def parse_sizes(text: str) -> list[int]:
    """``100000,1M,10m,5k`` -> [100000, 1000000, 10000000, 5000]; at least 100 rows each."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        factor = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        digits = part[:-1] if factor > 1 else part
        try:
            size = int(float(digits) * factor)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--scale: {part!r} is not a row count (write e.g. 100000,1M)"
            ) from None
        if size < 100:
            raise argparse.ArgumentTypeError(f"--scale: {size} rows is too few (at least 100)")
        sizes.append(size)
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ops", type=int, help=f"captured operations (default {FULL['ops']})")
    parser.add_argument("--markers", type=int, help=f"markers to cut (default {FULL['markers']})")
    parser.add_argument("--rows", type=int, help=f"rows in the backup (default {FULL['rows']})")
    parser.add_argument(
        "--incremental-rows",
        type=int,
        help=f"rows of the incremental phase (default {FULL['incremental_rows']})",
    )
    parser.add_argument(
        "--digest-sizes",
        help="comma-separated table sizes of the digest phase (default "
        f"{','.join(map(str, SIZES_FULL))}; --quick: {','.join(map(str, SIZES_QUICK))})",
    )
    parser.add_argument(
        "--scale",
        type=parse_sizes,
        metavar="N[,N...]",
        help="run only the scale and write-cost phases, at these table sizes (100k, 1M, 10M; "
        f"default run: {','.join(str(s) for s in DEFAULT_SIZES)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small run: defaults become {QUICK}, scale {QUICK_SCALE}, write cost "
        f"{QUICK_WRITE_COST}",
    )
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help=f"Kafka to use (default: ${ENV_BOOTSTRAP}, else provision one)",
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the primary, replica and backups"
    )
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.scale_only = args.scale is not None
    if args.scale is None:
        args.scale = QUICK_SCALE if args.quick else list(DEFAULT_SIZES)
    args.write_cost = QUICK_WRITE_COST if args.quick else FULL_WRITE_COST
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.digest_sizes is None:
        args.digest_sizes = SIZES_QUICK if args.quick else SIZES_FULL
    else:
        try:
            args.digest_sizes = tuple(int(n) for n in args.digest_sizes.split(",") if n.strip())
        except ValueError:
            parser.error(
                "--digest-sizes takes whole numbers separated by commas, e.g. 10000,100000"
            )
    if args.ops < 200 or args.markers < 1 or args.rows < 1 or args.incremental_rows < 100:
        parser.error(
            "--ops must be at least 200, --markers and --rows at least 1, "
            "--incremental-rows at least 100"
        )
    return args


def provide_broker(explicit: str | None) -> tuple[str, str, Callable[[], None]]:
    """Bootstrap servers, how they were found, and how to stop the broker afterwards."""
    chosen = explicit or os.environ.get(ENV_BOOTSTRAP)
    if chosen:
        return chosen, "external", lambda: None
    from cutline.broker.provision import provide_cluster  # only when we must start one

    cluster = provide_cluster(None, brokers=1, progress=log)
    return cluster.bootstrap_servers, str(getattr(cluster, "kind", "provided")), cluster.stop


def bench_topics(source: str) -> list[str]:
    """Every topic a run creates; the bare producer's topic is last."""
    t = Topics(source)
    return [t.ops, t.capture_position, t.control, t.dead_letter, f"{t.ops}.bare"]


def delete_topics(bootstrap: str, topics: list[str], deadline_s: float = 20.0) -> None:
    """Best effort: bench topics keep data forever (retention -1), so drop them.

    Called once every bench client is gone: a live client's metadata refresh can recreate
    a deleted topic on brokers that auto-create topics.
    """
    gc.collect()  # destroy unreferenced librdkafka clients now, not at interpreter exit
    try:
        admin = make_admin(bootstrap)
        for future in admin.delete_topics(topics, operation_timeout=10).values():
            with contextlib.suppress(Exception):
                future.result(timeout=15)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            left = set(topics) & set(admin.list_topics(timeout=10).topics)
            if not left:
                return
            time.sleep(0.5)
        log(f"bench topics still present after deletion: {sorted(left)}")
    except Exception as exc:
        log(f"could not delete bench topics: {exc}")


def run(args: argparse.Namespace, bootstrap: str, workdir: Path, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {} if args.scale_only else run_phases(args, bootstrap, workdir, source)
    log(f"scale phase at {args.scale} rows")
    out["scale"] = scale_phase(bootstrap, workdir, source, args.scale)
    log(f"write cost: {args.write_cost}")
    out["write_cost"] = write_cost_phase(workdir / "write-cost", **args.write_cost)
    return out


def run_phases(
    args: argparse.Namespace, bootstrap: str, workdir: Path, source: str
) -> dict[str, Any]:
    """Phases 1-6 (every run but ``--scale``)."""
    topics = Topics(source)
    bare_topic = bench_topics(source)[-1]
    out: dict[str, Any] = {}
    ops = args.ops
    with contextlib.ExitStack() as cleanup:
        log(f"source {source}: building a primary with {ops} changes in {workdir}")
        workload = build_primary(workdir / "primary.sqlite", source, ops)

        capture, result = capture_phase(bootstrap, workload, deadline_s=60 + ops / 500)
        cleanup.callback(capture.close)
        records = read_topic(bootstrap, topics.ops, PARTITIONS, deadline_s=60 + ops / 2000)
        result.bare_s = bare_producer_phase(
            bootstrap, records, bare_topic, deadline_s=60 + ops / 2000
        )
        del records
        out["capture"] = result.as_json()

        bare_s, bare_first_s = bare_consumer_phase(bootstrap, workload, 60 + ops / 2000)
        running, rep_s, startup_s = replication_phase(
            bootstrap, workload, workdir, deadline_s=60 + ops / 300
        )
        cleanup.callback(running.shutdown)
        out["replication"] = replication_json(workload, rep_s, startup_s, bare_s, bare_first_s)

        log(f"cutting {args.markers} markers under load")
        markers = marker_phase(capture, running, workload, workdir, args.markers)
        out.update(markers.as_json())

    log(f"backup of {args.rows} rows")
    out["backup"] = backup_phase(workdir, source, args.rows)
    log(f"incremental backup of {args.incremental_rows} rows, 1 % changed")
    out["incremental"] = incremental_phase(workdir, source, args.incremental_rows)
    log(f"digest of tables of {', '.join(map(str, args.digest_sizes))} rows")
    out["digest"] = digest_phase(workdir, source, args.digest_sizes)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("cutline.kafka.librdkafka").setLevel(logging.CRITICAL)
    # Last resort: every wait has its own deadline, but if something still wedges (a native
    # call), dump every thread's stack and exit instead of hanging forever.
    faulthandler.dump_traceback_later(
        1800
        + args.ops / 100
        + (args.rows + args.incremental_rows) / 1000
        + args.markers * 90
        + sum(args.scale) / 200,
        exit=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="cutline-bench-"))
    stop_broker: Callable[[], None] = lambda: None  # noqa: E731
    try:
        with timed() as total:
            bootstrap, kind, stop_broker = provide_broker(args.bootstrap_servers)
            brokers = wait_for_cluster(bootstrap, deadline_s=30.0)
            log(f"Kafka at {bootstrap} ({kind}, {brokers} broker(s))")
            source = f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            try:
                results = run(args, bootstrap, workdir, source)
            finally:
                topics = bench_topics(source)
                for scale_source in scale_sources(source, args.scale):
                    topics += bench_topics(scale_source)[:-1]
                delete_topics(bootstrap, topics)
        document = {
            "broker": {"bootstrap_servers": bootstrap, "kind": kind, "brokers": brokers},
            "run": {
                "source": source,
                "ops": args.ops,
                "markers": args.markers,
                "rows": args.rows,
                "quick": args.quick,
                "scale": args.scale,
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "elapsed_s": round(total.elapsed, 1),
            },
            **results,
        }
    except (BenchError, CutlineError) as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        with contextlib.suppress(Exception):
            stop_broker()
        if args.keep_workdir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        faulthandler.cancel_dump_traceback_later()
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
