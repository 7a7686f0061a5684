"""A secured local Kafka node, shaped like a production estate, to try cutline against.

One combined broker+controller from the same jars as ``cutline kafka start``, with:

- a ``SASL_SSL`` listener (SCRAM-SHA-512 users), the one most estates expose;
- an ``MTLS`` listener (SSL, client certificate required; principal = the certificate's CN);
- the controller and inter-broker traffic over mutual TLS as the ``broker`` principal;
- the StandardAuthorizer on (nothing is allowed without an ACL), super users ``broker`` and
  ``admin``.

Its certificates (a CA, the broker's with SAN 127.0.0.1/localhost, clients') are made here
with ``openssl``: PEM for librdkafka, a PKCS12 key store for the broker. Its files live under
``$CUTLINE_HOME/kafka-secure``, apart from the plain local cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from cutline import settings
from cutline.broker.local import (
    HOST,
    NodeSpec,
    _java_command,
    _launch,
    _terminate,
    free_ports,
    log_tail,
    pid_alive,
)
from cutline.broker.maven import MAVEN_TIMEOUT_S, file_lock, require_tool, resolve_kafka_jars
from cutline.errors import BrokerError
from cutline.kafka_config import KafkaTarget
from cutline.settings import Topics

Progress = Callable[[str], object]
ADMIN_USER = "admin"
BROKER_CN = "broker"
SCRAM = "SCRAM-SHA-512"


def secure_home() -> Path:
    return settings.cutline_home() / "kafka-secure"


# --- certificates ---------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [require_tool("openssl"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed: {done.stderr.strip()[-400:]}")


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate PEM, key PEM)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", cert.name, "-days", "30", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def issue_certificate(
    directory: Path, ca: tuple[Path, Path], common_name: str, sans: Iterable[str] = ()
) -> tuple[Path, Path]:
    """A certificate for ``common_name`` signed by ``ca``: (certificate PEM, key PEM)."""
    cert, key, csr = (directory / f"{common_name}{ext}" for ext in (".pem", ".key", ".csr"))
    ext = directory / f"{common_name}.ext"
    lines = ["extendedKeyUsage=serverAuth,clientAuth", "basicConstraints=CA:FALSE"]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={common_name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-set_serial", str(secrets.randbits(63)), "-days", "30", "-extfile", ext.name,
        "-out", cert.name,
        cwd=directory,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return cert, key


def pkcs12_keystore(directory: Path, cert: Path, key: Path, ca: Path, password: str) -> Path:
    """The broker's key store (Java reads PKCS12; librdkafka clients use the PEM files)."""
    store = directory / f"{cert.stem}.p12"
    _openssl(
        "pkcs12", "-export", "-in", str(cert), "-inkey", str(key), "-certfile", str(ca),
        "-name", cert.stem, "-out", store.name, "-passout", f"pass:{password}",
        cwd=directory,
    )  # fmt: skip
    return store


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureLayout:
    """Where the secured node's files go and which ports it listens on."""

    home: Path
    sasl_port: int
    mtls_port: int
    controller_port: int

    @property
    def tls(self) -> Path:
        return self.home / "tls"

    @property
    def node(self) -> NodeSpec:
        return NodeSpec(1, self.sasl_port, self.controller_port, self.home / "node-1")

    @property
    def sasl_bootstrap(self) -> str:
        return f"{HOST}:{self.sasl_port}"

    @property
    def mtls_bootstrap(self) -> str:
        return f"{HOST}:{self.mtls_port}"


