"""Running as a service: a config file, retention inside ``replicate``, backups that an
older DuckDB opens, and SIGTERM during start-up."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import duckdb

from backups.chain import resolved_database
from backups.writer.duckdb_format import STORAGE_COMPATIBILITY
from tests.integration.old_duckdb import OLD_DUCKDB, read_with_old_duckdb
from tests.integration.pipeline import (
    CUTLINE,
    Pipeline,
    avro_rows,
    backup_rows,
    table_rows,
    wait_until,
)
from tests.integration.test_incremental_chain import _changes

START_UP_STOP_S = 4.0  # SIGTERM during a start-up wait ends the process within this


def _columns(backup) -> dict[str, list[str]]:
    return {t: [c["name"] for c in info["columns"]] for t, info in backup.tables.items()}


def _resolved_rows(backup) -> dict[str, list[tuple]]:
    with resolved_database(backup) as path:
        db = duckdb.connect(str(path), read_only=True)
        try:
            return {t: table_rows(db, t, cols) for t, cols in _columns(backup).items()}
        finally:
            db.close()


def test_replicate_from_a_config_file_prunes_after_each_publish(pipeline: Pipeline) -> None:
    """F1 I2 F3 I4 F5 with --keep-last 2: after 5 is published, 4 (and 3, its parent) stay.

    Every surviving backup is the primary at its cut, in DuckDB, in Avro, restored as
    SQLite, and as read by DuckDB 1.1 (its own file and, for an incremental, the file its
    chain resolves to)."""
    config = pipeline.root / "cutline.toml"
    config.write_text(
        f'[common]\nsource = "{pipeline.source}"\nbackups = "{pipeline.backups}"\n'
        f'[replicate]\nreplica = "{pipeline.replica}"\nfull-every = 2\nkeep-last = 2\n'
    )
    pipeline.create_primary()
    pipeline.start_capture(partitions=3)
    replicate = pipeline.start(
        "replicate", "replicate", "--config", str(config), "--bootstrap-servers", pipeline.bootstrap
    )
    rng = random.Random(8)
    conn = pipeline.connect()
    next_id = 1000
    try:
        for _ in range(5):
            next_id = _changes(conn, rng, next_id)
            pipeline.cut(conn)
    finally:
        conn.close()
    assert sorted(pipeline.oracle) == [1, 2, 3, 4, 5]

    def settled() -> bool:
        pipeline.check_alive()
        return sorted(pipeline.published()) == [3, 4, 5]

    wait_until(settled, 180, f"backups 3, 4, 5 only (have {sorted(pipeline.published())})")
    log = replicate.log.read_text()
    assert "retention: removed backups" in log, log
    published = pipeline.published()
    assert [published[m].kind for m in (3, 4, 5)] == ["full", "incremental", "full"]

    for marker_id, backup in published.items():
        expected = pipeline.oracle[marker_id]
        written = json.loads((backup.path / "manifest.json").read_text())["written_with"]
        assert written["duckdb"] == duckdb.__version__
        assert written["duckdb_storage_compatibility"] == STORAGE_COMPATIBILITY
        assert written["cutline"] not in ("", "unknown")
        assert _resolved_rows(backup) == expected, marker_id
        restored = pipeline.root / f"restored-{marker_id}.sqlite"
        done = pipeline.cli(
            "restore", "--backups", str(pipeline.backups), "--marker", str(marker_id),
            "--to", str(restored),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        with sqlite3.connect(restored) as restored_conn:
            assert pipeline.state(restored_conn) == expected, marker_id
        # DuckDB 1.1 opens the backup's own file and reads what today's DuckDB reads
        old = read_with_old_duckdb(backup.duckdb_path, _columns(backup))
        if backup.kind == "full":
            assert old == expected, f"DuckDB {OLD_DUCKDB} reads backup {marker_id} differently"
            assert avro_rows(backup)[0] == backup_rows(backup)
        else:
            assert old == backup_rows(backup), marker_id  # the changed rows
            with resolved_database(backup) as path:
                assert read_with_old_duckdb(path, _columns(backup)) == expected

    assert replicate.stop() == 0, replicate.tail()


def _free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_open(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == str(path.resolve()) for fd in fds.iterdir())
    except OSError:
        return False


def _sigterm_and_time(popen: subprocess.Popen) -> tuple[int, float]:
    started = time.monotonic()
    popen.send_signal(signal.SIGTERM)
    code = popen.wait(30)
    return code, time.monotonic() - started


def test_sigterm_while_capture_waits_for_an_unreachable_broker(tmp_path: Path) -> None:
    """Capture waits up to 10 s for a cluster; SIGTERM ends the wait at once (exit 0),
    before anything is installed on the primary."""
    db = tmp_path / "primary.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
    log = tmp_path / "capture.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [*CUTLINE, "capture", "--db", str(db), "--tables", "accounts",
             "--bootstrap-servers", f"127.0.0.1:{_free_port()}", "--source", "unreachable"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        wait_until(lambda: popen.poll() is None and _has_open(popen.pid, db), 30, "capture start")
        code, elapsed = _sigterm_and_time(popen)
    finally:
        if popen.poll() is None:
            popen.kill()
    text = log.read_text()
    assert code == 0, text
    assert elapsed < START_UP_STOP_S, f"took {elapsed:.1f} s"
    assert "stopped by SIGTERM during start-up" in text
    assert "Traceback" not in text
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "_cutline_changes" not in names  # it never got past the wait


def test_sigterm_while_replicate_waits_for_the_ops_topic(pipeline: Pipeline) -> None:
    """Replicate waits up to 120 s for a source's ops topic; SIGTERM ends that at once."""
    replicate = pipeline.start_replicator("replicate")
    wait_until(
        lambda: "waiting up to" in replicate.log.read_text() or replicate.popen.poll() is not None,
        60,
        "replicate to wait for the ops topic",
    )
    code, elapsed = _sigterm_and_time(replicate.popen)
    text = replicate.log.read_text()
    assert code == 0, text
    assert elapsed < START_UP_STOP_S, f"took {elapsed:.1f} s"
    assert "stopped by SIGTERM during start-up" in text and "Traceback" not in text


