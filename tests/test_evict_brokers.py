"""A revoked agent's open connection is closed (agent.runtime.evict), on a real mosquitto
(session takeover by client id, after the CRL reload) and a real nats-server in auth-callout
mode (CONNZ and KICK through the system account): its reconnect is then refused and its
bus stops (``BrokerRefusedError``, exit status 78)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent.brokers import free_port
from agent.bus import BusSettings
from agent.bus.base import Bus
from agent.bus.refusal import Refusal
from agent.bus.url import TlsFiles, bus_from_url
from agent.errors import BrokerRefusedError
from agent.identity.ca import CertificateAuthority, issue
from agent.identity.ca_dir import init_ca_dir
from agent.identity.certificates import identity_of
from agent.identity.pem import write_pem, write_private_key
from agent.identity.registry import Registry
from agent.lockdown import (
    Members,
    embedded_broker,
    local_mosquitto_user,
    regenerate,
    write_broker_config,
)
from agent.lockdown.nats_jwt import (
    SYSTEM_SEED,
    load_or_create_issuer,
    load_or_create_system_user,
    public_key,
)
from agent.role import Role
from agent.roles.aggregator.service import watch_revocations
from agent.runtime.auth_callout import CalloutAuthority, serve_callout
from agent.runtime.evict import MqttEvictor, NatsEvictor

pytestmark = pytest.mark.timeout(60)
FED = "fed1"
WAIT = 20.0  # bound for what should happen promptly; never asserted as a duration


def _trainer(ca: CertificateAuthority, ca_file: Path, where: Path) -> tuple[TlsFiles, object]:
    key, cert = issue(ca, "a1", role=Role.TRAINER)
    write_private_key(where / "a1.key", key)
    write_pem(where / "a1.pem", cert)
    return TlsFiles(ca_file, where / "a1.pem", where / "a1.key"), cert


@contextlib.asynccontextmanager
async def _connected(url: str, tls: TlsFiles) -> AsyncIterator[Bus]:
    settings = BusSettings(
        f"{FED}-a1", backoff_initial=0.05, backoff_max=0.3, connect_timeout=3, refusal_grace=0.5
    )
    async with bus_from_url(url, settings, tls=tls) as bus:
        await bus.wait_connected(timeout=WAIT)
        yield bus


async def _stops(bus: Bus) -> BrokerRefusedError:
    async def drain() -> None:
        async with asyncio.timeout(WAIT):
            async for _ in bus.messages():
                pass

    with pytest.raises(BrokerRefusedError) as raised:
        await drain()
    return raised.value


@pytest.mark.broker
async def test_mosquitto_drops_a_revoked_agents_session_by_takeover(tmp_path: Path) -> None:
    ca = init_ca_dir(tmp_path / "ca", FED, aggregator_id="agg")
    files = write_broker_config(
        "mqtt",
        ca,
        tmp_path / "broker",
        Members("agg", ("a1",)),
        port=free_port(),
        mosquitto_user=local_mosquitto_user(),
    )
    tls, cert = _trainer(ca, files.ca_file, tmp_path)
    agg = TlsFiles(
        files.ca_file, tmp_path / "ca" / "aggregator.pem", tmp_path / "ca" / "aggregator.key"
    )
    serial = cert.serial_number  # type: ignore[attr-defined]
    with embedded_broker(files) as broker:
        async with _connected(broker.url, tls) as bus:
            revoked = Members(
                "agg", revoked=("a1",), revoked_serials=((serial, dt.datetime.now(dt.UTC)),)
            )
            regenerate(files, ca, revoked)
            await asyncio.to_thread(broker.reload)  # what the CRL refresher does
            assert bus.is_connected  # mosquitto does not re-check an open connection
            await MqttEvictor("127.0.0.1", files.port, tls=agg.ssl_context(), federation=FED).evict(
                ["a1"]
            )
            error = await _stops(bus)
    assert error.reason == Refusal.CERTIFICATE_REVOKED


@pytest.mark.broker
async def test_nats_kicks_a_revoked_agents_connection_through_the_system_account(
    tmp_path: Path,
) -> None:
    ca_dir = tmp_path / "ca"
    ca = init_ca_dir(ca_dir, FED, aggregator_id="agg")
    registry = Registry.open(ca_dir / "registry.sqlite")
    issuer = load_or_create_issuer(ca_dir / "nats-callout.seed")
    system = load_or_create_system_user(ca_dir / SYSTEM_SEED)
    files = write_broker_config(
        "nats",
        ca,
        tmp_path / "broker",
        Members("agg"),
        port=free_port(),
        callout_issuer=public_key(issuer),
        system_user=public_key(system),
    )
    tls, cert = _trainer(ca, files.ca_file, tmp_path)
    registry.record_enrollment(identity_of(cert), cert)  # type: ignore[arg-type]
    agg = TlsFiles(files.ca_file, ca_dir / "aggregator.pem", ca_dir / "aggregator.key")
    authority = CalloutAuthority(ca.cert, registry, issuer, ttl=3600)
    evictor = NatsEvictor(
        f"tls://127.0.0.1:{files.port}",
        tls=agg.ssl_context(),
        seed=ca_dir / SYSTEM_SEED,
        federation=FED,
    )
    with embedded_broker(files) as broker:
        ready = asyncio.Event()
        callout = asyncio.create_task(
            serve_callout(authority, broker.url, tls=agg.ssl_context(), ready=ready)
        )
        try:
            await asyncio.wait_for(ready.wait(), WAIT)
            async with _connected(broker.url, tls) as bus:
                registry.revoke("a1")
                assert await evictor.evict(["a1"]) == 1
                error = await _stops(bus)
        finally:
            callout.cancel()
            await asyncio.gather(callout, return_exceptions=True)
    assert error.reason == Refusal.NOT_AUTHORIZED


async def test_the_revocation_watch_hands_each_revoked_agent_over_once(tmp_path: Path) -> None:
    """``watch_revocations(on_revoked=…)``: every revoked agent at the first look, then
    only the ones revoked since."""
    ca = init_ca_dir(tmp_path / "ca", FED, aggregator_id="agg")
    registry = Registry.open(tmp_path / "ca" / "registry.sqlite")
    for agent_id in ("a1", "a2", "a3"):
        _, cert = issue(ca, agent_id, role=Role.TRAINER)
        registry.record_enrollment(identity_of(cert), cert)
    registry.revoke("a1")
    seen: list[list[str]] = []
    got = asyncio.Event()

    async def revoked(agent_ids: Sequence[str]) -> None:
        seen.append(sorted(agent_ids))
        got.set()

    watch = asyncio.create_task(
        watch_revocations(registry, lambda: None, every=0.05, on_revoked=revoked)
    )
    try:
        await asyncio.wait_for(got.wait(), WAIT)
        got.clear()
        registry.revoke("a3")
        await asyncio.wait_for(got.wait(), WAIT)
        await asyncio.sleep(0.2)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    assert seen == [["a1"], ["a3"]]
