"""Shared fixtures: real brokers started per test and always stopped.

A missing broker binary makes the fixture *fail* with the install hint
(``BrokerNotFoundError``); nothing here is skipped silently.

Every test that starts a real broker carries the ``broker`` marker (so ``-m "not broker"``
leaves out exactly those). Two hooks enforce it: collection fails for a test that uses one of
``BROKER_FIXTURES`` (directly or through another fixture) without the marker, and a test
without the marker that starts an ``EmbeddedBroker`` itself fails at that call. A test that
only has a *subprocess* start a broker (``fedbus demo`` without ``--bus-url``) cannot be seen
by either: mark it by hand.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from agent.brokers import EmbeddedBroker

# Tests assert behaviour, never wall time: hypothesis's per-example deadline (200 ms) is a
# timing assertion, which a loaded machine fails (test_strategy's did once). No deadline here;
# pytest-timeout still bounds every test.
settings.register_profile("fedbus", deadline=None)
settings.load_profile("fedbus")

#: The fixtures that start a real broker.
BROKER_FIXTURES = frozenset({"mosquitto", "nats_server", "broker"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse the run when a test uses a broker fixture without the ``broker`` marker."""
    unmarked = [
        item.nodeid
        for item in items
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("broker") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start a real broker (fixtures "
            f"{', '.join(sorted(BROKER_FIXTURES))}) but lack @pytest.mark.broker:\n  "
            + "\n  ".join(unmarked)
        )


@pytest.fixture(autouse=True)
def _embedded_brokers_need_the_marker(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail a test without the ``broker`` marker as soon as it starts an EmbeddedBroker."""
    if request.node.get_closest_marker("broker") is not None:
        return
    start = EmbeddedBroker.start

    def refuse(self: EmbeddedBroker) -> None:
        pytest.fail(f"{request.node.nodeid} starts a real broker without @pytest.mark.broker")
        start(self)  # pragma: no cover - pytest.fail raises

    monkeypatch.setattr(EmbeddedBroker, "start", refuse)


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
