"""Fetch the Apache Kafka broker jars once, with Maven, into cutline's cache.

A local cluster needs only a JDK and Maven: Maven resolves the broker's runtime closure from
Maven Central (and its own ~/.m2 cache), so there is no tarball URL or checksum to maintain.
The result is a plain directory of jars usable as ``java -cp '<lib>/*'``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from cutline import settings
from cutline.errors import BrokerError

KAFKA_VERSION = "4.1.1"

STAMP_NAME = ".cutline-complete"
MAVEN_TIMEOUT_S = 600.0
# Another process may be mid-download; wait a little longer than its own Maven deadline.
LOCK_TIMEOUT_S = MAVEN_TIMEOUT_S + 60.0

Progress = Callable[[str], object]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def kafka_lib_dir(version: str = KAFKA_VERSION) -> Path:
    return settings.cache_dir() / f"kafka-{version}" / "lib"


@contextmanager
def file_lock(path: Path, *, timeout_s: float, what: str) -> Iterator[None]:
    """An exclusive fcntl lock, so two cutline processes never write the same directory.

    Polls instead of blocking so the wait has a deadline and its error names what it waited for.
    The kernel drops the lock if the holder dies, so a crash never leaves it stuck.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BrokerError(
                        f"waited {timeout_s:.0f} s for another cutline process {what} "
                        f"(lock file {path}); if none is running, delete the lock file"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def require_tool(name: str) -> str:
    """The path of ``java`` or ``mvn``, or an error that says what to install."""
    found = shutil.which(name)
    if found is None:
        raise BrokerError(
            f"cannot run a local Kafka cluster: `{name}` is not on PATH. Install a JDK "
            "(17 or newer) and Apache Maven (e.g. `apt-get install openjdk-17-jdk-headless "
            "maven` or `brew install openjdk maven`), or point cutline at an existing broker "
            "with --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS"
        )
    return found


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(_ANSI.sub("", text).strip().splitlines()[-lines:])


def resolve_kafka_jars(version: str = KAFKA_VERSION, *, progress: Progress = print) -> Path:
    """Return a directory holding every jar the Kafka broker needs, downloading it on first use.

    The directory only appears (by rename) once Maven succeeded, and carries a stamp file, so an
    interrupted download is never mistaken for a complete one.
    """
    lib = kafka_lib_dir(version)
    if (lib / STAMP_NAME).is_file():
        return lib
    root = lib.parent
    with file_lock(root / ".lock", timeout_s=LOCK_TIMEOUT_S, what="resolving Kafka jars"):
        if (lib / STAMP_NAME).is_file():  # another process finished while we waited
            return lib
        require_tool("java")
        mvn = require_tool("mvn")
        progress(
            f"resolving Apache Kafka {version} jars from Maven Central with Maven (first run only)…"
        )
        with tempfile.TemporaryDirectory(dir=root, prefix=".resolve-") as tmp:
            work = Path(tmp)
            pom = work / "pom.xml"
            pom.write_bytes(resources.files(__package__).joinpath("pom.xml").read_bytes())
            staged = work / "lib"
            command = [
                mvn,
                "-B",
                "-q",
                "-Dstyle.color=never",
                "-f",
                str(pom),
                f"-Dkafka.version={version}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staged}",
            ]
            try:
                result = subprocess.run(
                    command,
                    cwd=work,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=MAVEN_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raw = exc.output or ""
                output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                raise BrokerError(
                    f"Maven did not finish resolving Apache Kafka {version} within "
                    f"{MAVEN_TIMEOUT_S:.0f} s (is Maven Central reachable?)\n{_tail(output)}"
                ) from None
            if result.returncode != 0:
                raise BrokerError(
                    f"Maven failed to resolve Apache Kafka {version} (exit status "
                    f"{result.returncode}); its output ends with:\n{_tail(result.stdout)}"
                )
            if not (staged / f"kafka_2.13-{version}.jar").is_file():
                raise BrokerError(
                    f"Maven succeeded but {staged} lacks kafka_2.13-{version}.jar; "
                    f"its output ends with:\n{_tail(result.stdout)}"
                )
            if lib.exists():  # a leftover without a stamp: never trusted
                shutil.rmtree(lib)
            os.replace(staged, lib)
        (lib / STAMP_NAME).write_text(f"kafka {version}\n")
    return lib
