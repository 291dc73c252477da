"""The Prometheus metrics: rounds, dropouts, bytes and drops are counted, and /metrics serves
them."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from agent.brokers import free_port
from agent.bus.base import BusMessage
from agent.runtime import metrics
from tests.helpers import federate, make, toy

pytestmark = pytest.mark.timeout(60)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_federation_is_counted(tmp_path: Path) -> None:
    """Two rounds of three agents: two completed rounds, model updates received and
    global models sent are counted with their bytes, and each round's duration observed."""
    before = {
        "rounds": value("fedbus_rounds_total", outcome="completed"),
        "updates": value("fedbus_messages_received_total", kind="model_update"),
        "update_bytes": value("fedbus_bytes_received_total", kind="model_update"),
        "models": value("fedbus_messages_sent_total", kind="model_para"),
        "observed": value("fedbus_round_seconds_count"),
    }
    await federate(tmp_path, {"a1": toy(1.0, 1), "a2": toy(2.0, 1), "a3": toy(3.0, 1)}, rounds=2)
    assert value("fedbus_rounds_total", outcome="completed") - before["rounds"] == 2
    assert value("fedbus_messages_received_total", kind="model_update") - before["updates"] == 6
    assert value("fedbus_bytes_received_total", kind="model_update") > before["update_bytes"]
    assert value("fedbus_messages_sent_total", kind="model_para") - before["models"] >= 2
    assert value("fedbus_round_seconds_count") - before["observed"] == 2


async def test_dropped_messages_are_counted_by_reason() -> None:
    """A malformed payload increments fedbus_messages_dropped_total{reason="malformed"}."""
    dispatcher, _, _ = make()
    before = value("fedbus_messages_dropped_total", reason="malformed")
    await dispatcher.dispatch(BusMessage("fl/fed/join", b"\x01 not msgpack"))
    assert value("fedbus_messages_dropped_total", reason="malformed") - before == 1


def test_the_endpoint_serves_the_metrics() -> None:
    """/metrics on 127.0.0.1 answers in the Prometheus text format with fedbus's metrics."""
    port = free_port()
    stop = metrics.serve(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    finally:
        stop()
    assert "# TYPE fedbus_rounds_total counter" in text
    assert "fedbus_messages_dropped_total" in text