def render_secure_properties(
    layout: SecureLayout,
    keystore: Path,
    password: str,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """server.properties: SASL_SSL + mutual TLS listeners, StandardAuthorizer, TLS inside.

    ``overrides`` replace or add broker settings (tests turn auto-creation on to prove
    cutline never asks for it)."""
    node = layout.node
    ca = layout.tls / "ca.pem"
    entries = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{layout.controller_port}",
        "listeners": f"SASL_SSL://{HOST}:{layout.sasl_port},MTLS://{HOST}:{layout.mtls_port},"
        f"CONTROLLER://{HOST}:{layout.controller_port}",
        "advertised.listeners": f"SASL_SSL://{HOST}:{layout.sasl_port},"
        f"MTLS://{HOST}:{layout.mtls_port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:SSL",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "MTLS",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": password,
        "ssl.key.password": password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca),
        "listener.name.mtls.ssl.client.auth": "required",
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
        "sasl.enabled.mechanisms": SCRAM,
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{BROKER_CN};User:{ADMIN_USER}",
        "allow.everyone.if.no.acl.found": "false",
        "log.dirs": str(node.log_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        **(overrides or {}),
    }
    header = "# Written by cutline: a secured single-node local cluster.\n"
    return header + "".join(f"{key}={value}\n" for key, value in entries.items())


def scram_client_properties(bootstrap: str, ca: Path, user: str, password: str) -> str:
    """A Java-style client.properties for a SCRAM user (what an estate hands out)."""
    return (
        f"bootstrap.servers={bootstrap}\n"
        "security.protocol=SASL_SSL\n"
        f"sasl.mechanism={SCRAM}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{user}" password="{password}";\n'
        f"ssl.ca.location={ca}\n"
    )


def mtls_client_properties(bootstrap: str, ca: Path, cert: Path, key: Path) -> str:
    return (
        f"bootstrap.servers={bootstrap}\n"
        "security.protocol=SSL\n"
        f"ssl.ca.location={ca}\n"
        f"ssl.certificate.location={cert}\n"
        f"ssl.key.location={key}\n"
    )


# --- the ACLs cutline needs (the README's list, as code) ------------------------------------


@dataclass(frozen=True)
class Grant:
    """One ACL: ``operation`` on a resource; what the README's ACL list says, line by line."""

    resource_type: ResourceType
    name: str
    operation: AclOperation
    prefixed: bool = False

    def binding(self, principal: str) -> AclBinding:
        pattern = ResourcePatternType.PREFIXED if self.prefixed else ResourcePatternType.LITERAL
        return AclBinding(
            self.resource_type,
            self.name,
            pattern,
            principal,
            "*",
            self.operation,
            AclPermissionType.ALLOW,
        )

    def __str__(self) -> str:
        kind = {
            ResourceType.TOPIC: "topic",
            ResourceType.GROUP: "group",
            ResourceType.TRANSACTIONAL_ID: "transactional id",
            ResourceType.BROKER: "cluster",
        }[self.resource_type]
        star = "*" if self.prefixed else ""
        return f"{self.operation.name} on {kind} {self.name}{star}"


def required_grants(source: str) -> list[Grant]:
    """The README's ACL list for ``source``: what capture, replicate and replay need.

    Describe is not listed: Kafka implies it from Read and Write. The reader groups never
    join or commit (they assign partitions); their ACL only keeps librdkafka from warning.
    """
    topics = Topics(source)
    everything = (topics.ops, topics.capture_position, topics.control, topics.dead_letter)
    grants = [Grant(ResourceType.TOPIC, t, AclOperation.CREATE) for t in everything]
    grants += [Grant(ResourceType.TOPIC, t, AclOperation.WRITE) for t in everything]
    grants += [
        Grant(ResourceType.TOPIC, t, AclOperation.READ)
        for t in (topics.ops, topics.capture_position, topics.control)
    ]
    grants += [
        Grant(ResourceType.TRANSACTIONAL_ID, topics.capture_transactional_id, AclOperation.WRITE),
        Grant(ResourceType.GROUP, topics.replication_group, AclOperation.READ),
        Grant(ResourceType.GROUP, f"{topics.capture_position}.reader", AclOperation.READ),
        Grant(ResourceType.GROUP, f"{topics.control}.", AclOperation.READ, prefixed=True),
        Grant(ResourceType.GROUP, topics.replay_group_prefix, AclOperation.READ, prefixed=True),
    ]
    return grants


