"""Runs of a long-lived aggregator over a real mosquitto: a device enrolls while no run is
training (the process idles after its run, enrollment still answered) and joins the next
run, which continues from the first run's final model; ``fedbus runs`` lists both."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.config import AfterRun, AgentConfig, IdentityConfig
from agent.identity import ca, pem
from agent.identity.certificates import fingerprint, identity_of
from agent.identity.device import enroll
from agent.identity.registry import Registry
from agent.messages.bodies import RoundPhase
from agent.node import enrolled_check
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RunSummary
from agent.roles.aggregator.runs import list_runs
from agent.roles.aggregator.service import serve
from agent.roles.trainer import Trainer
from agent.runtime.enrollment import EnrollmentService
from agent.state import read_weights
from tests.helpers import aggregator_config, fedbus, toy, trainer_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


def files_for(
    where: Path, agent_id: str, key: object, cert: object, authority_cert: object
) -> IdentityConfig:
    pem.write_private_key(where / f"{agent_id}.key", key)  # type: ignore[arg-type]
    pem.write_pem(where / f"{agent_id}.pem", cert)  # type: ignore[arg-type]
    pem.write_pem(where / "ca.pem", authority_cert)  # type: ignore[arg-type]
    return IdentityConfig(
        cert_file=where / f"{agent_id}.pem",
        key_file=where / f"{agent_id}.key",
        ca_file=where / "ca.pem",
    )


async def test_an_agent_enrolled_between_runs_joins_the_next_run(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    url, pki = mosquitto.url, tmp_path / "pki"
    authority = ca.init_ca("fed")
    registry = Registry.open(tmp_path / "registry.sqlite")

    def issued(agent_id: str, role: Role) -> IdentityConfig:
        key, cert = ca.issue(authority, agent_id, role=role)
        registry.record_enrollment(identity_of(cert), cert)
        return files_for(pki, agent_id, key, cert, authority.cert)

    base = aggregator_config(url, tmp_path, agents=2, rounds=1)
    schedule = msgspec.structs.replace(base.aggregator, status_every=0.3, after_run=AfterRun.SERVE)
    config = msgspec.structs.replace(
        base, aggregator=schedule, identity=issued("aggregator", Role.AGGREGATOR)
    )

    def trainer_with(agent_id: str, ident: IdentityConfig) -> AgentConfig:
        return msgspec.structs.replace(trainer_config(agent_id, url, tmp_path), identity=ident)

    configs = {a: trainer_with(a, issued(a, Role.TRAINER)) for a in ("a1", "a2")}
    buses = {a: bus_from_url(url, BusSettings(client_id=a)) for a in ("a1", "a2", "a3")}
    enroll_bus = bus_from_url(url, BusSettings(client_id="aggregator-enroll"))
    agg_bus = bus_from_url(url, BusSettings(client_id="aggregator"))
    built: list[Aggregator] = []

    def builder(cfg: AgentConfig) -> Callable[[], Aggregator]:
        def build() -> Aggregator:
            built.append(
                Aggregator(
                    config=cfg,
                    bus=agg_bus,
                    plugin_name="toy",
                    initial_weights=toy(0, 1).get_weights(),
                    revoked=enrolled_check(registry),
                )
            )
            return built[-1]

        return build

    async def play(_: Aggregator, work: object) -> RunSummary | None:
        return await work  # type: ignore[misc]

    async def finished(_: Aggregator) -> None:
        return None

    service = EnrollmentService(enroll_bus, authority, registry, "fed", sender="aggregator")
    try:
        for bus in [*buses.values(), enroll_bus, agg_bus]:
            await bus.__aenter__()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(Trainer(config=configs[a], bus=buses[a], plugin=toy(v, 1)).run())
                for a, v in (("a1", 1.0), ("a2", 3.0))
            ]
            first = tg.create_task(
                serve(
                    builder(config),
                    after_run=AfterRun.SERVE,
                    play=play,
                    finished=finished,
                    registry=registry,
                    enrollment=service,
                )
            )
            run1 = config.state_dir / "runs" / "run-0001"
            async with asyncio.timeout(30):
                while (
                    not (run1 / "result.json").is_file()
                    or built[-1].board.phase is not RoundPhase.IDLE
                ):
                    await asyncio.sleep(0.05)
            # no run is training: a device enrolls
            token = registry.create_token("a3", 600)
            got = await enroll(
                url,
                federation="fed",
                agent_id="a3",
                token=token,
                ca_fingerprint=fingerprint(authority.cert),
                timeout=20,
            )
            a3 = trainer_with("a3", files_for(pki, "a3", got.key, got.cert, got.ca_cert))
            tasks.append(
                tg.create_task(Trainer(config=a3, bus=buses["a3"], plugin=toy(5.0, 1)).run())
            )
            first.cancel()  # the operator restarts the aggregator for the next run
            await asyncio.wait([first])
            again = msgspec.structs.replace(
                config,
                aggregator=msgspec.structs.replace(
                    schedule, min_available_clients=3, continue_from="last", after_run=AfterRun.EXIT
                ),
            )
            summary = await serve(
                builder(again), after_run=AfterRun.EXIT, play=play, finished=finished
            )
            for task in tasks:
                task.cancel()
    finally:
        for bus in [*buses.values(), enroll_bus, agg_bus]:
            await bus.__aexit__(None, None, None)
        registry.close()
    assert summary is not None
    assert [sorted(r.survivors) for r in summary.rounds] == [["a1", "a2", "a3"]]
    runs = list_runs(config.state_dir)
    assert [(r.run_id, str(r.outcome), r.rounds_done) for r in runs] == [
        ("run-0001", "completed", 1),
        ("run-0002", "completed", 1),
    ]
    assert runs[1].continued_from == "run-0001"
    run2 = config.state_dir / "runs" / "run-0002"
    first_final = read_weights(run1 / "global_model.npz")
    np.testing.assert_array_equal(
        read_weights(run2 / "rounds" / "0000" / "model.npz")[0], first_final[0]
    )
    listed = fedbus("runs", "list", "--state-dir", str(config.state_dir), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ["run-0001", "run-0002"]
    shown = fedbus("runs", "show", "run-0002", "--state-dir", str(config.state_dir))
    assert shown.returncode == 0, shown.stderr
    assert "continued_from: run-0001" in shown.stdout
