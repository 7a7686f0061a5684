"""``cutline demo``: the whole pipeline on a small live workload, as a user would run it.

A bank primary (accounts and transfers) takes transfers continuously. Transfers move
money between accounts that live in different partitions, so the total balance is the
same at every instant of the primary, and a backup that is not an exact cut would show a
different total. The demo runs capture and two replication workers as real processes,
cuts markers while writes go on, then lists the backups, queries an older one, verifies
them, diffs two, follows the history with ``query --all`` and restores the oldest.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from backups.catalog import list_backups
from backups.readers.query import run_query
from cutline.broker.provision import provide_cluster
from cutline.directories import DEMO_STAMP, demo_workdir
from cutline.errors import CutlineError, DeadlineExceeded
from cutline.kafka_config import env_for_children, resolve_client_settings
from cutline.settings import ENV_BOOTSTRAP, resolve_kafka
from producers.markers import request_marker
from producers.sqlite_changelog import connect

ACCOUNTS = 20
OPENING_BALANCE = 1_000


def _say(message: str = "") -> None:
    print(message, flush=True)


def _create_primary(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL,
                               balance INTEGER NOT NULL);
        CREATE TABLE transfers (id INTEGER PRIMARY KEY AUTOINCREMENT, src INTEGER NOT NULL,
                                dst INTEGER NOT NULL, amount INTEGER NOT NULL, at TEXT NOT NULL);
        """
    )
    conn.executemany(
        "INSERT INTO accounts VALUES (?, ?, ?)",
        [(i, f"customer-{i:02d}", OPENING_BALANCE) for i in range(1, ACCOUNTS + 1)],
    )
    conn.commit()
    conn.close()


def _transfers(db: Path, stop: threading.Event, counter: list[int]) -> None:
    """Move money between random accounts, one transaction per transfer."""
    rng = random.Random(42)
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    while not stop.is_set():
        src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
        amount = rng.randint(1, 100)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, src))
        conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, dst))
        conn.execute(
            "INSERT INTO transfers (src, dst, amount, at) VALUES (?, ?, ?, ?)",
            (src, dst, amount, datetime.now(UTC).isoformat()),
        )
        conn.execute("COMMIT")
        counter[0] += 1
        time.sleep(0.002)
    conn.close()


def named_cluster(
    bootstrap: str | None, config_file: Path | None, options: Sequence[str]
) -> str | None:
    """The cluster the user named (with its client settings), or None to provide one."""
    client = resolve_client_settings(config_file, options)
    if bootstrap or client.properties.get("bootstrap.servers") or os.environ.get(ENV_BOOTSTRAP):
        return resolve_kafka(bootstrap, config_file, options)
    return None


