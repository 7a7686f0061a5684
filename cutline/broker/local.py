"""A local KRaft Kafka cluster, run as plain JVM processes from Maven-resolved jars.

This is the no-Docker path: every node is a combined broker+controller on loopback ports, its
data lives under ``$CUTLINE_HOME/kafka/cluster`` and the cluster is recorded in
``settings.broker_state_file()`` so later commands (and ``cutline kafka stop``) find it.
The JVMs run in their own sessions, so the cluster outlives the command that started it.

Config rendering and the reuse decision are pure functions, testable without Java or Kafka.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from cutline import settings
from cutline.broker.maven import (
    KAFKA_VERSION,
    MAVEN_TIMEOUT_S,
    file_lock,
    require_tool,
    resolve_kafka_jars,
)
from cutline.errors import BrokerError, ConfigError

HOST = "127.0.0.1"
KIND = "local"
JVM_OPTS = ("-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true")
REUSE_PROBE_S = 5.0
LOG_TAIL_LINES = 30
_STACK_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ more)")
_ERROR_LINE = re.compile(r"\] (ERROR|FATAL) ")
# The nodes this process started. Holding them keeps Popen.__del__ from warning "subprocess is
# still running" (ResourceWarning) about JVMs that are meant to outlive the handle.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

Progress = Callable[[str], object]
Record = dict[str, Any]
Verdict = Literal["absent", "alive", "stale"]


@dataclass(frozen=True)
class ClusterInfo:
    """What a caller needs to use (and later stop) a cluster."""

    bootstrap_servers: str
    brokers: int
    pids: list[int]
    data_dir: Path
    kind: str = KIND
    # True when an already-running cluster was returned: the caller must not stop it.
    reused: bool = False


@dataclass(frozen=True)
class NodeSpec:
    """One combined broker+controller: its ports and where its files go."""

    node_id: int
    port: int
    controller_port: int
    node_dir: Path

    @property
    def log_dir(self) -> Path:
        """Kafka's data (``log.dirs``), formatted once per cluster."""
        return self.node_dir / "data"

    @property
    def log_file(self) -> Path:
        """The JVM's stdout and stderr: what a user reads when a node fails."""
        return self.node_dir / "kafka.log"

    @property
    def props_file(self) -> Path:
        return self.node_dir / "server.properties"

    @property
    def app_logs_dir(self) -> Path:
        return self.node_dir / "logs"


# --- pure parts -----------------------------------------------------------------------------


