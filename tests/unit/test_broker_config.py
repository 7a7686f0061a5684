"""The pure parts of broker provisioning: config rendering, cluster ids, the state file and the
decisions made from it. No JVM, no Maven, no broker (only a closed loopback port)."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cutline import settings
from cutline.broker import local, maven, provision
from cutline.errors import BrokerError, ConfigError


@pytest.fixture(autouse=True)
def scratch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.setenv(settings.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(settings.ENV_BOOTSTRAP, raising=False)
    return tmp_path / "home"


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def nodes_of(count: int, base: Path) -> list[local.NodeSpec]:
    return local.plan_nodes(base, [port for i in range(count) for port in (9000 + i, 9100 + i)])


# --- config rendering -----------------------------------------------------------------------


def test_single_node_properties(tmp_path: Path) -> None:
    (node,) = nodes_of(1, tmp_path)
    props = parse_properties(local.render_server_properties(node, [node]))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9100"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9000,CONTROLLER://127.0.0.1:9100"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9000"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "node-1" / "data")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "default.replication.factor",
        "min.insync.replicas",
        "num.partitions",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"


def test_three_node_properties(tmp_path: Path) -> None:
    nodes = nodes_of(3, tmp_path)
    rendered = [parse_properties(local.render_server_properties(n, nodes)) for n in nodes]
    voters = "1@127.0.0.1:9100,2@127.0.0.1:9101,3@127.0.0.1:9102"
    assert [p["node.id"] for p in rendered] == ["1", "2", "3"]
    assert {p["controller.quorum.voters"] for p in rendered} == {voters}
    assert len({p["log.dirs"] for p in rendered}) == 3
    second = rendered[1]
    assert second["listeners"] == "PLAINTEXT://127.0.0.1:9001,CONTROLLER://127.0.0.1:9101"
    assert second["offsets.topic.replication.factor"] == "3"
    assert second["transaction.state.log.replication.factor"] == "3"
    assert second["transaction.state.log.min.isr"] == "2"
    assert second["default.replication.factor"] == "3"
    assert second["min.insync.replicas"] == "2"
    assert local.bootstrap_of(nodes) == "127.0.0.1:9000,127.0.0.1:9001,127.0.0.1:9002"


def test_replication_is_capped_at_three() -> None:
    assert local.replication_settings(5)["default.replication.factor"] == "3"
    assert local.replication_settings(2)["default.replication.factor"] == "2"
    assert local.replication_settings(2)["min.insync.replicas"] == "2"


def test_plan_nodes_needs_port_pairs(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        local.plan_nodes(tmp_path, [1, 2, 3])


def test_cluster_id_is_unpadded_base64url_uuid() -> None:
    ids = {local.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_free_ports_are_distinct() -> None:
    ports = local.free_ports(6)
    assert len(set(ports)) == 6


# --- state file -----------------------------------------------------------------------------


def make_record(home: Path, pids: list[int | None]) -> dict:
    nodes = local.plan_nodes(
        home / "kafka" / "cluster", [p for i in range(len(pids)) for p in (7000 + i, 7100 + i)]
    )
    return local.build_record(
        nodes,
        {i + 1: pid for i, pid in enumerate(pids) if pid},
        data_dir=home / "kafka" / "cluster",
        cluster_id="AAAAAAAAAAAAAAAAAAAAAA",
        lib_dir=Path("/nowhere/lib"),
        started_at="2025-01-01T00:00:00+00:00",
    )


def test_state_round_trip_is_atomic(scratch_home: Path) -> None:
    record = make_record(scratch_home, [101, 102, 103])
    local.write_state(record)
    assert local.read_state() == record
    assert settings.recorded_bootstrap() == "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"
    leftovers = [p.name for p in settings.broker_state_file().parent.iterdir()]
    assert leftovers == ["state.json"]
    assert record["kind"] == "local"
    assert record["pids"] == [101, 102, 103]
    assert {"node_id", "pid", "port", "controller_port", "log_dir", "log_file"} <= set(
        record["nodes"][0]
    )


def test_unreadable_state_is_no_state(scratch_home: Path) -> None:
    assert local.read_state() is None
    settings.broker_state_file().parent.mkdir(parents=True)
    settings.broker_state_file().write_text("{not json")
    assert local.read_state() is None


def test_record_verdicts(scratch_home: Path) -> None:
    live = {101, 102, 103}

    def alive(node: dict) -> bool:
        return node["pid"] in live

    assert local.assess_record(None, alive) == "absent"
    assert local.assess_record({"nodes": []}, alive) == "absent"
    assert local.assess_record(make_record(scratch_home, [101, 102, 103]), alive) == "alive"
    assert local.assess_record(make_record(scratch_home, [101, 999, 103]), alive) == "stale"
    killed = make_record(scratch_home, [101, None, 103])
    assert killed["pids"] == [101, 103]
    assert local.assess_record(killed, alive) == "stale"


def test_pid_alive_checks_marker_and_exit() -> None:
    assert local.pid_alive(os.getpid())
    assert local.pid_alive(os.getpid(), marker="python")
    if Path("/proc/self/cmdline").exists():
        assert not local.pid_alive(os.getpid(), marker="kafka.Kafka /no/such/server.properties")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not local.pid_alive(child.pid)
    assert not local.pid_alive(None)
    assert not local.pid_alive(0)


# --- reuse decisions (fake pids, no JVM) ------------------------------------------------------


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch, scratch_home: Path) -> dict:
    """A recorded cluster whose pids count as alive; starting anew is recorded, not done."""
    calls: dict = {"started": [], "terminated": [], "answers": True, "live": {101, 102, 103}}
    monkeypatch.setattr(local, "_node_alive", lambda node: node.get("pid") in calls["live"])
    monkeypatch.setattr(local, "cluster_answers", lambda bootstrap, timeout_s=5: calls["answers"])
    monkeypatch.setattr(local, "_terminate", lambda nodes, d: calls["terminated"].append(nodes))

    def start_new(brokers: int, progress: object, deadline_s: float) -> local.ClusterInfo:
        calls["started"].append(brokers)
        return local.ClusterInfo("127.0.0.1:1", brokers, [1], scratch_home)

    monkeypatch.setattr(local, "_start_new", start_new)
    return calls


def test_live_cluster_is_reused(fake_cluster: dict, scratch_home: Path) -> None:
    local.write_state(make_record(scratch_home, [101, 102, 103]))
    messages: list[str] = []
    info = local.start_local_cluster(3, progress=messages.append)
    assert info.reused and info.pids == [101, 102, 103] and info.brokers == 3
    assert fake_cluster["started"] == [] and fake_cluster["terminated"] == []
    assert "reusing" in messages[0]
    found = local.recorded_cluster()
    assert found is not None and found.reused


def test_live_cluster_of_other_size_is_refused(fake_cluster: dict, scratch_home: Path) -> None:
    local.write_state(make_record(scratch_home, [101, 102, 103]))
    with pytest.raises(BrokerError, match="cutline kafka stop"):
        local.start_local_cluster(1, progress=lambda _: None)
    assert fake_cluster["started"] == []


def test_stale_record_is_replaced(fake_cluster: dict, scratch_home: Path) -> None:
    local.write_state(make_record(scratch_home, [101, 555]))
    info = local.start_local_cluster(2, progress=lambda _: None)
    assert not info.reused
    assert fake_cluster["started"] == [2]
    assert len(fake_cluster["terminated"]) == 1  # survivors of the stale cluster are stopped
    assert local.read_state() is None  # the fake start wrote none; the stale one is gone
    assert local.recorded_cluster() is None


def test_silent_cluster_is_replaced(fake_cluster: dict, scratch_home: Path) -> None:
    local.write_state(make_record(scratch_home, [101]))
    fake_cluster["answers"] = False
    local.start_local_cluster(1, progress=lambda _: None)
    assert fake_cluster["started"] == [1]


def test_zero_brokers_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        local.start_local_cluster(0)


def test_stop_without_record(scratch_home: Path) -> None:
    assert local.stop_local_cluster(progress=lambda _: None) is False


def test_stop_removes_data_and_record(fake_cluster: dict, scratch_home: Path) -> None:
    record = make_record(scratch_home, [101])
    Path(record["data_dir"], "node-1").mkdir(parents=True)
    local.write_state(record)
    assert local.stop_local_cluster(progress=lambda _: None) is True
    assert not Path(record["data_dir"]).exists()
    assert not settings.broker_state_file().exists()


def test_stop_never_deletes_outside_home(
    fake_cluster: dict, scratch_home: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    record = make_record(scratch_home, [101])
    record["data_dir"] = str(outside)
    local.write_state(record)
    assert local.stop_local_cluster(progress=lambda _: None) is True
    assert outside.exists()


def test_kill_node_of_unknown_node(fake_cluster: dict, scratch_home: Path) -> None:
    with pytest.raises(BrokerError, match="no local Kafka cluster"):
        local.kill_node(1)
    local.write_state(make_record(scratch_home, [101]))
    with pytest.raises(BrokerError, match="no node 7"):
        local.kill_node(7)


# --- maven cache ------------------------------------------------------------------------------


def test_stamped_jars_are_used_without_maven(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = maven.kafka_lib_dir()
    lib.mkdir(parents=True)
    (lib / maven.STAMP_NAME).write_text("done")
    monkeypatch.setattr(maven.subprocess, "run", lambda *a, **k: pytest.fail("ran Maven"))
    assert maven.resolve_kafka_jars(progress=lambda _: pytest.fail("printed")) == lib


def test_missing_maven_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maven.shutil, "which", lambda name: None)
    with pytest.raises(BrokerError, match="Install a JDK"):
        maven.resolve_kafka_jars(progress=lambda _: None)


# --- provisioning ---------------------------------------------------------------------------


def test_explicit_and_environment_clusters_are_external(monkeypatch: pytest.MonkeyPatch) -> None:
    provided = provision.provide_cluster("broker:9092")
    assert (provided.bootstrap_servers, provided.kind, provided.owned) == (
        "broker:9092",
        "external",
        False,
    )
    provided.stop()  # a no-op: it was never ours
    monkeypatch.setenv(settings.ENV_BOOTSTRAP, "env-broker:9092")
    assert provision.provide_cluster().bootstrap_servers == "env-broker:9092"


def test_owned_cluster_is_stopped_once_asked() -> None:
    stopped: list[bool] = []
    provision.Provided("x:1", "local", owned=True, stopper=lambda: stopped.append(True)).stop()
    provision.Provided("x:1", "local", owned=False, stopper=lambda: stopped.append(False)).stop()
    assert stopped == [True]


def test_wait_for_unreachable_broker_fails_fast_and_quietly(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BrokerError, match=r"did not answer a metadata request within 1 s"):
        provision.wait_for_broker(f"127.0.0.1:{port}", deadline_s=1)
    assert capfd.readouterr().err == ""


def test_log_tail_keeps_the_first_error_and_drops_stack_frames(tmp_path: Path) -> None:
    log = tmp_path / "kafka.log"
    lines = ["[t] INFO starting (x)", "[t] ERROR Unable to start acceptor (y)"]
    lines += ["\tat some.Frame(Frame.java:1)", "Caused by: java.net.BindException: in use"]
    lines += [f"[t] ERROR follow-up {i} (z)" for i in range(50)]
    log.write_text("\n".join(lines) + "\n")
    tail = local.log_tail(log, lines=10).splitlines()
    assert len(tail) == 10
    assert tail[0] == "[t] ERROR Unable to start acceptor (y)"
    assert "Caused by: java.net.BindException: in use" in tail
    assert not any("Frame.java" in line for line in tail)
    assert tail[-1] == "[t] ERROR follow-up 49 (z)"
    assert local.log_tail(tmp_path / "missing.log").startswith("(no log:")


# --- a cluster that died keeps its data --------------------------------------------------


def with_data(record: dict) -> dict:
    """Give every node of ``record`` a formatted log directory, as Kafka's StorageTool does."""
    for node in record["nodes"]:
        Path(node["log_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(node["log_dir"]) / "meta.properties").write_text(
            "cluster.id=AAAAAAAAAAAAAAAAAAAAAA\n"
        )
    return record


@pytest.fixture
def restarts(fake_cluster: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Restarting on data is recorded, not done."""

    def restart(record: dict, brokers: int, progress: object, deadline_s: float):
        fake_cluster.setdefault("restarted", []).append(record["bootstrap_servers"])
        return local.info_from_record(record)

    monkeypatch.setattr(local, "restart_on_data", restart)
    return fake_cluster


def test_a_dead_cluster_with_data_is_restarted_not_replaced(restarts: dict, scratch_home: Path):
    local.write_state(with_data(make_record(scratch_home, [555])))
    info = local.start_local_cluster(1, progress=lambda _: None)
    assert restarts["restarted"] == ["127.0.0.1:7000"] and restarts["started"] == []
    assert info.bootstrap_servers == "127.0.0.1:7000"
    assert all(Path(n["log_dir"]).is_dir() for n in local.read_state()["nodes"])


def test_a_silent_cluster_with_data_is_restarted_on_it(restarts: dict, scratch_home: Path):
    local.write_state(with_data(make_record(scratch_home, [101])))
    restarts["answers"] = False
    local.start_local_cluster(1, progress=lambda _: None)
    assert restarts["restarted"] == ["127.0.0.1:7000"] and restarts["started"] == []


def test_fresh_says_it_deletes_data_and_starts_new(restarts: dict, scratch_home: Path):
    local.write_state(with_data(make_record(scratch_home, [101])))
    said: list[str] = []
    local.start_local_cluster(1, progress=said.append, fresh=True)
    assert restarts["started"] == [1] and "restarted" not in restarts
    assert len(restarts["terminated"]) == 1 and local.read_state() is None
    assert "--fresh" in said[0] and "deleting its data" in said[0]


def test_restart_on_data_of_another_size_is_refused(fake_cluster: dict, scratch_home: Path):
    local.write_state(with_data(make_record(scratch_home, [555])))
    with pytest.raises(BrokerError, match=r"--brokers 1, or pass --fresh"):
        local.start_local_cluster(3, progress=lambda _: None)
    assert fake_cluster["started"] == [] and local.read_state() is not None


def test_restart_with_a_node_that_lost_its_data_is_refused(fake_cluster: dict, scratch_home: Path):
    record = with_data(make_record(scratch_home, [555, 556, 557]))
    (Path(record["nodes"][1]["log_dir"]) / "meta.properties").unlink()
    local.write_state(record)
    with pytest.raises(BrokerError, match=r"node\(s\) \[2\] .* lost their data: .*--fresh"):
        local.start_local_cluster(3, progress=lambda _: None)
    assert fake_cluster["started"] == []


def test_move_ports_rewrites_every_node_and_the_record(scratch_home: Path) -> None:
    record = make_record(scratch_home, [None, None, None])
    for node in record["nodes"]:
        Path(node["props_file"]).parent.mkdir(parents=True, exist_ok=True)
    local.move_ports(record, [9000, 9001, 9002, 9003, 9004, 9005])
    assert record["bootstrap_servers"] == "127.0.0.1:9000,127.0.0.1:9002,127.0.0.1:9004"
    assert [(n["port"], n["controller_port"]) for n in record["nodes"]] == [
        (9000, 9001),
        (9002, 9003),
        (9004, 9005),
    ]
    props = Path(record["nodes"][1]["props_file"]).read_text()
    assert "controller.quorum.voters=1@127.0.0.1:9001,2@127.0.0.1:9003,3@127.0.0.1:9005" in props
    assert f"log.dirs={record['nodes'][1]['log_dir']}" in props
