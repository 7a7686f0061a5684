"""The ``cutline`` commands the scale phase runs as processes of their own.

Each runs as a real process (``cutline capture``, and ``cutline replicate`` through
:mod:`bench.replicate_probe`), so its memory is its own: the peak RSS reported is the
kernel's high-water mark (``VmHWM`` in ``/proc/<pid>/status``) of that one process. Output
goes to a log file in the work directory, whose tail is quoted when a process dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.common import BenchError, log

REPO = Path(__file__).resolve().parents[1]
CUTLINE = "import sys; from cutline.cli import main; sys.exit(main())"


class CutlineProcess:
    """One running cutline command; stopped with SIGINT (a clean shutdown), then killed."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @classmethod
    def capture(cls, args: list[str], log_path: Path) -> CutlineProcess:
        return cls("capture", [sys.executable, "-c", CUTLINE, "capture", *args], log_path, {})

    @classmethod
    def replicate(cls, args: list[str], log_path: Path, resumes: Path) -> CutlineProcess:
        argv = [sys.executable, "-m", "bench.replicate_probe", *args]
        return cls("replicate", argv, log_path, {"CUTLINE_BENCH_RESUMES": str(resumes)})

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def check(self) -> None:
        """Raise if the process has exited: every phase expects it to run throughout."""
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"cutline {self.name} exited with {code}: {self.tail()}")

    def peak_rss_bytes(self) -> int:
        """The process's resident-set high-water mark so far (Linux ``VmHWM``)."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError as exc:
            raise BenchError(f"cannot read the memory of cutline {self.name}: {exc}") from exc
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise BenchError(f"/proc/{self.proc.pid}/status has no VmHWM line")

    def stop(self, deadline_s: float = 30.0) -> None:
        """SIGINT, wait up to ``deadline_s``, then SIGKILL. Safe to call twice."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(deadline_s)
                except subprocess.TimeoutExpired:
                    log(f"cutline {self.name} did not stop within {deadline_s:.0f} s: killing it")
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            self._log.close()
