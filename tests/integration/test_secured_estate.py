"""cutline in a secured estate: a real Kafka node with SASL_SSL (SCRAM-SHA-512), mutual TLS
and the StandardAuthorizer, and principals holding exactly the README's ACL list.

The node is started once for the module (``cutline.broker.secure``, its own home), so these
tests use no other broker. Each test has its own source, principal grants and files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AclOperation, ResourceType

from backups.catalog import list_backups
from cutline.broker.secure import (
    Grant,
    SecureCluster,
    issue_certificate,
    make_ca,
    mtls_client_properties,
    required_grants,
    scram_client_properties,
    start_secure_cluster,
    stop_secure_cluster,
)
from cutline.errors import BrokerError
from cutline.kafka_clients import (
    ensure_topics,
    make_producer,
    source_topic_specs,
    wait_for_cluster,
)
from cutline.kafka_config import KafkaTarget
from cutline.settings import Topics, resolve_kafka
from tests.integration.pipeline import (
    CUTLINE,
    TABLES,
    Pipeline,
    avro_rows,
    backup_rows,
    primary_columns,
    table_rows,
    wait_until,
)
from tests.integration.workload import random_transactions

MTLS_PRINCIPAL = "User:cutline-client"  # the CN of the client certificate the node made


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    home = tmp_path_factory.mktemp("secure-home") / "kafka-secure"
    # Auto-creation on, as on many estates (Kafka's default): a client that asked for it
    # would turn a typo'd --source into topics, so every test here proves cutline never does.
    cluster = start_secure_cluster(
        home=home,
        progress=lambda m: print(f"[secure] {m}"),
        overrides={"auto.create.topics.enable": "true"},
    )
    try:
        yield cluster
    finally:
        stop_secure_cluster(home=home, progress=lambda _m: None)


@pytest.fixture
def source() -> str:
    return f"sec-{uuid.uuid4().hex[:10]}"


def _scram_user(secured: SecureCluster, root: Path) -> tuple[str, Path]:
    """A new SCRAM user with no ACLs, and its Java-style client.properties (jaas line)."""
    user = f"app-{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(12)
    secured.add_scram_user(user, password)
    properties = root / f"{user}.properties"
    properties.write_text(
        scram_client_properties(secured.layout.sasl_bootstrap, secured.ca, user, password)
    )
    target = resolve_kafka(None, properties)

    def logs_in() -> bool:
        try:
            return wait_for_cluster(target, deadline_s=5) > 0
        except BrokerError:
            return False

    wait_until(logs_in, 20, f"user {user} to be able to log in")
    return f"User:{user}", properties


def _mtls_properties(secured: SecureCluster, root: Path) -> Path:
    tls = secured.layout.tls
    properties = root / "mtls.properties"
    properties.write_text(
        mtls_client_properties(
            secured.layout.mtls_bootstrap,
            secured.ca,
            tls / "cutline-client.pem",
            tls / "cutline-client.key",
        )
    )
    return properties


def _assert_exact(pipeline: Pipeline) -> None:
    """Every backup (DuckDB and Avro) and a restore equal the primary at their cut."""
    published = pipeline.wait_for_backups(sorted(pipeline.oracle), deadline_s=180)
    for marker_id, expected in pipeline.oracle.items():
        in_duckdb = backup_rows(published[marker_id])
        assert in_duckdb == {t: expected[t] for t in TABLES}, f"backup {marker_id} differs"
        assert avro_rows(published[marker_id])[0] == in_duckdb, f"backup {marker_id}: Avro"
    newest = max(pipeline.oracle)
    restored = pipeline.root / f"restored-{newest}.sqlite"
    done = pipeline.cli(
        "restore", "--backups", str(pipeline.backups), "--source", pipeline.source,
        "--marker", str(newest), "--to", str(restored),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(restored) as conn:
        got = {t: table_rows(conn, t, primary_columns(conn, t)) for t in TABLES}
    assert got == pipeline.oracle[newest], "the restore differs from the primary at its cut"


def _run_workload(pipeline: Pipeline, cuts: int) -> None:
    stop = threading.Event()
    counts: list[int] = []
    writer = threading.Thread(target=lambda: counts.append(random_transactions(pipeline, stop, 3)))
    conn = pipeline.connect()
    try:
        writer.start()
        for _ in range(cuts):
            time.sleep(0.5)
            pipeline.cut(conn)
    finally:
        stop.set()
        writer.join(30)
    pipeline.cut(conn)
    conn.close()
    assert counts and counts[0] > 10


def _last_assignment(log: str) -> list[int]:
    found = re.findall(r"assigned partitions \[([0-9, ]*)\]", log)
    return [int(p) for p in found[-1].split(",") if p.strip()] if found else []


def test_sasl_ssl_principal_with_the_readme_acls_runs_everything(
    secured: SecureCluster, source: str, tmp_path: Path
) -> None:
    principal, config = _scram_user(secured, tmp_path)
    secured.grant(principal, required_grants(source))
    kafka = ("--kafka-config", str(config))
    with Pipeline(secured.layout.sasl_bootstrap, source, tmp_path) as pipeline:
        pipeline.create_primary()
        pipeline.start_capture(4, *kafka)
        workers = [pipeline.start_replicator(n, *kafka) for n in ("replicate-a", "replicate-b")]

        def split() -> bool:
            pipeline.check_alive()
            shares = [_last_assignment(w.log.read_text()) for w in workers]
            return all(shares) and sorted(shares[0] + shares[1]) == list(range(4))

        wait_until(split, 90, "the two replication processes to share the 4 partitions")
        _run_workload(pipeline, cuts=3)
        marked = pipeline.cli("mark", "--db", str(pipeline.db))
        assert marked.returncode == 0, marked.stderr
        _assert_exact(pipeline)
        assert re.search(r'"marker_id": (\d+)', marked.stdout)
        _assert_replay_rebuilds_the_backups(pipeline, kafka)


def test_mutual_tls_principal_with_the_readme_acls_runs_everything(
    secured: SecureCluster, source: str, tmp_path: Path
) -> None:
    """Capture, replicate, replay, status and dlq over mutual TLS, with the README's ACLs
    (status and dlq: Read on the dead-letter topic too, as the README says)."""
    config = _mtls_properties(secured, tmp_path)
    dlq_read = Grant(ResourceType.TOPIC, Topics(source).dead_letter, AclOperation.READ)
    secured.grant(MTLS_PRINCIPAL, [*required_grants(source), dlq_read])
    kafka = ("--kafka-config", str(config))
    with Pipeline(secured.layout.mtls_bootstrap, source, tmp_path) as pipeline:
        pipeline.create_primary()
        pipeline.start_capture(2, *kafka)
        pipeline.start_replicator("replicate", *kafka)
        _run_workload(pipeline, cuts=2)
        _assert_exact(pipeline)
        _assert_replay_rebuilds_the_backups(pipeline, kafka)
        _assert_status_and_dlq_read(pipeline, kafka)


def _assert_replay_rebuilds_the_backups(pipeline: Pipeline, kafka: tuple[str, ...]) -> None:
    replayed = pipeline.root / "replayed"
    done = pipeline.cli(
        "replay", "--replica", str(replayed / "replica"), "--backups",
        str(replayed / "backups"), "--source", pipeline.source, "--idle-timeout", "30", *kafka,
        timeout_s=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rebuilt = {b.marker_id: b for b in list_backups(replayed / "backups", pipeline.source)}
    for marker_id, expected in pipeline.oracle.items():
        in_duckdb = backup_rows(rebuilt[marker_id])
        assert in_duckdb == {t: expected[t] for t in TABLES}, f"replayed {marker_id} differs"
        assert avro_rows(rebuilt[marker_id])[0] == in_duckdb, f"replayed {marker_id}: Avro"


def _assert_status_and_dlq_read(pipeline: Pipeline, kafka: tuple[str, ...]) -> None:
    """They take the command's --kafka-config like every other command."""
    source = ("--source", pipeline.source)
    status = pipeline.cli("status", *source, *kafka, "--json")
    assert status.returncode == 0, status.stderr
    newest = json.loads(status.stdout)["newest_backup"]
    assert newest["marker_id"] == max(pipeline.oracle), newest
    dlq = pipeline.cli("dlq", *source, *kafka, "--json")
    assert dlq.returncode == 0, dlq.stderr
    assert json.loads(dlq.stdout)["count"] == 0


