"""Shared fixtures: a real Kafka-protocol broker, chosen as design.md says.

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (any Kafka you point the tests at);
2. a testcontainers ``KafkaContainer`` when a Docker engine answers;
3. else the embedded tansu broker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no daemon: all mean "no Docker here"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a running Kafka-protocol broker for the whole session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from pipeline.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def kafka_topics(kafka_bootstrap: str) -> dict[str, str]:
    """Fresh, created topic names for one test: {"impressions": "impressions-1a2b3c4d", ...}."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    suffix = uuid.uuid4().hex[:8]
    names = {role: f"{role}-{suffix}" for role in ("impressions", "clicks", "samples", "dlq")}
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in names.values()])
    finally:
        admin.close()
    return names
