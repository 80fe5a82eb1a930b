"""Shared fixtures: a real Kafka-protocol broker, chosen in design.md's order.

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (any Kafka you point the tests at);
2. a testcontainers ``KafkaContainer`` when a Docker engine answers;
3. else the embedded tansu broker (``pipeline.broker.EmbeddedBroker``).

One broker serves the whole session; ``kafka_topics`` gives every test its own
freshly created topic names, so tests never see each other's records.

Tests that use ``kafka_bootstrap`` (directly or through ``kafka_topics``) are
marked ``integration`` automatically, so ``pytest -m "not integration"`` runs
without any broker; mark them explicitly anyway, for the reader.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

TOPIC_ROLES = ("impressions", "clicks", "samples", "dlq")


def docker_answers(timeout_s: float = 2.0) -> bool:
    """True when a Docker engine answers a ping; never hangs, never raises."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not os.path.exists("/var/run/docker.sock"):
        return False  # the usual case here: skip importing the docker SDK at all
    try:
        import docker

        client = docker.from_env(timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no daemon, bad DOCKER_HOST: "no Docker here"
        return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address ``HOST:PORT`` of a running Kafka-protocol broker for the session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from pipeline.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def kafka_topics(kafka_bootstrap: str) -> dict[str, str]:
    """Fresh topics for one test, created: ``{"impressions": "impressions-1a2b3c4d", ...}``.

    One partition each (ordering within a topic is total, which tests rely on).
    """
    from pipeline.broker import create_topics

    suffix = uuid.uuid4().hex[:8]
    names = {role: f"{role}-{suffix}" for role in TOPIC_ROLES}
    create_topics(kafka_bootstrap, names.values(), partitions=1)
    return names