class _Processes:
    """The demo's cutline processes; always stopped, with a deadline, on the way out."""

    def __init__(self, workdir: Path, client: Mapping[str, str]):
        self.workdir = workdir
        # the children get the estate's client settings through the environment
        self.env = {**os.environ, **env_for_children(client)}
        self.running: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, *args: str) -> None:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as handle:
            popen = subprocess.Popen(
                [sys.executable, "-m", "cutline.cli", *args],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.running.append((name, popen, log))
        _say(f"  started {name}: cutline {' '.join(args)}  (log: {log})")

    def check(self) -> None:
        for name, popen, log in self.running:
            if popen.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise CutlineError(f"{name} exited with status {popen.returncode}:\n{tail}")

    def stop(self, deadline_s: float = 40.0) -> None:
        for _, popen, _ in self.running:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        end = time.monotonic() + deadline_s
        for name, popen, _ in self.running:
            try:
                popen.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                _say(f"  {name} did not stop within {deadline_s:.0f} s; killing it")
                popen.kill()
                popen.wait(10)


def _table(columns: list[str], rows: list[tuple]) -> None:
    widths = [max(len(c), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    _say("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        _say("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))


def run_demo(
    workdir: Path,
    *,
    markers: int = 4,
    bootstrap: str | None = None,
    log_args: tuple[str, ...] = (),  # --log-format/--log-level for capture and replicate
) -> int:
    workdir = demo_workdir(workdir)
    run = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    source = f"demo-{run}"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / DEMO_STAMP).write_text("made by cutline demo; the next demo may delete this\n")
    db, replica, backups = workdir / "bank.sqlite", workdir / "replica", workdir / "backups"

    _say("== 1. Kafka")
    cluster = provide_cluster(bootstrap, progress=lambda m: _say(f"  {m}"))
    servers = cluster.bootstrap_servers
    _say(f"  using the {cluster.kind} cluster at {servers}")
    processes = _Processes(workdir, getattr(servers, "properties", {}))
    stop_writes = threading.Event()
    try:
        _say("\n== 2. A live primary: SQLite bank with accounts and transfers")
        _create_primary(db)
        _say(f"  {db}: {ACCOUNTS} accounts, {ACCOUNTS * OPENING_BALANCE} in total")

        _say("\n== 3. Capture and two replication workers (a consumer group)")
        kafka = ["--bootstrap-servers", servers, "--source", source, *log_args]
        processes.start(
            "capture",
            "capture", "--db", str(db), "--tables", "accounts,transfers", "--partitions", "4",
            *kafka,
        )  # fmt: skip
        for name in ("replicate-a", "replicate-b"):
            processes.start(
                name, "replicate", "--replica", str(replica), "--backups", str(backups),
                "--full-every", "2", *kafka,
            )  # fmt: skip
        _wait_for_capture(db, processes)

        _say(f"\n== 4. Transfers keep committing while {markers} markers are cut")
        counter = [0]
        writer = threading.Thread(target=_transfers, args=(db, stop_writes, counter))
        writer.start()
        conn = connect(db)
        tickets = []
        for _ in range(markers):
            time.sleep(1.5)
            ticket = request_marker(conn, note="demo")
            tickets.append(ticket)
            _say(f"  cutline mark -> {ticket.as_json()}  ({counter[0]} transfers so far)")
        time.sleep(1.0)
        stop_writes.set()
        writer.join(30)
        conn.close()

        _say("\n== 5. Waiting for every backup to be published")
        wanted = {t.marker_id for t in tickets}
        _wait(lambda: wanted <= {b.marker_id for b in list_backups(backups, source)},
              processes, 120, f"backups of markers {sorted(wanted)}")  # fmt: skip
    finally:
        stop_writes.set()
        processes.stop()
        if cluster.owned:
            _say("  stopping the Kafka cluster this demo started")
            cluster.stop()

    found = list_backups(backups, source)
    _say(f"\n== 6. cutline backups --backups {backups}")
    _table(
        ["marker", "T1 (primary as of)", "T2 (written)", "kind", "accounts", "transfers"],
        [(b.marker_id, b.t1, b.t2, b.kind, b.tables["accounts"]["rows"],
          b.tables["transfers"]["rows"]) for b in found],
    )  # fmt: skip
    _say("  (--full-every 2: every other backup is incremental, holding only what changed)")

    _say("\n== 7. Every backup is an exact cut: money is conserved in each")
    totals = []
    for backup in found:
        _, rows = run_query(backup, "SELECT sum(balance) FROM accounts")
        totals.append((backup.marker_id, rows[0][0]))
    _table(["marker", "sum(balance)"], totals)
    consistent = all(total == ACCOUNTS * OPENING_BALANCE for _, total in totals)

    oldest = found[0]
    sql = "SELECT id, owner, balance FROM accounts ORDER BY balance DESC LIMIT 3"
    _say(f'\n== 8. cutline query --backups {backups} --source {source} --as-of {oldest.t1} "{sql}"')
    columns, rows = run_query(oldest, sql)
    _table(columns, rows)
    _say(f"  (the richest accounts at {oldest.t1}, read from backup {oldest.marker_id},")
    _say("   written later at T2 while the primary kept serving transfers)")

    newest = found[-1]
    where = ["--backups", str(backups), "--source", source]
    _say(f"\n== 9. cutline verify {' '.join(where)}")
    verified = _cli("verify", *where)
    pair = f"{oldest.marker_id} {newest.marker_id}"
    _say(f"\n== 10. cutline diff {' '.join(where)} --table accounts {pair}")
    _cli("diff", *where, "--table", "accounts", str(oldest.marker_id), str(newest.marker_id),
         lines=6)  # fmt: skip
    history = "SELECT marker_id, t1, count(*) AS transfers FROM transfers GROUP BY ALL ORDER BY 1"
    _say(f'\n== 11. cutline query {" ".join(where)} --all "{history}"')
    _cli("query", *where, "--all", history)
    restored = workdir / f"restored-marker-{oldest.marker_id}.sqlite"
    _say(f"\n== 12. cutline restore {' '.join(where)} --marker {oldest.marker_id} --to {restored}")
    restore_ok = _cli("restore", *where, "--marker", str(oldest.marker_id), "--to", str(restored),
                      lines=0)  # fmt: skip
    with sqlite3.connect(restored) as conn:
        total, count = conn.execute(
            "SELECT (SELECT sum(balance) FROM accounts), (SELECT count(*) FROM transfers)"
        ).fetchone()
    _say(f"  {restored.name}: a SQLite primary as of {oldest.t1}: {count} transfers, total {total}")
    consistent = consistent and verified and restore_ok and total == ACCOUNTS * OPENING_BALANCE

    _say(f"\nFiles are in {workdir}. Try:")
    _say(f"  .venv/bin/cutline backups --backups {backups}")
    _say(
        f"  .venv/bin/cutline query --backups {backups} --source {source} "
        f'--marker {found[-1].marker_id} "SELECT count(*) FROM transfers"'
    )
    if not consistent:
        _say("\nFAILED: a backup's total differs from the opening total")
        return 1
    _say(f"\nOK: {len(found)} consistent backups, total {ACCOUNTS * OPENING_BALANCE} in each")
    return 0


def _cli(*args: str, lines: int = 20) -> bool:
    """Run one cutline command as a user would; show its first ``lines`` lines of output."""
    done = subprocess.run(
        [sys.executable, "-m", "cutline.cli", *args], capture_output=True, text=True, timeout=120
    )
    shown = done.stdout.splitlines()
    for line in shown[:lines]:
        _say(f"  {line}")
    if len(shown) > lines > 0:
        _say(f"  ... ({len(shown) - lines} more lines)")
    if done.returncode != 0:
        _say(f"  exit status {done.returncode}: {done.stderr.strip()}")
    return done.returncode == 0


def _wait(condition, processes: _Processes, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        processes.check()
        if time.monotonic() > end:
            raise DeadlineExceeded(f"waited {deadline_s:.0f} s for {what}")
        time.sleep(0.2)


def _wait_for_capture(db: Path, processes: _Processes) -> None:
    def installed() -> bool:
        with sqlite3.connect(db) as conn:
            return bool(
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = '_cutline_markers'"
                ).fetchone()
            )

    _wait(installed, processes, 60, "capture to install on the primary")
