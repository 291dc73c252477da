"""Enrolling between runs on NATS with no reload: a locked-down nats-server in auth-callout
mode (only the aggregator listed), the aggregator serving the callout and enrollment. After
its run the aggregator idles (``after_run = serve``); a device enrolls over the bus as the
enroll identity, connects at once with its new certificate, and joins the next run."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from agent.brokers import free_port
from agent.bus.base import Bus, BusSettings
from agent.bus.url import TlsFiles, bus_from_url
from agent.config import AfterRun, AgentConfig, IdentityConfig
from agent.identity.ca import issue
from agent.identity.ca_dir import init_ca_dir
from agent.identity.certificates import identity_of
from agent.identity.device import enroll
from agent.identity.pem import write_pem, write_private_key
from agent.identity.registry import Registry
from agent.lockdown import Members, embedded_broker, write_broker_config
from agent.lockdown.nats_jwt import load_or_create_issuer, public_key
from agent.messages.bodies import RoundPhase
from agent.node import enrolled_check
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RunSummary
from agent.roles.aggregator.service import serve
from agent.roles.trainer import Trainer
from agent.runtime.auth_callout import CalloutAuthority, serve_callout
from agent.runtime.enrollment import EnrollmentService
from tests.helpers import aggregator_config, toy, trainer_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]
FED = "fed"


def _settings(name: str) -> BusSettings:
    return BusSettings(client_id=name, backoff_initial=0.05, backoff_max=0.5)


async def test_an_agent_enrolled_between_runs_joins_the_next_run_on_nats_with_no_reload(
    tmp_path: Path,
) -> None:
    ca_dir, pki = tmp_path / "ca", tmp_path / "pki"
    pki.mkdir()
    authority = init_ca_dir(ca_dir, FED, aggregator_id="aggregator")
    registry = Registry.open(ca_dir / "registry.sqlite")
    issuer = load_or_create_issuer(ca_dir / "nats-callout.seed")
    files = write_broker_config(
        "nats",
        authority,
        tmp_path / "broker",
        Members("aggregator"),
        port=free_port(),
        callout_issuer=public_key(issuer),
    )
    agg_tls = TlsFiles(files.ca_file, ca_dir / "aggregator.pem", ca_dir / "aggregator.key")
    agg_identity = IdentityConfig(
        cert_file=agg_tls.cert_file, key_file=agg_tls.key_file, ca_file=files.ca_file
    )

    def trainer_files(agent_id: str) -> TlsFiles:
        key, cert = issue(authority, agent_id, role=Role.TRAINER)
        registry.record_enrollment(identity_of(cert), cert)
        write_private_key(pki / f"{agent_id}.key", key)
        write_pem(pki / f"{agent_id}.pem", cert)
        return TlsFiles(files.ca_file, pki / f"{agent_id}.pem", pki / f"{agent_id}.key")

    def trainer(agent_id: str, tls: TlsFiles, value: float, url: str) -> Trainer:
        ident = IdentityConfig(cert_file=tls.cert_file, key_file=tls.key_file, ca_file=tls.ca_file)
        config = msgspec.structs.replace(trainer_config(agent_id, url, tmp_path), identity=ident)
        bus = bus_from_url(url, _settings(f"{FED}-{agent_id}"), tls=tls)
        buses.append(bus)
        return Trainer(config=config, bus=bus, plugin=toy(value, 1))

    buses: list[Bus] = []
    built: list[Aggregator] = []
    with embedded_broker(files) as broker:
        url = broker.url
        base = aggregator_config(url, tmp_path, agents=2, rounds=1, round_timeout=3.0)
        # The trainers may connect before the callout service subscribes: nats-server then
        # holds their CONNECT for its auth timeout (the TLS timeout + 1 s) before it
        # refuses them and they retry, so run 1 waits for joins longer than that.
        schedule = msgspec.structs.replace(
            base.aggregator, status_every=0.3, after_run=AfterRun.SERVE, join_timeout=30.0
        )
        config = msgspec.structs.replace(base, aggregator=schedule, identity=agg_identity)
        agg_bus = bus_from_url(url, _settings("aggregator"), tls=agg_tls)
        enroll_bus = bus_from_url(url, _settings("aggregator-enroll"), tls=agg_tls)
        context: ssl.SSLContext = agg_tls.ssl_context()

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

        service = EnrollmentService(enroll_bus, authority, registry, FED, sender="aggregator")
        callout = CalloutAuthority(authority.cert, registry, issuer, ttl=3600)
        trainers = [trainer(a, trainer_files(a), v, url) for a, v in (("a1", 1.0), ("a2", 3.0))]
        try:
            for bus in (agg_bus, enroll_bus, *buses):
                await bus.__aenter__()
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(serve_callout(callout, url, tls=context))]
                tasks += [tg.create_task(t.run()) for t in trainers]
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
                async with asyncio.timeout(40):
                    while (
                        not (run1 / "result.json").is_file()
                        or built[-1].board.phase is not RoundPhase.IDLE
                    ):
                        await asyncio.sleep(0.05)
                # no run is training: a device enrolls, as the shared enroll identity
                got = await enroll(
                    url,
                    federation=FED,
                    agent_id="a3",
                    token=registry.create_token("a3", 600),
                    ca_fingerprint=authority.fingerprint,
                    tls=TlsFiles(files.ca_file, ca_dir / "enroll.pem", ca_dir / "enroll.key"),
                    timeout=20,
                )
                write_private_key(pki / "a3.key", got.key)
                write_pem(pki / "a3.pem", got.cert)
                a3 = trainer(
                    "a3", TlsFiles(files.ca_file, pki / "a3.pem", pki / "a3.key"), 5.0, url
                )
                await buses[-1].__aenter__()
                tasks.append(tg.create_task(a3.run()))
                first.cancel()  # the operator starts the next run
                await asyncio.wait([first])
                again = msgspec.structs.replace(
                    config,
                    aggregator=msgspec.structs.replace(
                        schedule, min_available_clients=3, after_run=AfterRun.EXIT
                    ),
                )
                summary = await serve(
                    builder(again), after_run=AfterRun.EXIT, play=play, finished=finished
                )
                for task in tasks:  # the callout and the trainers run until cancelled
                    task.cancel()
        finally:
            for bus in (agg_bus, enroll_bus, *buses):
                await bus.__aexit__(None, None, None)
            registry.close()
    assert summary is not None
    assert [sorted(r.survivors) for r in summary.rounds] == [["a1", "a2", "a3"]]