# --- running it -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureCluster:
    """A running secured node and the client settings to reach it."""

    layout: SecureLayout
    admin_properties: Path  # SASL_SSL as the super user ``admin``
    pid: int

    @property
    def ca(self) -> Path:
        return self.layout.tls / "ca.pem"

    def admin_target(self) -> KafkaTarget:
        from cutline.kafka_config import from_file, translate_java

        props = translate_java(from_file(self.admin_properties), "admin")
        props.pop("bootstrap.servers", None)
        return KafkaTarget(self.layout.sasl_bootstrap, props)

    def admin(self) -> AdminClient:
        from cutline.kafka_clients import make_admin

        return make_admin(self.admin_target())

    def add_scram_user(self, user: str, password: str, deadline_s: float = 30.0) -> None:
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
        upsert = UserScramCredentialUpsertion(user, info, password.encode())
        admin = self.admin()  # kept referenced until its futures are done
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=deadline_s)
        # The broker learns the credential from the metadata log a moment later; until then
        # the user's logins fail. Wait until it describes the user.
        end = time.monotonic() + deadline_s
        while True:
            try:
                found = admin.describe_user_scram_credentials([user])[user].result(timeout=5)
                if found.scram_credential_infos:
                    return
            except KafkaException:
                pass
            if time.monotonic() > end:
                raise BrokerError(f"SCRAM user {user} did not appear within {deadline_s:.0f} s")
            time.sleep(0.2)

    def grant(self, principal: str, grants: Iterable[Grant], deadline_s: float = 30.0) -> None:
        bindings = [g.binding(principal) for g in grants]
        if bindings:
            admin = self.admin()
            for future in admin.create_acls(bindings, request_timeout=deadline_s).values():
                future.result(timeout=deadline_s)

    def revoke(self, principal: str, grants: Iterable[Grant], deadline_s: float = 30.0) -> None:
        from confluent_kafka.admin import AclBindingFilter

        filters = [
            AclBindingFilter(
                b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                b.operation, b.permission_type,
            )
            for b in (g.binding(principal) for g in grants)
        ]  # fmt: skip
        if filters:
            admin = self.admin()
            for future in admin.delete_acls(filters, request_timeout=deadline_s).values():
                future.result(timeout=deadline_s)


def _format(layout: SecureLayout, lib_dir: Path, log4j: Path, admin_password: str) -> None:
    command = _java_command(
        lib_dir, log4j, "kafka.tools.StorageTool", "format",
        "-t", "cutline-secure-local-0", "-c", str(layout.node.props_file),
        "--add-scram", f"{SCRAM}=[name={ADMIN_USER},password={admin_password}]",
    )  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-10:])
        raise BrokerError(f"formatting the secured node failed:\n{tail}")


def _await_admin(cluster: SecureCluster, proc: subprocess.Popen, deadline_s: float) -> None:
    admin = cluster.admin()
    end = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise BrokerError(
                f"the secured Kafka node exited (status {proc.returncode}); the end of "
                f"{cluster.layout.node.log_file}:\n{log_tail(cluster.layout.node.log_file)}"
            )
        with contextlib.suppress(KafkaException):
            if admin.list_topics(timeout=2).brokers:
                return
        if time.monotonic() > end:
            raise BrokerError(
                f"the secured Kafka node did not answer within {deadline_s:.0f} s; the end of "
                f"{cluster.layout.node.log_file}:\n{log_tail(cluster.layout.node.log_file)}"
            )
        time.sleep(0.3)


