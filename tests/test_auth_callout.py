"""NATS without a reload per device (agent.runtime.auth_callout): on a real nats-server whose
config lists only the aggregator, a device enrolls through the callout (as the shared enroll
identity) and connects with its new certificate at once; revoked, superseded and unknown
certificates are refused by the broker itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import nkeys
import pytest

from agent.brokers import free_port
from agent.bus import BusSettings
from agent.bus.url import TlsFiles, bus_from_url
from agent.config import AgentConfig, IdentityConfig, PluginConfig
from agent.errors import BusTimeoutError
from agent.identity.ca import CertificateAuthority, issue
from agent.identity.ca_dir import init_ca_dir
from agent.identity.certificates import identity_of
from agent.identity.device import enroll
from agent.identity.pem import load_certificate, write_pem, write_private_key
from agent.identity.registry import Registry
from agent.lockdown import BrokerFiles, Members, embedded_broker, nats_jwt, write_broker_config
from agent.lockdown.nats_jwt import CALLOUT_SEED, load_or_create_issuer, public_key
from agent.role import Role
from agent.runtime.auth_callout import CalloutAuthority, callout_for, serve_callout
from agent.runtime.enrollment import EnrollmentService

pytestmark = pytest.mark.timeout(60)
FED = "fed1"


def settings(name: str) -> BusSettings:
    return BusSettings(name, backoff_initial=0.05, backoff_max=0.3, connect_timeout=5.0)


async def connects(url: str, tls: TlsFiles, name: str, *, within: float = 15.0) -> bool:
    """Whether a session comes up within ``within`` s (the bus retries meanwhile)."""
    async with bus_from_url(url, settings(name), tls=tls) as bus:
        try:
            await bus.wait_connected(timeout=within)
        except BusTimeoutError:
            return False
    return True


def client(ca: CertificateAuthority, files: BrokerFiles, where: Path, agent_id: str) -> TlsFiles:
    key, cert = issue(ca, agent_id, role=Role.TRAINER)
    write_private_key(where / f"{agent_id}.key", key)
    write_pem(where / f"{agent_id}.pem", cert)
    return TlsFiles(files.ca_file, where / f"{agent_id}.pem", where / f"{agent_id}.key")


@contextlib.asynccontextmanager
async def federation(
    tmp_path: Path,
) -> AsyncIterator[tuple[str, CertificateAuthority, Registry, BrokerFiles]]:
    """A CA directory, a nats-server in auth-callout mode, the callout and the enrollment
    service running as the aggregator."""
    ca_dir = tmp_path / "ca"
    ca = init_ca_dir(ca_dir, FED, aggregator_id="agg")
    registry = Registry.open(ca_dir / "registry.sqlite")
    issuer = load_or_create_issuer(ca_dir / "nats-callout.seed")
    files = write_broker_config(
        "nats",
        ca,
        tmp_path / "broker",
        Members("agg"),
        port=free_port(),
        callout_issuer=public_key(issuer),
    )
    agg = TlsFiles(files.ca_file, ca_dir / "aggregator.pem", ca_dir / "aggregator.key")
    authority = CalloutAuthority(ca.cert, registry, issuer, ttl=3600)
    with embedded_broker(files) as broker:
        ready = asyncio.Event()
        async with bus_from_url(broker.url, settings("agg-enroll"), tls=agg) as agg_bus:
            await agg_bus.wait_connected(timeout=10)  # the aggregator needs no callout
            service = EnrollmentService(agg_bus, ca, registry, FED, sender="agg")
            tasks = [
                asyncio.create_task(
                    serve_callout(authority, broker.url, tls=agg.ssl_context(), ready=ready)
                ),
                asyncio.create_task(service.run()),
            ]
            await asyncio.wait_for(ready.wait(), 10)
            await asyncio.wait_for(service.ready.wait(), 10)
            try:
                yield broker.url, ca, registry, files
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.broker
async def test_a_device_enrolls_and_connects_with_no_reload(tmp_path: Path) -> None:
    """The device enrolls over NATS as the enroll identity and its new certificate connects
    at once; revoking it makes the broker refuse its next connection."""
    async with federation(tmp_path) as (url, ca, registry, files):
        token = registry.create_token("dev1", 60)
        enroll_tls = TlsFiles(
            files.ca_file, tmp_path / "ca" / "enroll.pem", tmp_path / "ca" / "enroll.key"
        )
        result = await enroll(
            url,
            federation=FED,
            agent_id="dev1",
            token=token,
            ca_fingerprint=ca.fingerprint,
            tls=enroll_tls,
            timeout=15,
        )
        write_private_key(tmp_path / "dev1.key", result.key)
        write_pem(tmp_path / "dev1.pem", result.cert)
        device = TlsFiles(files.ca_file, tmp_path / "dev1.pem", tmp_path / "dev1.key")
        assert await connects(url, device, "dev1")
        registry.revoke("dev1")
        assert not await connects(url, device, "dev1", within=3.0)


@pytest.mark.broker
async def test_superseded_and_unknown_certificates_are_refused_by_the_broker(
    tmp_path: Path,
) -> None:
    """A CA-issued certificate the registry never recorded is refused; recorded, it
    connects; once a newer certificate of the same agent is recorded (a renewal), the old
    one is refused and the new one connects."""
    async with federation(tmp_path) as (url, ca, registry, files):
        old = client(ca, files, tmp_path, "a1")
        assert not await connects(url, old, "a1", within=3.0)  # unknown_agent
        cert = load_certificate(old.cert_file)
        registry.record_enrollment(identity_of(cert), cert)
        assert await connects(url, old, "a1")
        (tmp_path / "new").mkdir()
        new = client(ca, files, tmp_path / "new", "a1")
        fresh = load_certificate(new.cert_file)
        registry.record_enrollment(identity_of(fresh), fresh)
        assert not await connects(url, old, "a1", within=3.0)
        assert await connects(url, new, "a1")


def test_the_aggregator_serves_the_callout_only_on_nats_with_its_key(tmp_path: Path) -> None:
    """``callout_for``: a TLS NATS aggregator whose CA directory holds the callout key
    serves it; over MQTT, plaintext NATS, or without the key, it does not."""
    ca_dir = tmp_path / "ca"
    ca = init_ca_dir(ca_dir, FED, aggregator_id="agg")
    registry = Registry.open(ca_dir / "registry.sqlite")

    def config(url: str) -> AgentConfig:
        return AgentConfig(
            role=Role.AGGREGATOR,
            agent_id="agg",
            federation=FED,
            bus_url=url,
            state_dir=tmp_path / "state",
            plugin=PluginConfig(name="toy"),
            identity=IdentityConfig(ca_dir=ca_dir),
        )

    assert callout_for(config("tls://127.0.0.1:4222"), ca.cert, registry) is None
    load_or_create_issuer(ca_dir / CALLOUT_SEED)
    assert callout_for(config("tls://127.0.0.1:4222"), ca.cert, registry) is not None
    assert callout_for(config("nats://127.0.0.1:4222"), ca.cert, registry) is None
    assert callout_for(config("mqtts://127.0.0.1:8883"), ca.cert, registry) is None


def test_bad_requests_are_refused_without_a_traceback(tmp_path: Path) -> None:
    """A request that is not a server-signed JWT gets no answer; a tampered one neither; a
    valid one with no client certificate is answered with an error for its user."""
    ca = init_ca_dir(tmp_path / "ca", FED, aggregator_id="agg")
    issuer = load_or_create_issuer(tmp_path / "ca" / CALLOUT_SEED)
    authority = CalloutAuthority(
        ca.cert, Registry.open(tmp_path / "ca" / "registry.sqlite"), issuer, ttl=60
    )
    server = nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER)))
    user = "U" + "A" * 55
    request = nats_jwt.encode(
        {"sub": public_key(issuer), "nats": {"user_nkey": user, "server_id": {"id": "NSERVER"}}},
        server,
    )
    assert authority.decide("garbage") == ""
    head, payload, signature = request.split(".")
    assert authority.decide(f"{head}.{payload[:-2]}AA.{signature}") == ""
    answer = nats_jwt.decode(authority.decide(request))
    assert answer["sub"] == user
    assert answer["aud"] == "NSERVER"
    assert answer["nats"]["error"] == "no_certificate"
