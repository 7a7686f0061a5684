"""Test harness: a primary, the oracle of its state at each cut, and cutline processes.

The oracle: a marker is committed inside a write transaction that first reads every
captured table, so the rows read are exactly the primary's content at the marker's
commit boundary, whatever other writers are doing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import fastavro

from backups.catalog import Backup, list_backups
from producers.markers import MarkerTicket, request_marker_in_transaction
from producers.sqlite_changelog import quote_identifier

CUTLINE = [sys.executable, "-m", "cutline.cli"]

SCHEMA = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL,
                       rate REAL, avatar BLOB);
CREATE TABLE transfers (id INTEGER PRIMARY KEY AUTOINCREMENT, src INTEGER, dst INTEGER,
                        amount INTEGER, note TEXT);
CREATE TABLE tags (account INTEGER, tag TEXT, PRIMARY KEY (account, tag)) WITHOUT ROWID;
CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT, payload BLOB);
"""
TABLES = ["accounts", "transfers", "tags", "events"]

Rows = dict[str, list[tuple]]


def wait_until(condition: Callable[[], Any], deadline_s: float, what: str, poll_s: float = 0.2):
    """Poll ``condition`` until truthy; fail the test saying what it waited for."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")


def table_rows(conn: Any, table: str, columns: list[str]) -> list[tuple]:
    cols = ",".join(quote_identifier(c) for c in columns)
    return sorted(
        conn.execute(f"SELECT {cols} FROM {quote_identifier(table)}").fetchall(), key=repr
    )


def primary_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({quote_identifier(table)})")]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, deadline_s: float = 40.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(deadline_s)
            except subprocess.TimeoutExpired:
                self._dump_stacks()
                self.popen.kill()
                self.popen.wait(10)
                raise AssertionError(
                    f"{self.name} did not stop within {deadline_s:.0f} s of SIGTERM:\n"
                    f"{self.tail(120)}"
                ) from None
        return self.popen.returncode

    def _dump_stacks(self, deadline_s: float = 5.0) -> None:
        """Ask a process that does not stop where it is: cutline prints every thread's
        stack on SIGUSR1 (into its log); wait until the dump is there, bounded."""
        with contextlib.suppress(OSError):
            self.popen.send_signal(signal.SIGUSR1)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and "most recent call first" not in self.tail(200):
            time.sleep(0.1)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Pipeline:
    bootstrap: str
    source: str
    root: Path
    processes: list[Process] = field(default_factory=list)
    oracle: dict[int, Rows] = field(default_factory=dict)
    tickets: dict[int, MarkerTicket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.db = self.root / "primary.sqlite"
        self.replica = self.root / "replica"
        self.backups = self.root / "backups"

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(10)

    # -- the primary ----------------------------------------------------------------------

    def create_primary(self, accounts: int = 40) -> None:
        conn = sqlite3.connect(self.db)
        conn.executescript(SCHEMA)
        conn.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
            [(i, f"owner-{i} ✓", 1000, i / 3, bytes([i % 256, 0, 255])) for i in range(accounts)],
        )
        conn.execute("INSERT INTO events (kind, payload) VALUES ('created', x'00ff')")
        conn.commit()
        conn.close()

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def state(self, conn: sqlite3.Connection) -> Rows:
        return {t: table_rows(conn, t, primary_columns(conn, t)) for t in TABLES}

    def cut(self, conn: sqlite3.Connection) -> MarkerTicket:
        """Commit a marker and record the primary's content at exactly that commit."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            state = self.state(conn)
            ticket = request_marker_in_transaction(conn, note="test oracle")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.oracle[ticket.marker_id] = state
        self.tickets[ticket.marker_id] = ticket
        return ticket

    # -- cutline processes ----------------------------------------------------------------

    def start(self, name: str, *args: str) -> Process:
        log = self.root / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        handle = open(log, "wb")  # noqa: SIM115 - the child owns it
        popen = subprocess.Popen(
            [*CUTLINE, *args], stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=self.root
        )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start_capture(self, partitions: int = 6, *extra: str) -> Process:
        """Start ``cutline capture`` and wait until it has installed on the primary."""
        process = self._start_capture(partitions, *extra)

        def installed() -> bool:
            self.check_alive()
            with sqlite3.connect(self.db) as conn:
                return bool(
                    conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE name = '_cutline_markers'"
                    ).fetchone()
                )

        wait_until(installed, 60, "capture to install its change log")
        return process

    def _start_capture(self, partitions: int, *extra: str) -> Process:
        return self.start(
            "capture",
            "capture",
            "--db",
            str(self.db),
            "--tables",
            ",".join(TABLES),
            "--partitions",
            str(partitions),
            "--source",
            self.source,
            "--bootstrap-servers",
            self.bootstrap,
            *extra,
        )

    def start_replicator(self, name: str, *extra: str) -> Process:
        return self.start(
            name,
            "replicate",
            "--replica",
            str(self.replica),
            "--backups",
            str(self.backups),
            "--source",
            self.source,
            "--bootstrap-servers",
            self.bootstrap,
            *extra,
        )

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*CUTLINE, *args], capture_output=True, text=True, timeout=timeout_s, cwd=self.root
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.processes)

    # -- backups --------------------------------------------------------------------------

    def published(self) -> dict[int, Backup]:
        return {b.marker_id: b for b in list_backups(self.backups, self.source)}

    def check_alive(self) -> None:
        """Fail at once, with its log, if a cutline process died."""
        for process in self.processes:
            if process.popen.poll() is not None and process.popen.returncode != 0:
                raise AssertionError(
                    f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}"
                )

    def wait_for_backups(
        self, marker_ids: list[int], deadline_s: float = 120.0
    ) -> dict[int, Backup]:
        def done() -> bool:
            self.check_alive()
            return set(marker_ids) <= set(self.published())

        try:
            wait_until(
                done,
                deadline_s,
                f"backups {sorted(marker_ids)} (have {sorted(self.published())})",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        return self.published()


def backup_rows(backup: Backup) -> Rows:
    """Each table of a backup as read from its DuckDB file, columns in primary order."""
    out: Rows = {}
    conn = duckdb.connect(str(backup.duckdb_path), read_only=True)
    try:
        for table, info in backup.tables.items():
            columns = [c["name"] for c in info["columns"]]
            out[table] = table_rows(conn, table, columns)
    finally:
        conn.close()
    return out


def avro_rows(backup: Backup) -> tuple[Rows, dict[str, dict[str, str]]]:
    """Each table as read from its Avro container file, plus each file's header metadata."""
    rows: Rows = {}
    headers: dict[str, dict[str, str]] = {}
    for table, info in backup.tables.items():
        fields = [c["avro_field"] for c in info["columns"]]
        with open(backup.avro_path(table), "rb") as f:
            reader = fastavro.reader(f)
            headers[table] = {
                k: (v.decode() if isinstance(v, bytes) else v) for k, v in reader.metadata.items()
            }
            rows[table] = sorted((tuple(r[name] for name in fields) for r in reader), key=repr)
    return rows, headers


def manifest_json(backup: Backup) -> dict[str, Any]:
    return json.loads((backup.path / "manifest.json").read_text())
