"""Federations over a real mosquitto and a real nats-server (started by fixtures).

The agents here are real OS processes (``python -m agent run``) training the digits MLP,
driven by ``fedbus demo --bus-url`` pointed at the fixture's broker; the bad-input tests run
a trainer in-process so its log lines can be captured.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.messages import FitIns, Kind, decode, encode
from agent.roles.aggregator import Aggregator
from agent.roles.trainer import Trainer
from tests.helpers import aggregator_config, fedbus, toy, trainer_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


def test_federation_learns_over_each_broker(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Three agent processes and an aggregator federate the digits MLP over the broker: every
    agent survives every round and test accuracy rises above 85%."""
    report = tmp_path / "report"
    run = fedbus(
        "demo",
        "--bus-url",
        broker.url,
        "--agents",
        "3",
        "--rounds",
        "4",
        "--report-dir",
        str(report),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    metrics = json.loads((report / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["survivors"] for r in rounds] == [["agent-00", "agent-01", "agent-02"]] * 4
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"]
    assert metrics["final_accuracy"] >= 0.85
    assert metrics["centralized_accuracy"] >= 0.9
    assert "final accuracy" in run.stdout


def test_killed_agent_is_a_dropout_and_the_round_completes(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """An agent SIGKILLed once it is in round 2's cohort never answers: round 2 completes with
    the two others as survivors, and round 3 runs without it. On MQTT its last will says it
    went offline, so it is not waited for and is left out of round 3's cohort; on NATS (no
    will) round 2 waits for its deadline.
    (Also: --insecure says loudly what it turns off.)
    (Plain FedAvg: with SecAgg+, 3 agents tolerate no dropout; tests/test_secagg_brokers.py
    kills agents in secure rounds.)"""
    report = tmp_path / "report"
    run = fedbus(
        "demo",
        "--bus-url",
        broker.url,
        "--agents",
        "3",
        "--rounds",
        "3",
        "--kill-agents",
        "1",
        "--round-timeout",
        "3",
        "--secure-aggregation",
        "none",
        "--insecure",
        "--report-dir",
        str(report),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rounds = json.loads((report / "metrics.json").read_text())["rounds"]
    assert rounds[0]["dropouts"] == []
    killed = rounds[1]["dropouts"]
    assert len(killed) == 1
    assert sorted(rounds[1]["survivors"] + killed) == ["agent-00", "agent-01", "agent-02"]
    if broker.kind == "mqtt":
        # its last will (status: offline) told the aggregator: not waited for, left out next
        assert killed[0] not in rounds[2]["cohort"]
    else:
        # NATS has no will: the round waited for its deadline (heartbeats time out later)
        assert rounds[1]["seconds"] >= 3.0
    assert killed[0] not in rounds[2]["survivors"]
    assert len(rounds[2]["survivors"]) == 2
    assert "killed" in run.stdout
    assert "WARNING: --insecure" in run.stdout  # said loudly


async def test_bad_messages_are_dropped_and_the_agent_keeps_working(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Garbage, a wrong-federation fit_ins and a redelivered fit_ins sent to an agent's inbox
    are each dropped with a message_dropped line naming the reason; the agent still trains in
    every round."""
    inbox = "fl/fed/agent/a1"
    injected = asyncio.Event()

    async def inject() -> None:
        async with bus_from_url(broker.url, BusSettings(client_id="intruder")) as spy:
            await spy.subscribe(inbox)
            await spy.wait_connected(timeout=10)
            async for raw in spy.messages():
                if decode(raw.payload).kind is Kind.FIT_INS:
                    break
            await spy.publish(inbox, raw.payload)  # the same message again: a duplicate
            await spy.publish(inbox, b"\x92\x01not msgpack at all")
            wrong = FitIns(model_version=0, model_sha256="0" * 64, deadline=5.0)
            await spy.publish(
                inbox, encode(wrong, federation="other", round=1, sender="aggregator")
            )
            injected.set()

    with capture_logs() as logs:
        async with (
            bus_from_url(broker.url, BusSettings(client_id="a1")) as b1,
            bus_from_url(broker.url, BusSettings(client_id="a2")) as b2,
            bus_from_url(broker.url, BusSettings(client_id="agg")) as b3,
            asyncio.TaskGroup() as tg,
        ):
            spy = tg.create_task(inject())
            await asyncio.sleep(0.5)  # let the spy subscribe before round 1
            trainers = [
                tg.create_task(
                    Trainer(
                        config=trainer_config(a, broker.url, tmp_path), bus=b, plugin=toy(v, 1)
                    ).run()
                )
                for a, b, v in (("a1", b1, 1.0), ("a2", b2, 3.0))
            ]
            config = aggregator_config(broker.url, tmp_path, agents=2, rounds=3)
            summary = await Aggregator(
                config=config, bus=b3, plugin_name="toy", initial_weights=toy(0, 1).get_weights()
            ).run()
            await asyncio.wait_for(injected.wait(), 10)
            for task in [*trainers, spy]:
                task.cancel()
    reasons = sorted(e["reason"] for e in logs if e["event"] == "message_dropped")
    assert reasons == ["duplicate", "malformed", "wrong_federation"]
    assert [r.survivors for r in summary.rounds] == [["a1", "a2"]] * 3
    assert summary.rounds[-1].loss == pytest.approx(2.0)


def test_sigterm_stops_a_trainer_cleanly(nats_server: EmbeddedBroker, tmp_path: Path) -> None:
    """A trainer process (`fedbus run`) waiting to be admitted exits 0 on SIGTERM and logs
    agent_stopping."""
    config = trainer_config("a1", nats_server.url, tmp_path)
    config_path = tmp_path / "a1.toml"
    config_path.write_bytes(
        config.to_toml().replace(b'name = "toy"', b'name = "digits-mlp"')
        + b"\n[plugin.options]\nagent_index = 0\nnum_agents = 2\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if '"join_sent"' in line or not line:
                break
        assert any('"join_sent"' in x for x in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + out
    assert '"agent_stopping"' in out


@pytest.mark.parametrize("bus", ["nats", "mqtt"])
def test_demo_with_its_own_embedded_broker_writes_a_report(bus: str, tmp_path: Path) -> None:
    """`fedbus demo --bus X` starts its own broker and agents, prints a row per round, writes
    metrics.json (per-round records, final and centralized accuracy), a CSV and a PNG, and
    leaves no process behind."""
    report = tmp_path / "report"
    work = tmp_path / "tmp"  # the demo's temporary files, and so its processes' command lines
    run = fedbus(
        "demo",
        "--bus",
        bus,
        "--agents",
        "3",
        "--rounds",
        "2",
        "--report-dir",
        str(report),
        tmpdir=work,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    metrics = json.loads((report / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert {"final_accuracy", "centralized_accuracy"} <= metrics.keys()
    csv = (report / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("round,accuracy,loss")
    assert len(csv) == 3
    assert (report / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # trained beside the federation (agent/demo/reference.py): its line follows the rounds
    assert run.stdout.index("round  accuracy") < run.stdout.index("centralized reference")
    assert metrics["centralized_accuracy"] > 0.5
    # the full identity stack: a locked-down (TLS) broker and enrolled agents
    assert "identities: CA" in run.stdout
    assert ("mqtts://" if bus == "mqtt" else "tls://") in run.stdout
    assert (report / "pki" / "registry.sqlite").exists()
    leftovers = subprocess.run(  # the broker's config is under report/pki, agents' under work
        ["pgrep", "-af", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == "", leftovers.stdout


def test_a_second_demo_in_the_same_report_dir_trains(tmp_path: Path) -> None:
    """Each demo is a new federation with a new CA: a second run in the same report dir,
    sync then async, trains as the first did (the last run's aggregator state, its ledger
    signed under the old CA, made every agent refuse every model) and leaves one run."""
    report = tmp_path / "report"
    for mode in ("sync", "async"):
        run = fedbus(
            "demo",
            *("--bus", "nats", "--agents", "4", "--rounds", "2", "--mode", mode),
            *("--report-dir", str(report)),
            tmpdir=tmp_path / "tmp",
        )
        assert run.returncode == 0, mode + run.stdout + run.stderr
        rounds = json.loads((report / "metrics.json").read_text())["rounds"]
        assert [r["round"] for r in rounds] == [1, 2], mode
        assert all(r["survivors"] for r in rounds), rounds
    assert [p.name for p in (report / "aggregator" / "runs").iterdir()] == ["run-0001"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_stops_the_demo_and_everything_it_started(sig: int, tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) or SIGTERM in the middle of a demo run stops it with exit code 130 and
    leaves no broker or agent process behind."""
    work = tmp_path / "tmp"
    work.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "demo",
            "--agents",
            "3",
            "--rounds",
            "100",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(work), "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("3 "):  # the third round is done: all is running
                break
        running = subprocess.run(
            ["pgrep", "-af", str(tmp_path)], capture_output=True, text=True, check=False
        ).stdout
        fleets = [line for line in running.splitlines() if "agent fleet run" in line]
        assert sum(line.count(".toml") for line in fleets) == 3, running  # each agent once
        assert "nats-server" in running, running
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 130, "".join(lines) + out
    assert "interrupted" in out
    leftovers = subprocess.run(
        ["pgrep", "-af", str(tmp_path)], capture_output=True, text=True, check=False
    ).stdout
    assert leftovers.strip() == "", leftovers
