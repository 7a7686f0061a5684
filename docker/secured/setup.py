"""One-shot set-up of docker/docker-compose.secured.yml, run with the cutline image's python.

``certs --out /secrets``: a CA, the broker's certificate (SAN kafka, localhost, 127.0.0.1) in
a PKCS12 key store, random passwords for the SCRAM users ``admin`` and ``cutline``, the
broker's server.properties (SASL_SSL with SCRAM-SHA-512 for clients, mutual TLS between the
broker's own listeners, the StandardAuthorizer, no auto-created topics), ``admin.properties``
(Java style, for the Kafka CLIs and the health check) and ``client.properties`` for cutline,
whose password stays in its own file (``CUTLINE_KAFKA_SASL_PASSWORD=@/secrets/...``). An
existing set is kept, so a restart changes nothing.

``grant --source S``: the README's ACLs for ``User:cutline`` on source S, plus Read on its
dead-letter topic for ``status`` and ``dlq``; run once the broker answers.

Certificates come from the same helpers as ``cutline kafka start --secure``
(``cutline.broker.secure``), so the two secured set-ups cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

SCRAM = "SCRAM-SHA-512"
KAFKA_UID = 1000  # appuser in apache/kafka
CUTLINE_UID = 10001  # cutline in docker/Dockerfile
INTERNAL = "kafka:9093"  # the compose network
EXTERNAL = "localhost:9094"  # published on the host


def server_properties(secrets_dir: Path, store_password: str) -> str:
    entries = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": "1@kafka:29093",
        "listeners": "SASL_SSL://:9093,SASL_SSL_HOST://:9094,BROKER://:19093,CONTROLLER://:29093",
        "advertised.listeners": f"SASL_SSL://{INTERNAL},SASL_SSL_HOST://{EXTERNAL},"
        "BROKER://kafka:19093",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,SASL_SSL_HOST:SASL_SSL,"
        "BROKER:SSL,CONTROLLER:SSL",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "BROKER",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(secrets_dir / "broker.p12"),
        "ssl.keystore.password": store_password,
        "ssl.key.password": store_password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(secrets_dir / "ca.pem"),
        "listener.name.broker.ssl.client.auth": "required",
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
        "sasl.enabled.mechanisms": SCRAM,
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.sasl_ssl_host.sasl.enabled.mechanisms": SCRAM,
        "listener.name.sasl_ssl_host.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:broker;User:admin",
        "allow.everyone.if.no.acl.found": "false",
        "auto.create.topics.enable": "false",
        "log.dirs": "/var/lib/kafka/data",
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{key}={value}\n" for key, value in entries.items())


def admin_properties(secrets_dir: Path, password: str) -> str:
    """Java style: what the Kafka CLIs take as --command-config (and cutline reads too)."""
    return (
        f"bootstrap.servers={INTERNAL}\n"
        "security.protocol=SASL_SSL\n"
        f"sasl.mechanism={SCRAM}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="admin" password="{password}";\n'
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={secrets_dir / 'ca.pem'}\n"
    )


def client_properties(secrets_dir: Path) -> str:
    """cutline's: no password here; it comes from the environment (@ a file)."""
    return (
        f"bootstrap.servers={INTERNAL}\n"
        "security.protocol=SASL_SSL\n"
        f"sasl.mechanism={SCRAM}\n"
        "sasl.username=cutline\n"
        f"ssl.ca.location={secrets_dir / 'ca.pem'}\n"
    )


def make_certs(out: Path) -> None:
    from cutline.broker.secure import issue_certificate, make_ca, pkcs12_keystore

    if (out / "server.properties").exists():
        print(f"secrets already in {out}; keeping them")
        return
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca(out, "ca")
    broker = issue_certificate(out, ca, "broker", ["DNS:kafka", "DNS:localhost", "IP:127.0.0.1"])
    store_password = secrets.token_hex(16)
    pkcs12_keystore(out, *broker, ca[0], store_password)
    admin_password, cutline_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    files = {
        # name: (text or None when written above, owner uid, mode)
        "ca.pem": (None, None, 0o644),
        "ca.key": (None, 0, 0o600),
        "broker.pem": (None, KAFKA_UID, 0o644),
        "broker.key": (None, 0, 0o600),
        "broker.p12": (None, KAFKA_UID, 0o600),
        "server.properties": (server_properties(out, store_password), KAFKA_UID, 0o600),
        "admin.password": (admin_password + "\n", KAFKA_UID, 0o600),
        # the broker's health check and `acls` (as root) read it
        "admin.properties": (admin_properties(out, admin_password), KAFKA_UID, 0o600),
        "cutline.password": (cutline_password + "\n", CUTLINE_UID, 0o600),
        "client.properties": (client_properties(out), None, 0o644),
    }
    root = os.geteuid() == 0
    for name, (text, owner, mode) in files.items():
        path = out / name
        if text is not None:
            path.write_text(text)
        path.chmod(mode)
        if root and owner is not None:
            os.chown(path, owner, owner)
    # the broker formats its storage with both SCRAM users (see the compose file)
    (out / "scram-users").write_text(
        f"{SCRAM}=[name=admin,password={admin_password}]\n"
        f"{SCRAM}=[name=cutline,password={cutline_password}]\n"
    )
    (out / "scram-users").chmod(0o600)
    if root:
        os.chown(out / "scram-users", KAFKA_UID, KAFKA_UID)
    print(f"wrote the CA, the broker's certificate and the client settings to {out}")


def grant(secrets_dir: Path, source: str) -> None:
    from confluent_kafka.admin import AclOperation, ResourceType

    from cutline.broker.secure import Grant, required_grants
    from cutline.kafka_clients import make_admin, wait_for_cluster
    from cutline.kafka_config import KafkaTarget, from_file, translate_java
    from cutline.settings import Topics

    settings = translate_java(from_file(secrets_dir / "admin.properties"), "admin.properties")
    target = KafkaTarget(settings.pop("bootstrap.servers"), settings)
    wait_for_cluster(target, deadline_s=60)
    dlq_read = Grant(ResourceType.TOPIC, Topics(source).dead_letter, AclOperation.READ)
    grants = [*required_grants(source), dlq_read]
    admin = make_admin(target)
    bindings = [g.binding("User:cutline") for g in grants]
    for future in admin.create_acls(bindings, request_timeout=30).values():
        future.result(timeout=30)
    for g in grants:
        print(f"allowed User:cutline {g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    certs = sub.add_parser("certs", help="make the CA, certificates, passwords and settings")
    certs.add_argument("--out", type=Path, default=Path("/secrets"))
    acls = sub.add_parser("grant", help="give User:cutline the README's ACLs on a source")
    acls.add_argument("--secrets", type=Path, default=Path("/secrets"))
    acls.add_argument("--source", default="default")
    args = parser.parse_args(argv)
    if args.action == "certs":
        make_certs(args.out)
    else:
        grant(args.secrets, args.source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
