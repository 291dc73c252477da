"""The Prometheus metrics: rounds, dropouts, bytes and drops are counted, each role in its own
registry, and /metrics serves them."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from agent.brokers import free_port
from agent.bus.base import BusMessage
from agent.plugin.loader import CheckedPlugin
from agent.runtime import metrics
from agent.runtime.metrics import Metrics
from tests.helpers import aggregator_config, federate_in_memory, make, toy, trainer_config

pytestmark = pytest.mark.timeout(60)


async def federate_counted(
    tmp_path: Path, plugins: dict[str, CheckedPlugin], rounds: int
) -> tuple[Metrics, dict[str, Metrics]]:
    """An in-memory federation in which the aggregator and every trainer count into a
    ``Metrics`` of their own; returns them."""
    config = aggregator_config("mem://", tmp_path, agents=len(plugins), rounds=rounds)
    counted = Metrics()
    _, trainers = await federate_in_memory(
        plugins,
        config,
        lambda agent_id: trainer_config(agent_id, "mem://", tmp_path),
        aggregator_metrics=counted,
    )
    return counted, {agent_id: trainer.metrics for agent_id, trainer in trainers.items()}


async def test_a_federation_is_counted(tmp_path: Path) -> None:
    """Two rounds of three agents: two completed rounds, model updates received and
    global models sent are counted with their bytes, and each round's duration observed."""
    plugins = {"a1": toy(1.0, 1), "a2": toy(2.0, 1), "a3": toy(3.0, 1)}
    m, _ = await federate_counted(tmp_path, plugins, rounds=2)
    assert m.value("fedbus_rounds_total", outcome="completed") == 2
    assert m.value("fedbus_messages_received_total", kind="model_update") == 6
    assert m.value("fedbus_bytes_received_total", kind="model_update") > 0
    assert m.value("fedbus_messages_sent_total", kind="model_para") >= 2
    assert m.value("fedbus_round_seconds_count") == 2


async def test_two_roles_in_one_process_keep_separate_counts(tmp_path: Path) -> None:
    """Aggregator and trainers in one process: each registry holds only its own role's
    counts (the aggregator receives the updates the trainers send; no trainer counts a
    round), and a second run starts from zero instead of adding to the first."""
    plugins = {"a1": toy(1.0, 1), "a2": toy(2.0, 1)}
    aggregator, trainers = await federate_counted(tmp_path / "first", plugins, rounds=2)
    assert aggregator.value("fedbus_messages_received_total", kind="model_update") == 4
    assert aggregator.value("fedbus_messages_sent_total", kind="model_update") == 0
    for m in trainers.values():
        assert m.value("fedbus_messages_sent_total", kind="model_update") == 2
        assert m.value("fedbus_messages_received_total", kind="model_update") == 0
        assert m.value("fedbus_rounds_total", outcome="completed") == 0
    again, _ = await federate_counted(tmp_path / "second", plugins, rounds=1)
    assert again.value("fedbus_rounds_total", outcome="completed") == 1


async def test_dropped_messages_are_counted_by_reason() -> None:
    """A malformed payload increments fedbus_messages_dropped_total{reason="malformed"}."""
    dispatcher, _, _ = make()
    before = dispatcher.metrics.value("fedbus_messages_dropped_total", reason="malformed")
    await dispatcher.dispatch(BusMessage("fl/fed/join", b"\x01 not msgpack"))
    after = dispatcher.metrics.value("fedbus_messages_dropped_total", reason="malformed")
    assert after - before == 1


def test_the_endpoint_serves_the_metrics() -> None:
    """/metrics on 127.0.0.1 answers in the Prometheus text format with fedbus's metrics."""
    port = free_port()
    stop = metrics.serve(port, registry=Metrics().registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    finally:
        stop()
    assert "# TYPE fedbus_rounds_total counter" in text
    assert "fedbus_messages_dropped_total" in text


def test_the_monitoring_files_name_only_series_that_exist() -> None:
    """monitoring/alerts.yml parses, every rule has an expr and a severity, the dashboard is
    JSON, and every fedbus_* series either names is one the agents serve (the two expiry
    gauges come with certificate renewal and CRL re-signing)."""
    import json
    import re
    from pathlib import Path

    import yaml

    from agent.runtime.metrics import Metrics

    root = Path(__file__).resolve().parent.parent / "monitoring"
    alerts = yaml.safe_load((root / "alerts.yml").read_text())
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    assert rules
    assert all(rule["expr"] and rule["labels"]["severity"] for rule in rules)
    dashboard = json.loads((root / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    served = {m.name for m in Metrics().registry.collect()}
    later = {
        "fedbus_certificate_expiry_timestamp_seconds",
        "fedbus_crl_next_update_timestamp_seconds",
    }
    named = set(re.findall(r"fedbus_[a-z_]+", " ".join([*exprs, *(r["expr"] for r in rules)])))
    bases = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in named}
    assert bases - later <= served, bases - later - served
