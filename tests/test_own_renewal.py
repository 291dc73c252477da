"""The aggregator renews its own certificate from the CA it holds (agent.runtime.own_renewal):
near expiry it gets a new key and certificate, written as a pair, recorded (the old serial
superseded), loaded into the shared TLS context and handed to what signs."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from agent.bus.url import TlsFiles
from agent.config import AgentConfig, IdentityConfig, PluginConfig, TlsConfig
from agent.identity.ca_dir import init_ca_dir
from agent.identity.keypair import certifies, staged
from agent.identity.pem import load_certificate, load_private_key
from agent.identity.registry import CertStatus, Registry
from agent.messages.signing import Signer
from agent.role import Role
from agent.runtime.own_renewal import OwnRenewer

pytestmark = pytest.mark.timeout(30)


async def test_the_aggregator_renews_its_own_certificate_near_expiry(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    authority = init_ca_dir(ca_dir, "fed", aggregator_id="agg")
    registry = Registry.open(ca_dir / "registry.sqlite")
    cert_file, key_file = ca_dir / "aggregator.pem", ca_dir / "aggregator.key"
    config = AgentConfig(
        role=Role.AGGREGATOR,
        agent_id="agg",
        federation="fed",
        bus_url="mqtts://127.0.0.1:8883",
        state_dir=tmp_path / "state",
        plugin=PluginConfig(name="toy"),
        identity=IdentityConfig(
            cert_file=cert_file, key_file=key_file, ca_file=ca_dir / "ca.pem", ca_dir=ca_dir
        ),
        tls=TlsConfig(ca_file=ca_dir / "ca.pem", cert_file=cert_file, key_file=key_file),
    )
    old = load_certificate(cert_file)
    adopted: list[Signer] = []
    tls = TlsFiles(ca_dir / "ca.pem", cert_file, key_file).ssl_context()
    renewer = OwnRenewer(authority, registry, config, adopted.append, tls, check_every=0.05)
    assert renewer.renew_if_due() is None  # a year left: not due
    renewer.clock = lambda: old.not_valid_after_utc - dt.timedelta(days=10)
    task = asyncio.create_task(renewer.run())
    try:
        async with asyncio.timeout(10):
            while not adopted:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    new = load_certificate(cert_file)
    assert new.serial_number != old.serial_number
    assert certifies(new, load_private_key(key_file))
    assert not certifies(old, adopted[-1].key)  # the key rotated
    assert adopted[-1].cert == new
    assert not staged(key_file).exists()
    assert registry.cert_status("agg", old.serial_number) is CertStatus.SUPERSEDED
    assert registry.cert_status("agg", new.serial_number) is CertStatus.CURRENT
