"""The estate's Kafka client configuration: a client.properties, ``-X`` settings, environment.

Operators already hold a Java-style ``client.properties`` for their cluster (the Kafka CLIs'
``--command-config``, kcat's ``-F``), so cutline reads that file as it is, translates the
Java-only keys that have an obvious librdkafka equivalent, and refuses the rest with one line
that says what to use instead. Precedence, highest first::

    -X key=value  >  CUTLINE_KAFKA_<KEY> environment  >  --kafka-config FILE  >  cutline defaults

Settings cutline relies on for exactness (read_committed, idempotence, its transactional id
and group ids, manual commits) cannot be overridden. A value ``@PATH`` is read from that file,
so a secret need not appear on a command line. Secrets are never shown: ``redacted`` is what
goes into any message. Nothing here opens a socket.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cutline.errors import ConfigError

ENV_PREFIX = "CUTLINE_KAFKA_"
ENV_CONFIG_FILE = "CUTLINE_KAFKA_CONFIG"  # the path of --kafka-config, not a client key

# cutline sets these itself; changing them would break the exact-cut guarantees.
PROTECTED = {
    "isolation.level": "consumers must read only committed transactions (read_committed)",
    "enable.idempotence": "producers must be idempotent so a retried send is never duplicated",
    "transactional.id": "capture names its own transactional id (one per source)",
    "group.id": "replicate names its consumer group (one per source)",
    "enable.auto.commit": "offsets are committed only at markers",
    "enable.auto.offset.store": "offsets are committed only at markers",
    "acks": "every write waits for all in-sync replicas (acks=all)",
    "allow.auto.create.topics": "cutline creates its topics itself, with their settings; a "
    "typo'd --source must leave no topic behind",
}

_SECRET = re.compile(r"password|secret|jaas|\.pem$|oauthbearer\.config|token", re.IGNORECASE)
_JAAS = re.compile(
    r"^\s*(?P<module>[\w.$]+)\s+(?:required|requisite|sufficient|optional)(?P<options>.*?);?\s*$",
    re.DOTALL,
)
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|(\S+?))(?=\s|;|$)')
_PEM_HINT = (
    "librdkafka reads PEM, not Java key stores: export the CA with `keytool -exportcert -rfc "
    "-keystore TRUSTSTORE -alias ALIAS -file ca.pem` and set ssl.ca.location=ca.pem"
)


def is_secret(key: str) -> bool:
    """Whether a client setting's value must never be shown."""
    return bool(_SECRET.search(key))


def redacted(properties: Mapping[str, str]) -> dict[str, str]:
    """The settings as they may be shown: secrets replaced by ``***``."""
    return {k: ("***" if is_secret(k) else v) for k, v in properties.items()}


# --- Java properties ----------------------------------------------------------------------

_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _logical_lines(text: str) -> Iterable[str]:
    """Join continuation lines (an odd number of trailing backslashes), skip comments/blanks."""
    pending: str | None = None
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if pending is None and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            pending = (pending or "") + line[:-1]
            continue
        yield (pending or "") + line
        pending = None
    if pending is not None:
        yield pending


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\" or i + 1 == len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[i + 2 : i + 6]):
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        i += 2
    return "".join(out)


def parse_properties(text: str) -> dict[str, str]:
    """Parse a ``java.util.Properties`` file: ``=``/``:``/space separators, ``#``/``!``
    comments, backslash continuations and escapes (``\\t``, ``\\uXXXX``, ``\\=``, ...)."""
    result: dict[str, str] = {}
    for line in _logical_lines(text):
        i = 0
        while i < len(line):
            ch = line[i]
            if ch == "\\":
                i += 2
                continue
            if ch in "=: \t\f":
                break
            i += 1
        key, rest = line[:i], line[i:]
        rest = rest.lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        result[_unescape(key)] = _unescape(rest)
    return result


# --- translation of Java-only keys --------------------------------------------------------


def _jaas_credentials(value: str, origin: str) -> dict[str, str]:
    match = _JAAS.match(value)
    if match is None:
        raise ConfigError(
            f"{origin} sasl.jaas.config: not a JAAS line (`<LoginModule> required "
            'username="..." password="...";`); set sasl.username and sasl.password instead'
        )
    module = match["module"].rsplit(".", 1)[-1]
    if module not in ("ScramLoginModule", "PlainLoginModule"):
        raise ConfigError(
            f"{origin} sasl.jaas.config: {module} has no librdkafka equivalent cutline can "
            "translate; set librdkafka's own keys (e.g. sasl.kerberos.* or sasl.oauthbearer.*)"
        )
    options = {
        m[1]: (re.sub(r"\\(.)", r"\1", m[2]) if m[2] is not None else m[3])
        for m in _JAAS_OPTION.finditer(match["options"])
    }
    missing = [k for k in ("username", "password") if k not in options]
    if missing:
        raise ConfigError(f"{origin} sasl.jaas.config: {module} line has no {' or '.join(missing)}")
    credentials = {"sasl.username": options["username"], "sasl.password": options["password"]}
    if module == "PlainLoginModule":  # the one module that implies its mechanism
        credentials["sasl.mechanism"] = "PLAIN"
    return credentials


# Java client keys with no meaning for cutline's clients: dropped, not refused.
_JAVA_ONLY_HARMLESS = frozenset(
    {
        "key.serializer",
        "value.serializer",
        "key.deserializer",
        "value.deserializer",
        "client.dns.lookup",
        "ssl.enabled.protocols",
        "ssl.protocol",
    }
)


