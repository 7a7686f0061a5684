"""Integration fixtures: a real Apache Kafka broker for the whole session.

Where it comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS``; a Docker engine through
testcontainers; else a local KRaft broker from Kafka's own jars (resolved with Maven).
The suite runs with its own ``CUTLINE_HOME`` so it never touches a user's broker record.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cutline.broker.provision import Provided, provide_cluster
from tests.integration.pipeline import Pipeline


def _progress(message: str) -> None:
    print(f"[kafka] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def cutline_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("cutline-home")
    previous = os.environ.get("CUTLINE_HOME")
    os.environ["CUTLINE_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("CUTLINE_HOME", None)
    else:
        os.environ["CUTLINE_HOME"] = previous


@pytest.fixture(scope="session")
def cluster(cutline_home: Path) -> Iterator[Provided]:
    provided = provide_cluster(progress=_progress)
    _progress(f"{provided.kind} cluster at {provided.bootstrap_servers}")
    try:
        yield provided
    finally:
        provided.stop()


@pytest.fixture(scope="session")
def kafka(cluster: Provided) -> str:
    return cluster.bootstrap_servers


@pytest.fixture
def source() -> str:
    """A fresh source per test: its own topics, group and backup folder."""
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pipeline(kafka: str, source: str, tmp_path: Path) -> Iterator[Pipeline]:
    with Pipeline(kafka, source, tmp_path) as p:
        yield p