def test_sigusr1_prints_every_threads_stack_and_the_process_goes_on(pipeline: Pipeline) -> None:
    """A process that does not stop can say where it is: SIGUSR1 dumps the stacks (the
    fault harness asks for them before it kills a process that ignored SIGTERM)."""
    replicate = pipeline.start_replicator("replicate")
    wait_until(
        lambda: "waiting up to" in replicate.log.read_text() or replicate.popen.poll() is not None,
        60,
        "replicate to wait for the ops topic",
    )
    replicate.popen.send_signal(signal.SIGUSR1)
    wait_until(lambda: "most recent call first" in replicate.log.read_text(), 20, "the stack dump")
    assert "in wait_for_topic" in replicate.log.read_text()
    assert replicate.popen.poll() is None, "SIGUSR1 must not stop the process"
    code, _elapsed = _sigterm_and_time(replicate.popen)
    assert code == 0, replicate.log.read_text()


def test_sigint_interrupts_a_one_shot_command_with_130(tmp_path: Path) -> None:
    """replay (one shot) waiting for an unreachable cluster: SIGINT ends it, status 130."""
    backups = tmp_path / "backups"
    log = tmp_path / "replay.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [*CUTLINE, "replay", "--replica", str(tmp_path / "replica"), "--backups",
             str(backups), "--bootstrap-servers", f"127.0.0.1:{_free_port()}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        # it creates --backups just before it waits for the cluster
        wait_until(lambda: popen.poll() is None and backups.is_dir(), 30, "replay to start")
        started = time.monotonic()
        popen.send_signal(signal.SIGINT)
        code = popen.wait(30)
    finally:
        if popen.poll() is None:
            popen.kill()
    assert code == 130, log.read_text()
    assert time.monotonic() - started < START_UP_STOP_S
    assert "cutline replay: stopped by SIGINT" in log.read_text()