def translate_java(properties: Mapping[str, str], origin: str) -> dict[str, str]:
    """Map Java-client keys to librdkafka's; refuse those it cannot read, saying what to use."""
    out = {k: v for k, v in properties.items() if k not in _JAVA_ONLY_HARMLESS}
    jaas = out.pop("sasl.jaas.config", None)
    if jaas is not None:
        for key, value in _jaas_credentials(jaas, origin).items():
            out.setdefault(key, value)
    truststore = out.pop("ssl.truststore.location", None)
    store_type = out.pop("ssl.truststore.type", "JKS" if truststore else None)
    out.pop("ssl.truststore.password", None)
    if truststore is not None:
        if (store_type or "").upper() != "PEM":
            raise ConfigError(
                f"{origin} ssl.truststore.location={truststore} ({store_type}): {_PEM_HINT}"
            )
        out.setdefault("ssl.ca.location", truststore)
    keystore_type = (out.pop("ssl.keystore.type", None) or "").upper()
    if "ssl.keystore.location" in out and keystore_type == "JKS":
        raise ConfigError(
            f"{origin} ssl.keystore.location is a JKS key store, which librdkafka cannot read: "
            "convert it to PKCS12 (`keytool -importkeystore -deststoretype PKCS12 ...`) or set "
            "ssl.certificate.location and ssl.key.location to PEM files"
        )
    if out.get("ssl.endpoint.identification.algorithm") == "":
        out["ssl.endpoint.identification.algorithm"] = "none"  # Java's "" means off
    return out


# --- sources and precedence ---------------------------------------------------------------


def _read_value(key: str, value: str, origin: str) -> str:
    """``@PATH``: the value is that file's text (without its final newline); ``@@`` is one @."""
    if value.startswith("@@"):
        return value[1:]
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(
            f"{origin} {key}: cannot read the value from {path} ({exc.strerror or exc})"
        ) from None


def from_file(path: Path) -> dict[str, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"--kafka-config {path}: cannot read it ({exc.strerror or exc}); pass a "
            "client.properties file (key=value lines)"
        ) from None
    return parse_properties(text)


def from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``CUTLINE_KAFKA_SASL_PASSWORD=x`` is ``sasl.password=x`` (``_`` becomes ``.``)."""
    return {
        name[len(ENV_PREFIX) :].lower().replace("_", "."): value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX) and name != ENV_CONFIG_FILE and len(name) > len(ENV_PREFIX)
    }


def from_options(settings: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            shown = key.strip() if is_secret(key) else setting
            raise ConfigError(f"-X {shown!r}: write it as key=value, e.g. -X security.protocol=SSL")
        out[key.strip()] = value
    return out


def env_for_children(properties: Mapping[str, str]) -> dict[str, str]:
    """Environment variables that give a child cutline process these same settings."""
    return {
        ENV_PREFIX + key.upper().replace(".", "_"): (
            "@" + value if value.startswith("@") else value
        )
        for key, value in properties.items()
    }


@dataclass(frozen=True)
class ClientSettings:
    """The resolved settings and, per key, where each came from (for messages)."""

    properties: dict[str, str]
    origins: dict[str, str]

    def __repr__(self) -> str:  # secrets never reach a log through repr()
        return f"ClientSettings({redacted(self.properties)})"


def resolve_client_settings(
    config_file: Path | None,
    options: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> ClientSettings:
    """Merge file < environment < ``-X``; translate Java keys; refuse protected ones."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(ENV_CONFIG_FILE):
        config_file = Path(environ[ENV_CONFIG_FILE])
    layers: list[tuple[str, dict[str, str]]] = []
    if config_file is not None:
        layers.append((f"--kafka-config {config_file}:", from_file(config_file)))
    layers.append(("environment", from_env(environ)))
    layers.append(("-X", from_options(options)))
    properties: dict[str, str] = {}
    origins: dict[str, str] = {}
    for origin, layer in layers:
        translated = translate_java(layer, origin)
        for key, value in translated.items():
            if key in PROTECTED:
                raise ConfigError(
                    f"{origin} {key}: cutline sets this itself ({PROTECTED[key]}); remove it"
                )
            # @PATH is for -X and the environment; a file's values are taken as written.
            properties[key] = value if origin.startswith("--") else _read_value(key, value, origin)
            origins[key] = origin
    return ClientSettings(properties, origins)


class KafkaTarget(str):
    """Bootstrap servers that also carry the estate's client settings.

    A ``str`` (the bootstrap address) so that the many ``bootstrap`` parameters between a
    command and ``kafka_clients`` carry the settings unchanged; printing it never shows a
    secret. ``named`` is False only for the broker recorded by ``cutline kafka start``, so
    advice can fit the case.
    """

    properties: dict[str, str]
    named: bool

    def __new__(
        cls, bootstrap: str, properties: Mapping[str, str] | None = None, *, named: bool = True
    ) -> KafkaTarget:
        obj = super().__new__(cls, bootstrap)
        obj.properties = dict(properties or {})
        obj.named = named
        return obj

    def __reduce__(self):  # keep the settings across pickling (processes, copies)
        return (_rebuild_target, (str(self), self.properties, self.named))


def _rebuild_target(bootstrap: str, properties: dict[str, str], named: bool) -> KafkaTarget:
    return KafkaTarget(bootstrap, properties, named=named)


def client_properties(bootstrap: str) -> dict[str, str]:
    """The settings a client for ``bootstrap`` gets: the target's own, else the environment's.

    A plain string (tests, bench, library callers) takes ``CUTLINE_KAFKA_*`` and
    ``CUTLINE_KAFKA_CONFIG`` from the environment, so every client honours them.
    """
    if isinstance(bootstrap, KafkaTarget):
        return dict(bootstrap.properties)
    settings = resolve_client_settings(None)
    settings.properties.pop("bootstrap.servers", None)
    return settings.properties
