"""What a Kafka client error means for an operator, in one line with the fix.

librdkafka reports connection problems through ``error_cb`` (``_AUTHENTICATION``, ``_SSL``,
``_TRANSPORT``, ``_RESOLVE``) and refused requests as broker error codes
(``*_AUTHORIZATION_FAILED``). Without this module a secured cluster looked like a silent one:
"did not answer a metadata request". ``describe`` turns either into a sentence that names
the cause and, for authorization, the resource and operation so the operator can add the ACL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException

from cutline.errors import BrokerError

# Classes of problem: each is final (retrying cannot help) except "refused" and "down".
AUTHENTICATION = "authentication"
TLS = "tls"
RESOLVE = "resolve"
REFUSED = "refused"
DOWN = "down"
AUTHORIZATION = "authorization"
OTHER = "other"

FINAL = frozenset({AUTHENTICATION, TLS, RESOLVE, AUTHORIZATION})

_AUTHZ_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
}
_AUTHN_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_PASSWORD_HINT = re.compile(r"sasl\.password=\S+|password=\"[^\"]*\"", re.IGNORECASE)


class NotAuthorized(BrokerError):
    """The cluster refused an operation for want of an ACL: retrying cannot help."""


@dataclass(frozen=True)
class Diagnosis:
    kind: str
    message: str

    @property
    def final(self) -> bool:
        return self.kind in FINAL


def _tls_reason(text: str) -> str:
    lowered = text.lower()
    if "hostname" in lowered or "ip address mismatch" in lowered:
        return (
            "the broker's certificate does not name the host you connect to (hostname "
            "mismatch): connect by a name in its certificate, or fix the certificate's SAN"
        )
    if "certificate verify failed" in lowered or "could not be verified" in lowered:
        return (
            "the broker's certificate is not signed by a CA cutline trusts (unknown CA): set "
            "ssl.ca.location to the PEM file of the CA that signed it"
        )
    if "ssl.certificate" in lowered or "certificate required" in lowered or "alert" in lowered:
        return (
            "the broker refused cutline's client certificate: set ssl.certificate.location "
            "and ssl.key.location (PEM) to a certificate its CA signed"
        )
    if "wrong version number" in lowered or "packet length too long" in lowered:
        return (
            "the listener does not speak TLS: check security.protocol against the listener "
            "(PLAINTEXT/SASL_PLAINTEXT vs SSL/SASL_SSL)"
        )
    return "check ssl.ca.location and the client certificate settings"


def _clean(text: str) -> str:
    return _PASSWORD_HINT.sub("***", " ".join(text.split()))


def classify(
    error: KafkaError,
    *,
    resource: str | None = None,
    operation: str | None = None,
    detail: str | None = None,
) -> Diagnosis:
    """One line for a client error; ``resource``/``operation`` name what was refused;
    ``detail`` is what a TLS probe of our own found (librdkafka says "could not be
    verified" for an unknown CA and a hostname mismatch alike)."""
    code = error.code()
    text = _clean(error.str()) + (f" [{detail}]" if detail else "")
    if code in _AUTHN_CODES:
        return Diagnosis(
            AUTHENTICATION,
            f"authentication failed ({text}): check sasl.mechanism, sasl.username and "
            "sasl.password (or the client certificate) against the cluster's users",
        )
    if code == KafkaError._SSL:
        return Diagnosis(TLS, f"TLS handshake failed: {_tls_reason(text)} ({text})")
    if code == KafkaError._RESOLVE:
        return Diagnosis(
            RESOLVE, f"unknown host ({text}): check the host names in the bootstrap servers"
        )
    if code in _AUTHZ_CODES:
        kind = _AUTHZ_CODES[code]
        what = f"{kind} {resource}" if resource else kind
        needed = f"{operation} on {what}" if operation else what
        return Diagnosis(
            AUTHORIZATION,
            f"not authorized: the principal lacks the ACL for {needed} ({error.name()}): "
            "add that ACL (see the README's ACL list)",
        )
    if code == KafkaError._TRANSPORT:
        lowered = text.lower()
        if "connection refused" in lowered:
            return Diagnosis(
                REFUSED,
                f"connection refused ({text}): nothing listens at that address; check the "
                "host and port",
            )
        if "ssl" in lowered or "handshake" in lowered:
            return Diagnosis(TLS, f"TLS handshake failed: {_tls_reason(text)} ({text})")
        if "security.protocol" in lowered or ("disconnected" in lowered and "sasl" not in lowered):
            return Diagnosis(
                DOWN,
                f"the broker closed the connection ({text}): check security.protocol "
                "against the listener (a TLS or SASL listener drops a plaintext client)",
            )
        return Diagnosis(DOWN, f"the broker is unreachable ({text})")
    if code == KafkaError._INVALID_ARG and "sasl mechanism" in text.lower():
        return Diagnosis(
            OTHER,
            f"{text}: set sasl.mechanism to what the cluster offers (e.g. SCRAM-SHA-512, "
            "SCRAM-SHA-256 or PLAIN); librdkafka's default is GSSAPI (Kerberos)",
        )
    if code == KafkaError._INVALID_ARG and "configuration property" in text:
        return Diagnosis(
            OTHER,
            f"{text}: a client setting librdkafka does not accept (a Java-only key?); fix or "
            "remove it in --kafka-config / -X / CUTLINE_KAFKA_* (see librdkafka's "
            "CONFIGURATION.md)",
        )
    if code == KafkaError._ALL_BROKERS_DOWN:
        return Diagnosis(DOWN, f"no broker is reachable ({text})")
    return Diagnosis(OTHER, f"{text} ({error.name()})")


def describe(error: KafkaError, **context: str) -> str:
    return classify(error, **context).message


def is_authorization(error: KafkaError) -> bool:
    return error.code() in _AUTHZ_CODES


@contextmanager
def write_refusals(resource: str, writing: str) -> Iterator[None]:
    """Around ``Producer.produce``: once the client knows the Write ACL is missing it raises
    at once instead of reporting through the delivery callback; that is NotAuthorized too."""
    try:
        yield
    except KafkaException as exc:
        if is_authorization(exc.args[0]):
            reason = describe(exc.args[0], resource=resource, operation="Write")
            raise NotAuthorized(f"{writing}: {reason}") from None
        raise


def describe_read_refused(error: KafkaError, *, topic: str, group: str) -> str:
    """A consumer's refusal: Read on its topic, or Read on its group."""
    if error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
        return describe(error, resource=group, operation="Read")
    if error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return describe(error, resource=topic, operation="Read")
    return describe(error)
