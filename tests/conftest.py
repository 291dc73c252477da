"""Shared fixtures: real brokers started per test and always stopped.

A missing broker binary makes the fixture *fail* with the install hint
(``BrokerNotFoundError``); nothing here is skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.brokers import EmbeddedBroker


@pytest.fixture
def mosquitto() -> Iterator[EmbeddedBroker]:
    """A running mosquitto on 127.0.0.1 and a free port, stopped and removed afterwards."""
    with EmbeddedBroker("mqtt") as broker:
        yield broker


@pytest.fixture
def nats_server() -> Iterator[EmbeddedBroker]:
    """A running nats-server on 127.0.0.1 and a free port, stopped and removed afterwards."""
    with EmbeddedBroker("nats") as broker:
        yield broker


@pytest.fixture(params=["mqtt", "nats"])
def broker(request: pytest.FixtureRequest) -> EmbeddedBroker:
    """Each real broker in turn (parametrizes the test over mosquitto and nats-server)."""
    name = {"mqtt": "mosquitto", "nats": "nats_server"}[request.param]
    started: EmbeddedBroker = request.getfixturevalue(name)
    return started