def start_secure_cluster(
    *,
    home: Path | None = None,
    progress: Progress = print,
    deadline_s: float = 120,
    overrides: Mapping[str, str] | None = None,
) -> SecureCluster:
    """Start a fresh secured node (a running one recorded under ``home`` is replaced)."""
    home = home or secure_home()
    with file_lock(home / ".lock", timeout_s=deadline_s + MAVEN_TIMEOUT_S, what="the secured node"):
        stop_secure_cluster(home=home, progress=lambda _m: None)
        lib_dir = resolve_kafka_jars(progress=progress)
        started = time.monotonic()
        shutil.rmtree(home / "node-1", ignore_errors=True)
        shutil.rmtree(home / "tls", ignore_errors=True)
        sasl, mtls, controller = free_ports(3)
        layout = SecureLayout(home, sasl, mtls, controller)
        tls = layout.tls
        ca = make_ca(tls, "ca")
        broker = issue_certificate(tls, ca, BROKER_CN, ["IP:127.0.0.1", "DNS:localhost"])
        issue_certificate(tls, ca, "cutline-client")
        store_password = secrets.token_hex(12)
        keystore = pkcs12_keystore(tls, *broker, ca[0], store_password)
        for path in tls.iterdir():
            path.chmod(0o600)
        node = layout.node
        node.node_dir.mkdir(parents=True)
        node.props_file.write_text(
            render_secure_properties(layout, keystore, store_password, overrides)
        )
        node.props_file.chmod(0o600)
        log4j = home / "log4j2.properties"
        log4j.write_bytes(
            resources.files("cutline.broker").joinpath("log4j2.properties").read_bytes()
        )
        admin_password = secrets.token_urlsafe(18)
        _format(layout, lib_dir, log4j, admin_password)
        admin_props = home / "admin.properties"
        admin_props.write_text(
            scram_client_properties(layout.sasl_bootstrap, ca[0], ADMIN_USER, admin_password)
        )
        admin_props.chmod(0o600)
        (home / "mtls-client.properties").write_text(
            mtls_client_properties(
                layout.mtls_bootstrap, ca[0], tls / "cutline-client.pem", tls / "cutline-client.key"
            )
        )
        progress(f"starting a secured local Kafka node at {layout.sasl_bootstrap} (SASL_SSL)…")
        proc = _launch(node, lib_dir, log4j)
        state = {
            "pid": proc.pid,
            "props_file": str(node.props_file),
            "sasl_port": sasl,
            "mtls_port": mtls,
            "controller_port": controller,
        }
        (home / "state.json").write_text(json.dumps(state))
        cluster = SecureCluster(layout, admin_props, proc.pid)
        try:
            _await_admin(cluster, proc, deadline_s - (time.monotonic() - started))
        except BaseException:
            stop_secure_cluster(home=home, progress=lambda _m: None)
            raise
        progress(
            f"secured Kafka is up ({time.monotonic() - started:.1f} s): SASL_SSL "
            f"{layout.sasl_bootstrap}, mutual TLS {layout.mtls_bootstrap}"
        )
        return cluster


def stop_secure_cluster(*, home: Path | None = None, progress: Progress = print) -> bool:
    """Stop the recorded secured node and delete its data; False if none was recorded."""
    home = home or secure_home()
    try:
        state = json.loads((home / "state.json").read_text())
    except (OSError, ValueError):
        return False
    node = {"pid": state.get("pid"), "props_file": state.get("props_file")}
    if pid_alive(node["pid"], node["props_file"]):
        progress(f"stopping the secured local Kafka node (pid {node['pid']})…")
    _terminate([node], 20)
    shutil.rmtree(home / "node-1", ignore_errors=True)
    (home / "state.json").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        os.unlink(home / "admin.properties")
    return True


def kafka_command(action: str, *, progress: Progress) -> int:
    """``cutline kafka start|stop --secure``: the last line of start is a client.properties."""
    if action == "start":
        cluster = start_secure_cluster(progress=progress)
        home = cluster.layout.home
        progress(
            f"admin (super user) over SASL_SSL: {cluster.admin_properties}; a mutual-TLS client "
            f"(principal User:cutline-client, no ACLs yet): {home / 'mtls-client.properties'}. "
            "Stop it with `cutline kafka stop --secure`"
        )
        print(cluster.admin_properties)
        return 0
    if not stop_secure_cluster(progress=progress):
        progress("no secured local cluster was recorded; nothing to stop")
    return 0