def new_cluster_id() -> str:
    """A random KRaft cluster id: a 16-byte UUID in unpadded base64url, as Kafka's own tool makes.

    Kafka's ``Uuid`` refuses ids whose text starts with '-' (they read as CLI flags), so skip those.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not text.startswith("-"):
            return text


def plan_nodes(cluster_dir: Path, ports: Sequence[int]) -> list[NodeSpec]:
    """Node ids 1..n, each taking two consecutive ports (client, controller) from ``ports``."""
    if len(ports) % 2 or not ports:
        raise ValueError("need a client and a controller port per node")
    return [
        NodeSpec(i + 1, ports[2 * i], ports[2 * i + 1], cluster_dir / f"node-{i + 1}")
        for i in range(len(ports) // 2)
    ]


def bootstrap_of(nodes: Sequence[NodeSpec]) -> str:
    return ",".join(f"{HOST}:{node.port}" for node in nodes)


def replication_settings(brokers: int) -> dict[str, str]:
    """Durability settings scaled to the cluster, so a 3-node cluster survives one node loss.

    With one node nothing can be replicated; from three on, topics get three replicas and
    acks=all needs two of them in sync.
    """
    replicas = str(min(3, brokers))
    min_isr = "1" if brokers == 1 else "2"
    return {
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
    }


def render_server_properties(node: NodeSpec, nodes: Sequence[NodeSpec]) -> str:
    """The server.properties of one node of a static-quorum combined-mode cluster."""
    voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in nodes)
    entries: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node.log_dir),
        "num.partitions": "1",
        **replication_settings(len(nodes)),
        "group.initial.rebalance.delay.ms": "0",
        # cutline creates its topics with explicit settings; a typo must not create a topic.
        "auto.create.topics.enable": "false",
    }
    header = f"# Written by cutline: node {node.node_id} of a {len(nodes)}-node local cluster.\n"
    return header + "".join(f"{key}={value}\n" for key, value in entries.items())


def build_record(
    nodes: Sequence[NodeSpec],
    pids: Mapping[int, int],
    *,
    data_dir: Path,
    cluster_id: str,
    lib_dir: Path,
    started_at: str,
) -> Record:
    """The JSON recorded in the state file; ``nodes`` carries what a restart needs."""
    record: Record = {
        "bootstrap_servers": bootstrap_of(nodes),
        "brokers": len(nodes),
        "pids": [],
        "data_dir": str(data_dir),
        "nodes": [
            {
                "node_id": n.node_id,
                "pid": pids.get(n.node_id),
                "port": n.port,
                "controller_port": n.controller_port,
                "log_dir": str(n.log_dir),
                "log_file": str(n.log_file),
                "props_file": str(n.props_file),
            }
            for n in nodes
        ],
        "kind": KIND,
        "kafka_version": KAFKA_VERSION,
        "cluster_id": cluster_id,
        "lib_dir": str(lib_dir),
        "started_at": started_at,
    }
    _refresh_pids(record)
    return record


def _refresh_pids(record: Record) -> None:
    record["pids"] = [node["pid"] for node in record["nodes"] if node.get("pid")]


def assess_record(record: Record | None, alive: Callable[[Record], bool]) -> Verdict:
    """Is the recorded cluster still there? ``alive`` tells whether one node's process runs.

    Only a complete cluster counts as alive: a cluster missing a node (crashed or killed) is
    stale, and starting again replaces it rather than guessing how to repair it.
    """
    if not record or not record.get("nodes"):
        return "absent"
    nodes = record["nodes"]
    if all(node.get("pid") and alive(node) for node in nodes):
        return "alive"
    return "stale"


def info_from_record(record: Record, *, reused: bool = False) -> ClusterInfo:
    return ClusterInfo(
        bootstrap_servers=record["bootstrap_servers"],
        brokers=int(record["brokers"]),
        pids=list(record["pids"]),
        data_dir=Path(record["data_dir"]),
        kind=record.get("kind", KIND),
        reused=reused,
    )


# --- state file -----------------------------------------------------------------------------


def kafka_home() -> Path:
    return settings.broker_state_file().parent


def read_state() -> Record | None:
    """The recorded cluster, or None if there is none (or the file is unreadable)."""
    try:
        record = json.loads(settings.broker_state_file().read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_state(record: Record) -> None:
    """Replace the state file atomically, so a reader never sees half a record."""
    path = settings.broker_state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def _clear_state() -> None:
    settings.broker_state_file().unlink(missing_ok=True)


# --- processes ------------------------------------------------------------------------------


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """Whether ``pid`` runs and, where /proc tells, is the process whose command names ``marker``.

    The marker (a node's server.properties path) guards against a recycled pid: cutline must
    never signal an unrelated process because an old state file named its pid.
    """
    if not pid or pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:  # started by this process: Popen knows (and reaps) it for certain
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap an exited child, or it lingers as a zombie
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            if marker and marker not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                return False
        except (OSError, IndexError):
            return False
    return True


def _node_alive(node: Record) -> bool:
    return pid_alive(node.get("pid"), node.get("props_file"))


def _terminate(nodes: Sequence[Record], deadline_s: float) -> list[int]:
    """SIGTERM the nodes' processes, wait up to ``deadline_s``, SIGKILL the rest.

    Returns the pids that had to be killed.
    """
    running = [(n["pid"], n.get("props_file")) for n in nodes if _node_alive(n)]
    for pid, _ in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and any(pid_alive(p, m) for p, m in running):
        time.sleep(0.2)
    leftovers = [(p, m) for p, m in running if pid_alive(p, m)]
    for pid, _ in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_alive(p, m) for p, m in leftovers):
        time.sleep(0.1)
    return [p for p, _ in leftovers]


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports the OS says are free (all held open at once, so no repeats)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def log_tail(path: Path | str, lines: int = LOG_TAIL_LINES) -> str:
    """The end of a node's log, cut down so the cause of a failure fits in an error message.

    Java stack frames are dropped and long lines clipped; if the first ERROR scrolled out of
    the tail (a dying controller logs many follow-up errors), it is shown first.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 262144))
            text = handle.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    kept = [
        line if len(line) <= 400 else line[:400] + " …"
        for line in text.strip().splitlines()
        if not _STACK_FRAME.match(line)
    ]
    first_error = next((i for i, line in enumerate(kept) if _ERROR_LINE.search(line)), None)
    if first_error is not None and first_error < len(kept) - lines:
        head = kept[first_error : first_error + 6]
        return "\n".join([*head, "…", *kept[len(kept) - (lines - len(head) - 1) :]])
    return "\n".join(kept[-lines:]) or "(log is empty)"