def _stderr_line(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"want one clear line, got:\n{done.stderr}"
    return lines[0]


def test_a_wrong_password_is_reported_in_one_line_within_seconds(
    secured: SecureCluster, source: str, tmp_path: Path
) -> None:
    _, config = _scram_user(secured, tmp_path)
    text = config.read_text()
    config.write_text(re.sub(r'password="[^"]*"', 'password="not-the-password"', text))
    with Pipeline(secured.layout.sasl_bootstrap, source, tmp_path) as pipeline:
        pipeline.create_primary()
        started = time.monotonic()
        done = pipeline.cli(
            "capture", "--db", str(pipeline.db), "--tables", "accounts", "--source", source,
            "--kafka-config", str(config),
        )  # fmt: skip
    assert done.returncode == 1
    line = _stderr_line(done)
    assert "authentication failed" in line and "sasl.password" in line
    assert "not-the-password" not in done.stderr
    assert "kafka start" not in line
    assert time.monotonic() - started < 15


def test_an_untrusted_ca_is_reported_as_such(
    secured: SecureCluster, source: str, tmp_path: Path
) -> None:
    _, config = _scram_user(secured, tmp_path)
    other_ca, _ = make_ca(tmp_path / "other-ca", "other-ca")
    config.write_text(config.read_text().replace(str(secured.ca), str(other_ca)))
    done = Pipeline(secured.layout.sasl_bootstrap, source, tmp_path).cli(
        "replay", "--replica", str(tmp_path / "r"), "--backups", str(tmp_path / "b"),
        "--source", source, "--kafka-config", str(config),
    )  # fmt: skip
    assert done.returncode == 1
    line = _stderr_line(done)
    assert "TLS handshake failed" in line and "unknown CA" in line and "ssl.ca.location" in line


# Each ACL whose absence stops a command, and the command that meets it first. Write on the
# control topic (met at a cut), Write on the dead-letter topic (at a dead letter) and Read on
# the capture topic (on a restart) have their own tests below. The reader groups are never
# needed (their readers assign partitions and never commit).
MISSING = [
    ("CREATE", "ops", "capture"),
    ("CREATE", "capture", "capture"),
    ("CREATE", "control", "capture"),
    ("CREATE", "dlq", "capture"),
    ("WRITE", "ops", "capture"),
    ("WRITE", "capture", "capture"),
    ("WRITE", "txn", "capture"),
    ("READ", "ops", "replicate"),
    ("READ", "control", "replicate"),
    ("READ", "replicate", "replicate"),
]


def _grant_named(source: str, operation: str, which: str) -> Grant:
    topics = Topics(source)
    name = {
        "ops": topics.ops,
        "capture": topics.capture_position,
        "control": topics.control,
        "dlq": topics.dead_letter,
        "txn": topics.capture_transactional_id,
        "replicate": topics.replication_group,
    }[which]
    kinds = {"txn": ResourceType.TRANSACTIONAL_ID, "replicate": ResourceType.GROUP}
    return Grant(kinds.get(which, ResourceType.TOPIC), name, AclOperation[operation])


@pytest.mark.parametrize(("operation", "which", "command"), MISSING)
def test_each_missing_acl_is_named_in_one_line(
    secured: SecureCluster, source: str, tmp_path: Path, operation: str, which: str, command: str
) -> None:
    missing = _grant_named(source, operation, which)
    grants = required_grants(source)
    assert missing in grants, "the README's list has this ACL"
    principal, config = _scram_user(secured, tmp_path)
    secured.grant(principal, [g for g in grants if g != missing])
    kafka = ["--source", source, "--kafka-config", str(config)]
    with Pipeline(secured.layout.sasl_bootstrap, source, tmp_path) as pipeline:
        pipeline.create_primary()
        if command == "capture":
            args = ["capture", "--db", str(pipeline.db), "--tables", "accounts", *kafka]
        else:  # the topics exist, as after a capture
            ensure_topics(secured.admin_target(), source_topic_specs(Topics(source), 2))
            replica, backups = str(pipeline.replica), str(pipeline.backups)
            args = ["replicate", "--replica", replica, "--backups", backups, *kafka]
        started = time.monotonic()
        done = pipeline.cli(*args, timeout_s=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert missing.name in last, last
    assert f"{operation.title()} on " in last and "not authorized" in last, last
    assert time.monotonic() - started < 30, "said within seconds"


@pytest.mark.parametrize("listener", ["SASL_SSL", "mutual TLS"])
def test_the_demo_runs_over_the_secured_listeners(
    secured: SecureCluster, tmp_path: Path, listener: str
) -> None:
    """The demo names its own sources (demo-<time>): the README's ACLs, as prefixed ones."""
    if listener == "SASL_SSL":
        principal, config = _scram_user(secured, tmp_path)
        bootstrap = secured.layout.sasl_bootstrap
    else:
        principal, config = MTLS_PRINCIPAL, _mtls_properties(secured, tmp_path)
        bootstrap = secured.layout.mtls_bootstrap
    prefixed = [Grant(g.resource_type, g.name, g.operation, prefixed=True) for g in _demo_grants()]
    secured.grant(principal, prefixed)
    done = Pipeline(bootstrap, "demo", tmp_path).cli(
        "demo", "--workdir", str(tmp_path / "demo"), "--markers", "2",
        "--kafka-config", str(config), "--bootstrap-servers", bootstrap,
        timeout_s=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "OK: 2 consistent backups" in done.stdout


def _demo_grants() -> list[Grant]:
    """Each grant of the README's list, its resource cut to the prefix cutline.demo-."""
    out: dict[tuple, Grant] = {}
    for g in required_grants("demo-"):
        name = g.name.split("demo-", 1)[0] + "demo-"
        out[(g.resource_type, name, g.operation)] = Grant(g.resource_type, name, g.operation)
    return list(out.values())


def test_a_hostname_mismatch_is_told_apart_from_an_unknown_ca(tmp_path: Path) -> None:
    """librdkafka says "could not be verified" for both; cutline says which it is.

    A real TLS listener (Python's ssl) whose certificate, signed by a CA the client
    trusts, names another host.
    """
    ca = make_ca(tmp_path, "ca")
    cert, key = issue_certificate(tmp_path, ca, "elsewhere", ["DNS:elsewhere.example"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.5)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                with contextlib.suppress(OSError), conn:
                    context.wrap_socket(conn, server_side=True).close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        bootstrap = f"127.0.0.1:{server.getsockname()[1]}"
        settings = {"security.protocol": "SSL", "ssl.ca.location": str(ca[0])}
        try:
            started = time.monotonic()
            with pytest.raises(BrokerError) as mismatch:
                wait_for_cluster(KafkaTarget(bootstrap, settings), deadline_s=10)
            assert time.monotonic() - started < 8
            other_ca = make_ca(tmp_path / "other", "other")
            untrusted = {**settings, "ssl.ca.location": str(other_ca[0])}
            with pytest.raises(BrokerError) as unknown:
                wait_for_cluster(KafkaTarget(bootstrap, untrusted), deadline_s=10)
        finally:
            stop.set()
            thread.join(5)
    assert "hostname mismatch" in str(mismatch.value), mismatch.value
    assert "unknown CA" in str(unknown.value), unknown.value


def test_a_missing_write_on_the_control_topic_stops_replicate_at_the_first_cut(
    secured: SecureCluster, source: str, tmp_path: Path
) -> None:
    """Met only when a partition reaches a marker: the cut could never resolve, so say so."""
    missing = Grant(ResourceType.TOPIC, Topics(source).control, AclOperation.WRITE)
    principal, config = _scram_user(secured, tmp_path)
    secured.grant(principal, [g for g in required_grants(source) if g != missing])
    with Pipeline(secured.layout.sasl_bootstrap, source, tmp_path) as pipeline:
        pipeline.create_primary()
        pipeline.start_capture(2, "--kafka-config", str(secured.admin_properties))
        worker = pipeline.start_replicator("replicate", "--kafka-config", str(config))
        conn = pipeline.connect()
        pipeline.cut(conn)
        conn.close()
        wait_until(lambda: worker.popen.poll() is not None, 60, "replicate to stop")
    assert worker.popen.returncode == 1, worker.tail()
    assert "Traceback" not in worker.log.read_text()
    last = worker.tail().strip().splitlines()[-1]
    assert "Write on topic" in last and missing.name in last and "not authorized" in last, last


def test_a_missing_write_on_the_dead_letter_topic_stops_replicate(
    secured: SecureCluster, source: str, tmp_path: Path
) -> None:
    """Met at a dead letter (a record cutline cannot decode, put in the ops topic) when the
    principal may describe the topic; without Describe either, at start-up."""
    topics = Topics(source)
    missing = Grant(ResourceType.TOPIC, topics.dead_letter, AclOperation.WRITE)
    principal, config = _scram_user(secured, tmp_path)
    describe_only = Grant(ResourceType.TOPIC, topics.dead_letter, AclOperation.DESCRIBE)
    secured.grant(principal, [g for g in required_grants(source) if g != missing])
    secured.grant(principal, [describe_only])
    ensure_topics(secured.admin_target(), source_topic_specs(topics, 1))
    producer = make_producer(secured.admin_target())
    producer.produce(topics.ops, b"not a cutline record", b"k", partition=0)
    assert producer.flush(30) == 0
    with Pipeline(secured.layout.sasl_bootstrap, source, tmp_path) as pipeline:
        worker = pipeline.start_replicator("replicate", "--kafka-config", str(config))
        wait_until(lambda: worker.popen.poll() is not None, 60, "replicate to stop")
    assert worker.popen.returncode == 1, worker.tail()
    last = worker.tail().strip().splitlines()[-1]
    assert "Write on topic" in last and missing.name in last and "not authorized" in last, last


def test_a_missing_read_on_the_capture_topic_stops_a_restarted_capture(
    secured: SecureCluster, source: str, tmp_path: Path
) -> None:
    """Met when capture starts again and reads its position back."""
    missing = Grant(ResourceType.TOPIC, Topics(source).capture_position, AclOperation.READ)
    principal, config = _scram_user(secured, tmp_path)
    secured.grant(principal, [g for g in required_grants(source) if g != missing])
    with Pipeline(secured.layout.sasl_bootstrap, source, tmp_path) as pipeline:
        pipeline.create_primary()
        first = pipeline.start_capture(2, "--kafka-config", str(secured.admin_properties))
        wait_until(lambda: "captured" in first.log.read_text(), 60, "the first batch")
        assert first.stop() == 0
        done = pipeline.cli(
            "capture", "--db", str(pipeline.db), "--tables", ",".join(TABLES),
            "--source", source, "--kafka-config", str(config),
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "Read on topic" in last and missing.name in last and "not authorized" in last, last


def _topics_naming(secured: SecureCluster, text: str) -> set[str]:
    return {t for t in secured.admin().list_topics(timeout=10).topics if text in t}


def test_a_typod_source_leaves_no_topic_on_a_broker_that_auto_creates(
    secured: SecureCluster, source: str, tmp_path: Path
) -> None:
    """Every command that only reads Kafka, run as the super user (who may create anything)
    on this broker (auto-creation on): none creates a topic, and each says in one line that
    the source has none, naming the existing source closest to the typo."""
    ensure_topics(secured.admin_target(), source_topic_specs(Topics(source), 1))  # a capture's
    typo = source + "x"
    # the broker does auto-create for a client that asks (else this test would prove nothing)
    probe = f"probe-{uuid.uuid4().hex[:10]}"
    producer = make_producer(secured.admin_target(), **{"allow.auto.create.topics": True})
    producer.produce(probe, b"v")
    assert producer.flush(30) == 0
    assert _topics_naming(secured, probe) == {probe}, "the broker auto-creates topics"

    admin = ("--source", typo, "--kafka-config", str(secured.admin_properties))
    replay = ["replay", "--replica", str(tmp_path / "r"), "--backups", str(tmp_path / "b")]
    with Pipeline(secured.layout.sasl_bootstrap, typo, tmp_path) as pipeline:
        for command in (["status"], ["dlq"], replay):
            done = pipeline.cli(*command, *admin)
            assert done.returncode == 1, done.stderr
            line = _stderr_line(done)
            assert f"source '{typo}' has no topics on this cluster" in line, line
            assert f"sources here: {source}" in line, "the closest existing source comes first"
        worker = pipeline.start_replicator(
            "replicate", "--kafka-config", str(secured.admin_properties)
        )
        wait_until(lambda: "waiting up to" in worker.log.read_text(), 60, "replicate to wait")
        waiting = next(x for x in worker.log.read_text().splitlines() if "waiting up to" in x)
        assert f"or check --source: sources here: {source}" in waiting, waiting
        assert _topics_naming(secured, typo) == set(), "nothing while replicate waits"
        assert worker.stop() == 0, worker.tail()
    assert _topics_naming(secured, typo) == set()
    assert not (tmp_path / "r").exists() and not (tmp_path / "b").exists(), "nor directories"


def test_a_secret_from_a_file_or_the_environment_works_and_is_never_shown(
    secured: SecureCluster, source: str, tmp_path: Path
) -> None:
    """``-X sasl.password=@FILE`` and ``CUTLINE_KAFKA_SASL_PASSWORD`` (also ``=@FILE``) log
    in; with --verbose, in a failure and in --help, the password appears nowhere."""
    principal, config = _scram_user(secured, tmp_path)
    dlq_read = Grant(ResourceType.TOPIC, Topics(source).dead_letter, AclOperation.READ)
    secured.grant(principal, [*required_grants(source), dlq_read])
    ensure_topics(secured.admin_target(), source_topic_specs(Topics(source), 1))
    password = re.search(r'password="([^"]*)"', config.read_text())[1]
    user = re.search(r'username="([^"]*)"', config.read_text())[1]
    no_secret = tmp_path / "no-secret.properties"
    no_secret.write_text(
        re.sub(r"sasl\.jaas\.config=.*\n", f"sasl.username={user}\n", config.read_text())
    )
    secret_file = tmp_path / "kafka-password"
    secret_file.write_text(password + "\n")
    base = [*CUTLINE, "--verbose", "dlq", "--source", source, "--kafka-config", str(no_secret)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUTLINE_KAFKA_")}

    def run(*extra: str, **more_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*base, *extra], env={**env, **more_env}, capture_output=True, text=True, timeout=60
        )

    runs = {
        "-X @file": run("-X", f"sasl.password=@{secret_file}"),
        "environment": run(CUTLINE_KAFKA_SASL_PASSWORD=password),
        "environment @file": run(CUTLINE_KAFKA_SASL_PASSWORD=f"@{secret_file}"),
    }
    for how, done in runs.items():
        assert done.returncode == 0, f"{how}: {done.stderr}"
        assert "0 dead letter(s)" in done.stdout, how
    wrong = run(CUTLINE_KAFKA_SASL_PASSWORD=password + "-wrong")
    assert wrong.returncode == 1 and "authentication failed" in wrong.stderr, wrong.stderr
    helped = subprocess.run(
        [*CUTLINE, "dlq", "--help"],
        env={**env, "CUTLINE_KAFKA_SASL_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=60,
    )
    for done in [*runs.values(), wrong, helped]:
        assert password not in done.stdout + done.stderr, "a secret was shown"
