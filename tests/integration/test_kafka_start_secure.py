"""``cutline kafka start --secure``: the secured local cluster a user tries things on.

Its own module, so its node does not run beside test_secured_estate's. It proves the
command's promise: the last line is an admin client.properties that logs in over
SASL_SSL, the mutual-TLS client settings beside it log in as ``User:cutline-client``
with nothing allowed until ACLs are added, and ``kafka stop --secure`` removes it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from tests.integration.pipeline import CUTLINE


def _cutline(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CUTLINE, *args], env=env, capture_output=True, text=True, timeout=timeout_s
    )


def test_kafka_start_secure_gives_a_secured_cluster_to_try_things_on(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUTLINE_KAFKA")}
    env = {**env, "CUTLINE_HOME": str(home)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    started = _cutline(env, "kafka", "start", "--secure", timeout_s=300)
    try:
        assert started.returncode == 0, started.stderr
        admin = Path(started.stdout.strip().splitlines()[-1])
        assert admin.exists() and "security.protocol=SASL_SSL" in admin.read_text()
        # the super user logs in and sees the (empty) cluster
        looked = _cutline(env, "status", "--source", "shop", "--kafka-config", str(admin))
        assert looked.returncode == 1, looked.stderr
        assert "source 'shop' has no topics on this cluster" in looked.stderr, looked.stderr
        # the mutual-TLS client logs in, and the authorizer refuses what no ACL allows
        mtls = admin.parent / "mtls-client.properties"
        db = tmp_path / "shop.sqlite"
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance REAL)")
        refused = _cutline(
            env, "capture", "--db", str(db), "--tables", "accounts", "--source", "shop",
            "--kafka-config", str(mtls),
        )  # fmt: skip
        assert refused.returncode == 1, refused.stderr
        last = refused.stderr.strip().splitlines()[-1]
        assert "Create on topic cutline.shop.ops" in last and "not authorized" in last, last
    finally:
        stopped = _cutline(env, "kafka", "stop", "--secure")
    assert stopped.returncode == 0, stopped.stderr
    assert not (home / "kafka-secure" / "state.json").exists()
    assert not admin.exists(), "the admin's password goes with the cluster"
