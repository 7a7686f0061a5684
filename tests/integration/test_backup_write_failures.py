"""A backups directory that turns read-only, then a full disk, while replication runs: each
cut fails with a message naming the directory, nothing half-written stays visible, and
the next cut succeeds once writing works again.

Replication runs in this process, so the failures are injected at the OS calls the
backup writer makes (``os.mkdir``, ``os.fsync``), only for paths under the backups
directory: a read-only filesystem and a full one fail exactly there, also for root.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from backups.catalog import has_backup, source_dir
from consumers.alignment import CutStatus
from consumers.replicator import ReplicateConfig, Replicator
from tests.integration.pipeline import TABLES, Pipeline, backup_rows, wait_until


def _failing_under(root: Path, real: Callable, code: int, by_fd: bool = False) -> Callable:
    def call(target, *args, **kwargs):
        path = os.readlink(f"/proc/self/fd/{target}") if by_fd else os.fspath(target)
        if Path(path).resolve().is_relative_to(root.resolve()):
            raise OSError(code, os.strerror(code), path)
        return real(target, *args, **kwargs)

    return call


def test_read_only_then_full_backups_directory_fails_cuts_then_recovers(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.create_primary(accounts=10)
    pipeline.start_capture(partitions=2)
    messages: list[str] = []
    replicator = Replicator(
        ReplicateConfig(pipeline.bootstrap, pipeline.replica, pipeline.backups, pipeline.source),
        progress=messages.append,
    )
    replicator.open()
    stop = threading.Event()
    runner = threading.Thread(target=replicator.run, args=(stop,), daemon=True)
    runner.start()
    conn = pipeline.connect()
    try:
        first = pipeline.cut(conn)
        pipeline.wait_for_backups([first.marker_id])
        where = source_dir(pipeline.backups, pipeline.source)

        def failed(marker_id: int) -> str:
            def done() -> str | None:
                report = replicator.coordinator.stats.reports.get(marker_id)
                if report is not None and report.status is CutStatus.FAILED:
                    return report.detail or ""
                return None

            return wait_until(done, 60, f"cut {marker_id} to fail\n{messages[-5:]}")

        # the backups directory turns read-only
        with monkeypatch.context() as m:
            m.setattr(os, "mkdir", _failing_under(where, os.mkdir, errno.EROFS))
            conn.execute("UPDATE accounts SET balance = balance + 1")
            read_only = pipeline.cut(conn)
            detail = failed(read_only.marker_id)
        assert str(where) in detail and "Read-only file system" in detail, detail

        # then the disk fills up while the files are flushed
        with monkeypatch.context() as m:
            m.setattr(os, "fsync", _failing_under(where, os.fsync, errno.ENOSPC, by_fd=True))
            conn.execute("UPDATE accounts SET balance = balance + 1")
            full = pipeline.cut(conn)
            detail = failed(full.marker_id)
        assert str(where) in detail and "No space left on device" in detail, detail
        assert any(f"cut {full.marker_id} failed" in m for m in messages), messages

        conn.execute("UPDATE accounts SET balance = balance + 1")
        later = pipeline.cut(conn)
        published = pipeline.wait_for_backups([later.marker_id])
        rows = backup_rows(published[later.marker_id])
        assert all(rows[t] == pipeline.oracle[later.marker_id][t] for t in TABLES)
        for marker_id in (read_only.marker_id, full.marker_id):
            assert not has_backup(pipeline.backups, pipeline.source, marker_id)
        leftovers = [p.name for p in where.iterdir() if not p.name.startswith("marker-")]
        assert all(not name.startswith(".tmp-") for name in leftovers), leftovers
    finally:
        stop.set()
        runner.join(60)
        conn.close()
    assert not runner.is_alive()