def _java_command(
    lib_dir: Path, log4j: Path, main: str, *args: str, props: Sequence[str] = ()
) -> list[str]:
    return [
        require_tool("java"),
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={log4j}",
        *props,
        "-cp",
        f"{lib_dir}/*",
        main,
        *args,
    ]


def _launch(node: NodeSpec, lib_dir: Path, log4j: Path) -> subprocess.Popen[bytes]:
    """Start one node detached (own session), appending its output to its log file."""
    command = _java_command(
        lib_dir,
        log4j,
        "kafka.Kafka",
        str(node.props_file),
        props=[f"-Dkafka.logs.dir={node.app_logs_dir}"],
    )
    node.app_logs_dir.mkdir(parents=True, exist_ok=True)
    with open(node.log_file, "ab") as log:
        proc = subprocess.Popen(
            command,
            cwd=node.node_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def _format_storage(
    nodes: Sequence[NodeSpec], cluster_id: str, lib_dir: Path, log4j: Path, deadline: float
) -> None:
    """Format every node's log dir with the one cluster id (in parallel: each is a JVM start)."""
    procs = {
        node.node_id: subprocess.Popen(
            _java_command(
                lib_dir,
                log4j,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(node.props_file),
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for node in nodes
    }
    try:
        for node_id, proc in procs.items():
            try:
                out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BrokerError(
                    f"timed out waiting for Kafka's StorageTool to format node {node_id}'s "
                    "log directory"
                ) from None
            if proc.returncode != 0:
                tail = "\n".join(out.decode(errors="replace").strip().splitlines()[-15:])
                raise BrokerError(
                    f"formatting node {node_id}'s log directory failed (exit status "
                    f"{proc.returncode}):\n{tail}"
                )
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- talking to the cluster -----------------------------------------------------------------


def quiet_admin(bootstrap: str) -> AdminClient:
    """An AdminClient that stays silent while a broker is unreachable.

    librdkafka otherwise prints a "Connect ... failed" line to stderr every few milliseconds.
    """
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


def broker_ids(admin: AdminClient, timeout_s: float) -> set[int] | None:
    """The ids of the brokers a metadata request lists, or None if none answered in time."""
    try:
        return set(admin.list_topics(timeout=max(0.1, timeout_s)).brokers)
    except KafkaException:
        return None


def _await_brokers(
    bootstrap: str,
    want: set[int],
    procs: Mapping[int, subprocess.Popen[bytes]],
    log_files: Mapping[int, str],
    deadline: float,
    deadline_s: float,
) -> None:
    """Wait until metadata lists every broker in ``want`` (until the monotonic ``deadline``,
    reported as ``deadline_s``); fail fast if a JVM exits."""
    what = f"broker(s) {sorted(want)} to appear in metadata from {bootstrap}"
    admin = quiet_admin(bootstrap)
    seen: set[int] = set()
    while True:
        for node_id, proc in procs.items():
            if proc.poll() is not None:
                raise BrokerError(
                    f"Kafka node {node_id} exited (status {proc.returncode}) while waiting for "
                    f"{what}; the end of {log_files[node_id]}:\n{log_tail(log_files[node_id])}"
                )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = sorted(want - seen) or sorted(want)
            log = log_files[missing[0]]
            raise BrokerError(
                f"timed out after {deadline_s:g} s waiting for {what} (listed: "
                f"{sorted(seen) or 'none'}); the end of node {missing[0]}'s log {log}:\n"
                f"{log_tail(log)}"
            )
        seen = broker_ids(admin, min(2.0, remaining)) or set()
        if want <= seen:
            return
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def cluster_answers(bootstrap: str, timeout_s: float = REUSE_PROBE_S) -> bool:
    return broker_ids(quiet_admin(bootstrap), timeout_s) is not None


# --- public API -----------------------------------------------------------------------------


def _lock(timeout_s: float) -> contextlib.AbstractContextManager[None]:
    return file_lock(
        kafka_home() / ".lock",
        timeout_s=timeout_s,
        what="starting or stopping the local Kafka cluster",
    )


def recorded_cluster(*, probe_s: float = REUSE_PROBE_S) -> ClusterInfo | None:
    """The recorded local cluster if all its nodes run and it answers metadata, else None."""
    record = read_state()
    if assess_record(record, _node_alive) != "alive" or record is None:
        return None
    if not cluster_answers(record["bootstrap_servers"], probe_s):
        return None
    return info_from_record(record, reused=True)


def start_local_cluster(
    brokers: int = 1, *, progress: Progress = print, deadline_s: float = 120, fresh: bool = False
) -> ClusterInfo:
    """Start (or reuse) the local KRaft cluster of ``brokers`` nodes and wait until it serves.

    A recorded cluster whose nodes died (JVM killed, machine rebooted) is started again on
    its own data: its topics hold the history replicas and replay need. Only ``fresh``
    deletes that data and formats a new cluster.
    """
    if brokers < 1:
        raise ConfigError(f"a Kafka cluster needs at least one broker, not {brokers}")
    # Whoever holds the lock may first be fetching the jars with Maven.
    with _lock(deadline_s + MAVEN_TIMEOUT_S + 60):
        record = read_state()
        verdict = assess_record(record, _node_alive)
        if fresh:
            if record is not None:
                progress(
                    f"--fresh: stopping the recorded local Kafka cluster and deleting its data "
                    f"under {record.get('data_dir')} (every topic and offset in it)"
                )
                _terminate(record.get("nodes", []), 10)
                _clear_state()
            return _start_new(brokers, progress, deadline_s)
        if verdict == "alive" and record is not None:
            bootstrap = record["bootstrap_servers"]
            if cluster_answers(bootstrap):
                if int(record["brokers"]) != brokers:
                    raise BrokerError(
                        f"a local Kafka cluster of {record['brokers']} broker(s) already runs at "
                        f"{bootstrap}; run `cutline kafka stop` first to start one of {brokers}"
                    )
                progress(
                    f"reusing the local Kafka cluster at {bootstrap} ({brokers} broker(s), "
                    f"started {record.get('started_at', '?')})"
                )
                return info_from_record(record, reused=True)
            progress(
                f"the recorded local Kafka cluster at {bootstrap} does not answer; restarting it "
                "on its data"
            )
            _terminate(record.get("nodes", []), 10)
        if record is not None and has_data(record):
            return restart_on_data(record, brokers, progress, deadline_s)
        if record is not None:
            progress("the recorded local Kafka cluster has no data left; starting a new one")
            _terminate(record.get("nodes", []), 10)
            _clear_state()
        return _start_new(brokers, progress, deadline_s)


def _start_new(brokers: int, progress: Progress, deadline_s: float) -> ClusterInfo:
    lib_dir = resolve_kafka_jars(progress=progress)
    require_tool("java")
    started = time.monotonic()
    cluster_dir = kafka_home() / "cluster"
    shutil.rmtree(cluster_dir, ignore_errors=True)
    nodes = plan_nodes(cluster_dir, free_ports(2 * brokers))
    log4j = cluster_dir / "log4j2.properties"
    for node in nodes:
        node.node_dir.mkdir(parents=True)
        node.props_file.write_text(render_server_properties(node, nodes))
    log4j.write_bytes(resources.files(__package__).joinpath("log4j2.properties").read_bytes())
    bootstrap = bootstrap_of(nodes)
    progress(
        f"starting a local Kafka {KAFKA_VERSION} cluster of {brokers} broker(s) at {bootstrap}…"
    )

    cluster_id = new_cluster_id()
    _format_storage(nodes, cluster_id, lib_dir, log4j, started + deadline_s)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for node in nodes:
            procs[node.node_id] = _launch(node, lib_dir, log4j)
        record = build_record(
            nodes,
            {node_id: proc.pid for node_id, proc in procs.items()},
            data_dir=cluster_dir,
            cluster_id=cluster_id,
            lib_dir=lib_dir,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        write_state(record)  # before waiting, so `cutline kafka stop` can clean up after a crash
        _await_brokers(
            bootstrap,
            {node.node_id for node in nodes},
            procs,
            {node.node_id: str(node.log_file) for node in nodes},
            started + deadline_s,
            deadline_s,
        )
    except BaseException:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _clear_state()
        raise
    progress(f"Kafka is up at {bootstrap} ({time.monotonic() - started:.1f} s)")
    return info_from_record(record)


def has_data(record: Record) -> bool:
    """Whether any node of the recorded cluster has a formatted log directory to keep."""
    return any(
        (Path(node.get("log_dir", "")) / "meta.properties").is_file()
        for node in record.get("nodes", [])
    )


def port_free(port: int) -> bool:
    """Whether a listener could bind ``port`` now (as Kafka does, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def move_ports(record: Record, ports: Sequence[int]) -> list[NodeSpec]:
    """Give every node of a stopped cluster new ports: its properties and the record.

    The data stays where it is; node ids and the cluster id do not change, and the static
    controller quorum is read from the rewritten properties on start.
    """
    nodes = plan_nodes(Path(record["data_dir"]), ports)
    for spec, node in zip(nodes, record["nodes"], strict=True):
        spec.props_file.write_text(render_server_properties(spec, nodes))
        node.update(port=spec.port, controller_port=spec.controller_port)
    record["bootstrap_servers"] = bootstrap_of(nodes)
    return nodes


def restart_on_data(
    record: Record, brokers: int, progress: Progress, deadline_s: float
) -> ClusterInfo:
    """Start the recorded cluster's stopped nodes again on their own data and wait for all.

    Why: the data holds the source topics' whole history, which new replica shards and
    ``cutline replay`` need; a new cluster would silently start every topic from offset 0.
    """
    data_dir = record.get("data_dir")
    if int(record.get("brokers", 0)) != brokers:
        raise BrokerError(
            f"the local Kafka cluster whose data is under {data_dir} has {record.get('brokers')} "
            f"broker(s): start it with --brokers {record.get('brokers')}, or pass --fresh to "
            f"delete its data and start a cluster of {brokers}"
        )
    nodes: list[Record] = record["nodes"]
    lost = [n["node_id"] for n in nodes if not (Path(n["log_dir"]) / "meta.properties").is_file()]
    if lost:
        raise BrokerError(
            f"node(s) {lost} of the local Kafka cluster under {data_dir} lost their data: "
            "`cutline kafka start --fresh` deletes the rest and starts a new cluster"
        )
    stopped = [n for n in nodes if not _node_alive(n)]
    taken = [p for n in stopped for p in (n["port"], n["controller_port"]) if not port_free(p)]
    if taken and len(stopped) < len(nodes):
        raise BrokerError(
            f"ports {taken} of the local Kafka cluster are taken by another process while "
            "some of its nodes run: free them and start again"
        )
    if taken:
        was = record["bootstrap_servers"]
        move_ports(record, free_ports(2 * len(nodes)))
        progress(
            f"ports {taken} of the local Kafka cluster at {was} are taken by another process; "
            f"it moves to {record['bootstrap_servers']}"
        )
    lib_dir = resolve_kafka_jars(progress=progress)
    require_tool("java")
    record["lib_dir"] = str(lib_dir)
    log4j = Path(record["data_dir"]) / "log4j2.properties"
    if not log4j.is_file():
        log4j.write_bytes(resources.files(__package__).joinpath("log4j2.properties").read_bytes())
    bootstrap = record["bootstrap_servers"]
    progress(
        f"restarting the local Kafka cluster at {bootstrap} on its data under {data_dir} "
        f"(node(s) {[n['node_id'] for n in stopped]}); `cutline kafka start --fresh` would "
        "delete that data instead"
    )
    started = time.monotonic()
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for node in stopped:
            spec = NodeSpec(
                node["node_id"],
                node["port"],
                node["controller_port"],
                Path(node["props_file"]).parent,
            )
            procs[spec.node_id] = _launch(spec, lib_dir, log4j)
            node["pid"] = procs[spec.node_id].pid
        _refresh_pids(record)
        record["restarted_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_state(record)  # before waiting, so `cutline kafka stop` can clean up after a crash
        _await_brokers(
            bootstrap,
            {n["node_id"] for n in nodes},
            procs,
            {n["node_id"]: n["log_file"] for n in nodes},
            started + deadline_s,
            deadline_s,
        )
    except BaseException as exc:
        for node_id, proc in procs.items():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            next(n for n in nodes if n["node_id"] == node_id)["pid"] = None
        _refresh_pids(record)
        write_state(record)
        if isinstance(exc, BrokerError):
            raise BrokerError(
                f"{exc}\nThe cluster's data is kept under {data_dir}: fix the cause and run "
                "`cutline kafka start` again, or `cutline kafka start --fresh` to delete it"
            ) from None
        raise
    progress(f"Kafka is up again at {bootstrap} ({time.monotonic() - started:.1f} s)")
    return info_from_record(record)


def stop_local_cluster(*, deadline_s: float = 30, progress: Progress = print) -> bool:
    """Stop the recorded cluster and delete its data; False if no cluster was recorded."""
    with _lock(deadline_s + 60):
        record = read_state()
        if record is None:
            if settings.broker_state_file().exists():  # unreadable: nothing we can act on
                _clear_state()
            return False
        progress(
            f"stopping the local Kafka cluster at {record.get('bootstrap_servers')} "
            f"(pids {', '.join(map(str, record.get('pids', []))) or 'none running'})…"
        )
        killed = _terminate(record.get("nodes", []), deadline_s)
        if killed:
            progress(f"pids {killed} did not stop within {deadline_s:.0f} s and were killed")
        data_dir = Path(record.get("data_dir", ""))
        # Only ever delete inside cutline's own directory, whatever the state file says.
        if data_dir.is_relative_to(kafka_home()) and data_dir != kafka_home():
            shutil.rmtree(data_dir, ignore_errors=True)
        _clear_state()
        return True


def _recorded_node(node_id: int) -> tuple[Record, Record]:
    record = read_state()
    if record is None:
        raise BrokerError(
            "no local Kafka cluster is recorded: start one with `cutline kafka start`"
        )
    for node in record.get("nodes", []):
        if node.get("node_id") == node_id:
            return record, node
    ids = [node.get("node_id") for node in record.get("nodes", [])]
    raise BrokerError(f"the local Kafka cluster has no node {node_id} (its nodes are {ids})")


def kill_node(node_id: int, *, deadline_s: float = 10) -> int:
    """SIGKILL one node, as a crash would; returns the pid that was killed."""
    with _lock(deadline_s + 60):
        record, node = _recorded_node(node_id)
        pid = node.get("pid")
        if not _node_alive(node):
            raise BrokerError(f"node {node_id} of the local Kafka cluster is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + deadline_s
        while _node_alive(node):
            if time.monotonic() >= deadline:
                raise BrokerError(f"timed out after {deadline_s:g} s waiting for pid {pid} to exit")
            time.sleep(0.05)
        node["pid"] = None
        _refresh_pids(record)
        write_state(record)
        return pid


def restart_node(node_id: int, deadline_s: float = 60) -> int:
    """Start a killed node again with its config and data; wait until metadata lists it."""
    with _lock(deadline_s + 60):
        record, node = _recorded_node(node_id)
        if _node_alive(node):
            raise BrokerError(f"node {node_id} is already running (pid {node['pid']})")
        spec = NodeSpec(
            node_id, node["port"], node["controller_port"], Path(node["props_file"]).parent
        )
        log4j = Path(record["data_dir"]) / "log4j2.properties"
        proc = _launch(spec, Path(record["lib_dir"]), log4j)
        node["pid"] = proc.pid
        _refresh_pids(record)
        write_state(record)
        try:
            _await_brokers(
                record["bootstrap_servers"],
                {node_id},
                {node_id: proc},
                {node_id: node["log_file"]},
                time.monotonic() + deadline_s,
                deadline_s,
            )
        except BrokerError:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            node["pid"] = None
            _refresh_pids(record)
            write_state(record)
            raise
        return proc.pid
