"""Client settings: client.properties parsing, Java key translation, precedence, secrets."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from cutline.errors import ConfigError
from cutline.kafka_clients import _base
from cutline.kafka_config import (
    KafkaTarget,
    env_for_children,
    from_env,
    parse_properties,
    redacted,
    resolve_client_settings,
    translate_java,
)
from cutline.kafka_errors import AUTHENTICATION, AUTHORIZATION, REFUSED, RESOLVE, TLS, classify
from cutline.parser import build_parser
from cutline.settings import resolve_kafka

JAAS = (
    "org.apache.kafka.common.security.scram.ScramLoginModule required "
    'username="svc-cutline" password="p@ss w=rd";'
)


def test_properties_follow_java_rules() -> None:
    text = (
        "# a comment\n"
        "! another\n"
        "bootstrap.servers = b1:9093,b2:9093\n"
        "security.protocol:SASL_SSL\n"
        "sasl.mechanism SCRAM-SHA-512\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n"
        '    username="svc" \\\n'
        '    password="pw";\n'
        "key\\ with\\=escapes = tab\\there \\u00e9\n"
        "empty=\n"
    )
    assert parse_properties(text) == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="svc" password="pw";',
        "key with=escapes": "tab\there é",
        "empty": "",
    }


def test_a_scram_or_plain_jaas_line_becomes_username_and_password() -> None:
    out = translate_java({"sasl.jaas.config": JAAS}, "file")
    assert out == {"sasl.username": "svc-cutline", "sasl.password": "p@ss w=rd"}
    plain = JAAS.replace("scram.ScramLoginModule", "plain.PlainLoginModule")
    assert translate_java({"sasl.jaas.config": plain}, "file") == {
        "sasl.username": "svc-cutline",
        "sasl.password": "p@ss w=rd",
        "sasl.mechanism": "PLAIN",
    }


def test_keys_librdkafka_cannot_read_are_refused_with_what_to_use() -> None:
    with pytest.raises(ConfigError, match=r"ssl\.ca\.location=ca\.pem"):
        translate_java({"ssl.truststore.location": "/etc/kafka/truststore.jks"}, "f")
    with pytest.raises(ConfigError, match=r"sasl\.oauthbearer"):
        translate_java(
            {"sasl.jaas.config": "org.apache.kafka.common.security.oauthbearer."
             "OAuthBearerLoginModule required;"},
            "f",
        )  # fmt: skip
    pem = {"ssl.truststore.type": "PEM", "ssl.truststore.location": "/ca.pem"}
    assert translate_java(pem, "f") == {"ssl.ca.location": "/ca.pem"}
    assert translate_java({"key.serializer": "x", "client.dns.lookup": "y"}, "f") == {}
    assert translate_java({"ssl.endpoint.identification.algorithm": ""}, "f") == {
        "ssl.endpoint.identification.algorithm": "none"
    }


def test_precedence_is_x_then_environment_then_file(tmp_path: Path) -> None:
    config = tmp_path / "client.properties"
    config.write_text("security.protocol=SSL\nsasl.username=from-file\nclient.id=file\n")
    env = {"CUTLINE_KAFKA_SASL_USERNAME": "from-env", "CUTLINE_KAFKA_CLIENT_ID": "env"}
    settings = resolve_client_settings(config, ["client.id=flag"], env)
    assert settings.properties == {
        "security.protocol": "SSL",
        "sasl.username": "from-env",
        "client.id": "flag",
    }
    assert settings.origins["client.id"] == "-X"


def test_settings_cutline_relies_on_cannot_be_overridden(tmp_path: Path) -> None:
    for key in ("isolation.level", "enable.idempotence", "transactional.id", "group.id"):
        with pytest.raises(ConfigError, match=f"{key}: cutline sets this itself"):
            resolve_client_settings(None, [f"{key}=x"], {})
    consumer = _base(KafkaTarget("h:1", {"linger.ms": "50"}), {"linger.ms": 5}, {"acks": "all"})
    assert consumer["linger.ms"] == "50", "the estate's settings win over cutline's defaults"


def test_a_secret_comes_from_a_file_and_is_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    env = {"CUTLINE_KAFKA_SASL_PASSWORD": f"@{secret}"}
    settings = resolve_client_settings(None, [f"ssl.key.password=@{secret}"], env)
    assert settings.properties["sasl.password"] == "s3cret"
    assert settings.properties["ssl.key.password"] == "s3cret"
    assert "s3cret" not in repr(settings)
    assert redacted(settings.properties)["sasl.password"] == "***"
    target = KafkaTarget("h:1", settings.properties)
    assert "s3cret" not in f"{target} {target!r}"
    with pytest.raises(ConfigError) as missing:
        resolve_client_settings(None, ["sasl.password=@/no/such/file"], {})
    assert "/no/such/file" in str(missing.value)
    assert "s3cret" not in build_parser().format_help()


def test_environment_names_and_children(tmp_path: Path) -> None:
    env = {"CUTLINE_KAFKA_SASL_PASSWORD": "x", "CUTLINE_KAFKA_CONFIG": "/f", "OTHER": "y"}
    assert from_env(env) == {"sasl.password": "x"}
    child = env_for_children({"sasl.password": "@literal", "security.protocol": "SSL"})
    assert resolve_client_settings(None, [], child).properties == {
        "sasl.password": "@literal",
        "security.protocol": "SSL",
    }


def test_the_target_keeps_its_settings_and_bootstrap_comes_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "ambient:9092")
    config = tmp_path / "client.properties"
    config.write_text(f"bootstrap.servers=b1:9093\nsasl.jaas.config={JAAS}\n")
    target = resolve_kafka(None, config)
    assert str(target) == "b1:9093" and target.named, "the file named beats the ambient variable"
    assert "bootstrap.servers" not in target.properties
    copy = pickle.loads(pickle.dumps(target))
    assert isinstance(copy, KafkaTarget) and copy.properties == target.properties
    assert str(resolve_kafka("b2:1", config)) == "b2:1", "--bootstrap-servers wins"
    assert str(resolve_kafka(None, config, ["bootstrap.servers=b3:1"])) == "b3:1"
    assert str(resolve_kafka(None)) == "ambient:9092"


def test_errors_are_classified() -> None:
    cases = [
        (KafkaError._AUTHENTICATION, "SASL authentication error: bad credentials", AUTHENTICATION),
        (KafkaError._SSL, "SSL handshake failed: certificate verify failed: broker certificate "
         "could not be verified", TLS),
        (KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:1 failed: Connection refused", REFUSED),
        (KafkaError._RESOLVE, "Failed to resolve 'nohost:9092'", RESOLVE),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, "Group authorization failed", AUTHORIZATION),
    ]  # fmt: skip
    for code, text, kind in cases:
        assert classify(KafkaError(code, text)).kind == kind, text
    unknown = classify(
        KafkaError(KafkaError._INVALID_ARG, 'No such configuration property: "ssl.truststore.x"')
    )
    assert "Java-only key" in unknown.message
    tls = classify(KafkaError(KafkaError._SSL, "certificate verify failed: hostname mismatch"))
    assert "hostname mismatch" in tls.message
    named = classify(
        KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED),
        resource="cutline.s.ops",
        operation="Read",
    )
    assert "Read on topic cutline.s.ops" in named.message


def test_all_brokers_down_never_hides_the_problem_it_sums_up():
    """librdkafka reports "Connection refused", then "1/1 brokers are down": the error
    kept for the message is the first, whichever order the two reach the callback in."""
    from confluent_kafka import KafkaError

    from cutline import kafka_clients

    refused = KafkaError(
        KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:9 failed: Connection refused"
    )
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    record = kafka_clients._error_cb("127.0.0.1:9")
    kafka_clients._last_problem.pop("127.0.0.1:9", None)
    try:
        record(refused)
        record(down)
        assert kafka_clients._last_problem["127.0.0.1:9"] is refused
        kafka_clients._last_problem.pop("127.0.0.1:9")
        record(down)  # alone, it is all there is to say
        assert kafka_clients._last_problem["127.0.0.1:9"] is down
        assert kafka_clients._more_telling(down, refused) is refused
        assert kafka_clients._more_telling(refused, down) is refused
        assert kafka_clients._more_telling(None, refused) is refused
    finally:
        kafka_clients._last_problem.pop("127.0.0.1:9", None)
