"""The fault run's primary and its cutline processes: the integration pipeline, widened.

:class:`FaultPipeline` is :class:`tests.integration.pipeline.Pipeline` (reused, not copied)
with what the fault harness adds: the extra tables the REPLACE and cascade statement kinds
write (``FAULT_SCHEMA``), the layout of every table at each cut (schema changes run
mid-run, so the oracle's columns differ from cut to cut), per-process environments
(failpoints), expected deaths, and ``cutline mark`` run as a user runs it, so the harness
sees it wait out a long write transaction.

A second source on the same database is a second :class:`FaultPipeline` sharing the
primary's file (``db``) with its own source name, tables, replica and backups.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from cutline.failpoints import ENV as FAILPOINTS_ENV
from producers.markers import MarkerTicket
from tests.faults.statements import FAULT_SCHEMA, FAULT_TABLES
from tests.integration.pipeline import (
    CUTLINE,
    TABLES,
    Pipeline,
    Process,
    Rows,
    primary_columns,
    table_rows,
)

KILLED = -signal.SIGKILL
ALL_TABLES = [*TABLES, *FAULT_TABLES]
MARK_WAITING = "waiting for the primary's write lock"  # what capture and mark log meanwhile

Layout = dict[str, list[str]]  # table -> its columns, in the primary's order


class FaultPipeline(Pipeline):
    """The integration pipeline on the fault schema, with per-process environments."""

    def __init__(self, *args, tables: list[str] | None = None, **kwargs):
        """``tables``: what capture captures (default: the integration pipeline's four);
        with any of ``FAULT_TABLES`` among them the primary gets ``FAULT_SCHEMA`` too."""
        super().__init__(*args, **kwargs)
        self.tables = list(tables or TABLES)
        self.killed: set[int] = set()  # pids that died on purpose
        self.layouts: dict[int, Layout] = {}  # marker id -> each table's columns at its cut
        self._layout: Layout = {}

    # -- the primary ----------------------------------------------------------------------

    def create_primary(self, accounts: int = 40) -> None:
        super().create_primary(accounts)
        if not set(FAULT_TABLES) & set(self.tables):
            return
        conn = sqlite3.connect(self.db)
        try:
            conn.executescript(FAULT_SCHEMA)
        finally:
            conn.close()

    def layout(self, conn: sqlite3.Connection) -> Layout:
        return {t: primary_columns(conn, t) for t in self.tables}

    def state(self, conn: sqlite3.Connection) -> Rows:
        """The captured tables' rows, each in its layout now (kept for the cut recording it)."""
        self._layout = self.layout(conn)
        return {t: table_rows(conn, t, columns) for t, columns in self._layout.items()}

    def cut(self, conn: sqlite3.Connection) -> MarkerTicket:
        ticket = super().cut(conn)
        self.layouts[ticket.marker_id] = self._layout
        return ticket

    def record_marker(self, marker_id: int, conn: sqlite3.Connection) -> None:
        """The oracle for a marker someone else committed; nothing may have been written
        to the captured tables since (the caller's own writes are the only ones)."""
        self.oracle[marker_id] = self.state(conn)
        self.layouts[marker_id] = self._layout

    def start_mark(self, name: str) -> tuple[subprocess.Popen, Path]:
        """``cutline mark`` on the primary, as a user runs it; its log is the second value."""
        log = self.root / f"{name}.log"
        with open(log, "wb") as handle:
            popen = subprocess.Popen(
                [*CUTLINE, "mark", "--db", str(self.db)],
                stdout=subprocess.PIPE,
                stderr=handle,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                cwd=self.root,
            )
        return popen, log

    @staticmethod
    def finish_mark(popen: subprocess.Popen, log: Path, deadline_s: float = 90.0) -> int:
        """Wait for a ``cutline mark`` to exit 0 and return the marker id it printed."""
        try:
            out, _ = popen.communicate(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)
            raise AssertionError(f"cutline mark did not finish in {deadline_s:.0f} s") from None
        if popen.returncode != 0:
            raise AssertionError(
                f"cutline mark exited with {popen.returncode}: {log.read_text(errors='replace')}"
            )
        (line,) = [x for x in out.decode().splitlines() if x.startswith("{")]
        return int(json.loads(line)["marker_id"])

    @staticmethod
    def waits_logged(log: Path) -> bool:
        return MARK_WAITING in log.read_text(errors="replace")

    # -- processes ------------------------------------------------------------------------

    def _start_capture(self, partitions: int, *extra: str) -> Process:
        return self.start(
            "capture",
            "capture",
            "--db",
            str(self.db),
            "--tables",
            ",".join(self.tables),
            "--partitions",
            str(partitions),
            "--source",
            self.source,
            "--bootstrap-servers",
            self.bootstrap,
            *extra,
        )

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        log = self.root / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if env is None or FAILPOINTS_ENV not in env:
            full_env.pop(FAILPOINTS_ENV, None)
        handle = open(log, "ab")  # noqa: SIM115 - the child owns it; restarts append
        popen = subprocess.Popen(
            [*CUTLINE, *args], stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=self.root
        )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def check_alive(self) -> None:
        for process in self.processes:
            code = process.popen.poll()
            if code is not None and code != 0 and process.popen.pid not in self.killed:
                if code == KILLED:  # a failpoint kill: expected, the supervisor restarts it
                    continue
                raise AssertionError(f"{process.name} exited with {code}:\n{process.tail()}")

    def installed_source(self) -> bool:
        """Whether this pipeline's source is installed on the primary (its capture started)."""
        self.check_alive()
        with sqlite3.connect(self.db) as conn:
            known = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = '_cutline_sources'"
            ).fetchone()
            return bool(
                known
                and conn.execute(
                    "SELECT 1 FROM _cutline_sources WHERE source = ?", (self.source,)
                ).fetchone()
            )


def wait_installed(pipeline: FaultPipeline, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while not pipeline.installed_source():
        if time.monotonic() > end:
            raise AssertionError(
                f"source {pipeline.source} did not install within {deadline_s:.0f} s:\n"
                f"{pipeline.logs()}"
            )
        time.sleep(0.2)
