"""Thin wrappers over confluent-kafka: configs with safe defaults, topic creation, waits.

librdkafka logs through the ``cutline.kafka`` logger (silent unless ``--verbose``), so an
unreachable broker is reported once by our own bounded wait instead of a flood of
connection errors on stderr.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from cutline.errors import BrokerError, DeadlineExceeded
from cutline.kafka_config import KafkaTarget, client_properties
from cutline.kafka_errors import TLS, classify, describe, is_authorization
from cutline.settings import Topics

log = logging.getLogger("cutline.kafka")

# One change is one record, so a row up to this size flows through (Kafka's default is
# ~1 MB). The ops and dead-letter topics and every producer are sized for it; a larger
# record stops capture with a message, never silently.
MAX_RECORD_BYTES = 32 << 20
TOPIC_MAX_MESSAGE_BYTES = MAX_RECORD_BYTES + (64 << 10)  # room for the batch framing
PRODUCER_MAX_BYTES = TOPIC_MAX_MESSAGE_BYTES
_client_log = logging.getLogger("cutline.kafka.librdkafka")


# The latest connection problem librdkafka reported for each bootstrap address (error_cb):
# a bounded wait reads it to say *why* a cluster does not answer.
_last_problem: dict[str, KafkaError] = {}


def _more_telling(new: KafkaError | None, old: KafkaError | None) -> KafkaError | None:
    """The problem to keep: "all brokers are down" only sums up the one before it (e.g.
    "connection refused"), so it never replaces a problem already seen."""
    if new is None or (old is not None and new.code() == KafkaError._ALL_BROKERS_DOWN):
        return old
    return new


def _error_cb(bootstrap: str):
    def record(error: KafkaError) -> None:
        key = str(bootstrap)
        kept = _more_telling(error, _last_problem.get(key))
        if kept is not None:
            _last_problem[key] = kept
        log.debug("Kafka client error: %s", error.str())

    return record


def _base(
    bootstrap: str, defaults: dict[str, Any] | None, required: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A client config: cutline's tunable defaults < the estate's settings < what it requires.

    The estate's settings come from ``bootstrap`` when it is a ``KafkaTarget`` (the
    command's --kafka-config/-X/environment), else from the environment alone.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": str(bootstrap),
        "logger": _client_log,
        "error_cb": _error_cb(bootstrap),
    }
    config.update(defaults or {})
    config.update(client_properties(bootstrap))
    # Topics are created only by cutline, with their settings; a broker that auto-creates
    # must never turn a typo'd --source (a metadata request, a subscription) into topics.
    config["allow.auto.create.topics"] = False
    config.update(required or {})
    return config


def make_admin(bootstrap: str, **extra: Any) -> AdminClient:
    return AdminClient(_base(bootstrap, {}, extra))


def make_producer(bootstrap: str, **extra: Any) -> Producer:
    """An idempotent producer (acks=all): a retried send is never written twice."""
    config = _base(
        bootstrap,
        {"linger.ms": 5, "message.max.bytes": PRODUCER_MAX_BYTES},
        {"enable.idempotence": True, "acks": "all", **extra},
    )
    return Producer(config)


def make_consumer(bootstrap: str, group_id: str, **extra: Any) -> Consumer:
    """A consumer that sees only committed transactions and never commits by itself."""
    config = _base(
        bootstrap,
        {"auto.offset.reset": "earliest"},
        {
            "group.id": group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            **extra,
        },
    )
    return Consumer(config)


def _advice(bootstrap: str) -> str:
    if isinstance(bootstrap, KafkaTarget) and not bootstrap.named:
        return (
            "the local broker recorded by `cutline kafka start` does not answer: run "
            "`cutline kafka start` again"
        )
    return "check the address, the client settings and that the cluster runs"


def tls_verify_problem(bootstrap: str, timeout_s: float = 5.0) -> str | None:
    """Why the first broker's certificate fails verification, checked with Python's ssl and
    the same CA file: "Hostname mismatch, ..." or "unable to get local issuer certificate".
    None when it verifies (or the probe itself cannot connect)."""
    settings = client_properties(bootstrap)
    host, _, port = str(bootstrap).split(",")[0].strip().split("://")[-1].rpartition(":")
    context = ssl.create_default_context(cafile=settings.get("ssl.ca.location"))
    if settings.get("ssl.endpoint.identification.algorithm", "https") == "none":
        context.check_hostname = False
    try:
        address = (host.strip("[]"), int(port))
        with (
            socket.create_connection(address, timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=address[0]),
        ):
            return None
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message)
    except (OSError, ValueError):
        return None


def wait_for_cluster(bootstrap: str, deadline_s: float = 15.0) -> int:
    """Block until the cluster answers a metadata request; return its broker count.

    A problem retrying cannot fix (failed authentication or TLS handshake, an unknown host)
    is reported as soon as the client reports it, not at the deadline.
    """
    _last_problem.pop(str(bootstrap), None)
    admin = make_admin(bootstrap)
    end = time.monotonic() + deadline_s
    reported: KafkaError | None = None  # from error_cb: says why (preferred)
    failed: KafkaError | None = None  # from the request: often only "transport failure"
    while time.monotonic() < end:
        try:
            metadata = admin.list_topics(timeout=min(2.0, max(0.1, end - time.monotonic())))
            if metadata.brokers:
                return len(metadata.brokers)
        except KafkaException as exc:
            failed = exc.args[0]
        admin.poll(0)
        reported = _more_telling(_last_problem.pop(str(bootstrap), None), reported)
        if reported is not None and classify(reported).final:
            detail = tls_verify_problem(bootstrap) if classify(reported).kind == TLS else None
            raise BrokerError(f"Kafka at {bootstrap}: {describe(reported, detail=detail)}")
        time.sleep(0.2)
    last = reported or failed
    if last is not None and (not isinstance(bootstrap, KafkaTarget) or bootstrap.named):
        advice = describe(last)
    elif last is not None:
        advice = f"{describe(last)}; {_advice(bootstrap)}"
    else:
        advice = _advice(bootstrap)
    raise BrokerError(
        f"Kafka at {bootstrap} did not answer a metadata request within {deadline_s:.0f} s: "
        f"{advice}"
    )


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def source_topic_specs(topics: Topics, partitions: int) -> list[TopicSpec]:
    """Every topic of a source. Ops and dead letters are kept forever (replay needs them)."""
    large = {"retention.ms": "-1", "max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
    return [
        TopicSpec(topics.ops, partitions, dict(large)),
        TopicSpec(topics.capture_position, 1, {"cleanup.policy": "compact"}),
        TopicSpec(topics.control, 1),
        TopicSpec(topics.dead_letter, 1, dict(large)),
    ]


def wait_for_topic(bootstrap: str, topic: str, deadline_s: float, hint: str, progress=None) -> int:
    """Wait until ``topic`` exists with leaders; return its partition count."""
    admin = make_admin(bootstrap)
    end = time.monotonic() + deadline_s
    told = False
    while True:
        found = admin.list_topics(topic, timeout=10).topics.get(topic)
        refuse_unauthorized(found, topic, "Read")
        if (
            found is not None
            and found.error is None
            and found.partitions
            and all(p.leader >= 0 for p in found.partitions.values())
        ):
            return len(found.partitions)
        if time.monotonic() > end:
            raise DeadlineExceeded(
                f"topic {topic} did not appear within {deadline_s:.0f} s: {hint}"
            )
        if not told and progress is not None:
            progress(f"waiting up to {deadline_s:.0f} s for topic {topic} ({hint})")
            told = True
        time.sleep(0.5)


def refuse_unauthorized(found: Any, topic: str, operation: str) -> None:
    """Raise the ACL to add when metadata says the principal may not describe ``topic``.

    Metadata asks for Describe, which Kafka implies from Read and Write: name the ACL the
    README lists for this use (``operation``), not the Describe no one grants on its own.
    """
    error = getattr(found, "error", None)
    if error is not None and is_authorization(error):
        reason = describe(error, resource=topic, operation=operation)
        raise BrokerError(f"topic {topic}: {reason} (Describe was refused; {operation} implies it)")


def default_replication(broker_count: int) -> tuple[int, str]:
    """Replication factor and min.insync.replicas for a cluster of this size."""
    factor = min(3, broker_count)
    return factor, str(1 if factor == 1 else 2)


def ensure_topics(
    bootstrap: str, specs: Iterable[TopicSpec], deadline_s: float = 30.0
) -> dict[str, int]:
    """Create missing topics; return every topic's actual partition count.

    Existing topics are left as they are: their partition count wins and is returned, so
    a caller can refuse a mismatch with a clear message.
    """
    specs = list(specs)
    admin = make_admin(bootstrap)
    brokers = wait_for_cluster(bootstrap, deadline_s=min(deadline_s, 15.0))
    factor, min_isr = default_replication(brokers)
    existing = admin.list_topics(timeout=10).topics
    missing = [s for s in specs if s.name not in existing]
    if missing:
        new = [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=factor,
                config={"min.insync.replicas": min_isr, **s.config},
            )
            for s in missing
        ]
        for name, future in admin.create_topics(new, request_timeout=deadline_s).items():
            try:
                future.result(timeout=deadline_s)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    reason = describe(exc.args[0], resource=name, operation="Create")
                    raise BrokerError(f"cannot create topic {name}: {reason}") from exc
    end = time.monotonic() + deadline_s
    while True:
        topics = admin.list_topics(timeout=10).topics
        counts = {
            s.name: len(topics[s.name].partitions)
            for s in specs
            if s.name in topics
            and topics[s.name].error is None
            and topics[s.name].partitions
            and all(p.leader >= 0 for p in topics[s.name].partitions.values())
        }
        if len(counts) == len(specs):
            return counts
        for name in (s.name for s in specs if s.name not in topics):
            # metadata of all topics leaves out those the principal may not describe
            found = admin.list_topics(name, timeout=10).topics.get(name)
            refuse_unauthorized(found, name, "Write")
        if time.monotonic() > end:
            raise DeadlineExceeded(
                f"topics {[s.name for s in specs if s.name not in counts]} have no leader for "
                f"every partition after {deadline_s:.0f} s"
            )
        time.sleep(0.1)


def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = make_admin(bootstrap)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    result = admin.describe_configs([resource])[resource].result(timeout=10)
    return {k: v.value for k, v in result.items()}


def committed_within(
    consumer: Consumer, partitions: list[TopicPartition], deadline_s: float = 60.0
) -> list[TopicPartition]:
    """The group's committed offsets, asked again while the group coordinator moves.

    A lost broker can take the group coordinator with it; until a new one has loaded
    the group (the broker's session timeout, then the load), each request times out.
    """
    end = time.monotonic() + deadline_s
    while True:
        try:
            return consumer.committed(
                partitions, timeout=min(10.0, max(1.0, end - time.monotonic()))
            )
        except KafkaException as exc:
            if exc.args[0].fatal() or time.monotonic() >= end:
                raise DeadlineExceeded(
                    f"the group's committed offsets were not available within {deadline_s:.0f} s "
                    f"(last error: {exc.args[0].str()}): check the cluster's brokers"
                ) from exc
            log.warning("committed offsets not available yet (%s); asking again", exc)
            time.sleep(0.5)


def committed_offsets(
    bootstrap: str, group_id: str, topic: str, partitions: int, timeout_s: float = 10.0
) -> dict[int, int]:
    """The group's committed offsets for a topic (partitions without one are left out)."""
    consumer = make_consumer(bootstrap, group_id)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {
            tp.partition: tp.offset
            for tp in consumer.committed(tps, timeout=timeout_s)
            if tp.offset >= 0
        }
    finally:
        consumer.close()
