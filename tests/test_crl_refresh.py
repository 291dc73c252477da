"""The long-lived aggregator keeps the CRLs fresh (agent.runtime.crl_refresh): a CRL within a
day of its nextUpdate is re-signed, and a real mosquitto that refused every handshake with
an expired CRL accepts enrolled agents again once it is sent SIGHUP through its pid file."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from agent.brokers import free_port
from agent.bus import BusSettings
from agent.bus.url import TlsFiles, bus_from_url
from agent.config import AgentConfig, IdentityConfig, PluginConfig
from agent.errors import BusTimeoutError
from agent.identity.ca import build_crl, init_ca, issue, save_ca
from agent.identity.certificates import identity_of
from agent.identity.pem import write_pem, write_private_key
from agent.identity.registry import CRL_FILE, Registry
from agent.lockdown import Members, embedded_broker, local_mosquitto_user, write_broker_config
from agent.role import Role
from agent.runtime.crl_refresh import CrlRefresher, crl_refresher_for, next_update

pytestmark = pytest.mark.timeout(60)
WAIT = 15.0  # bound for what should happen promptly; never asserted as a duration


def _refresher(tmp_path: Path, **kw: object) -> tuple[CrlRefresher, Path]:
    ca = init_ca("fed1")
    ca_dir = tmp_path / "ca"
    save_ca(ca, ca_dir)
    registry = Registry.open(ca_dir / "registry.sqlite")
    return CrlRefresher(ca=ca, registry=registry, ca_dir=ca_dir, **kw), ca_dir  # type: ignore[arg-type]


def test_a_crl_within_a_day_of_next_update_is_resigned(tmp_path: Path) -> None:
    """A CRL 12 h from nextUpdate (refresh_before 1 day) is re-signed for 30 days, once; a
    missing one is written; the gauge shows the earliest nextUpdate."""
    metrics = CollectorRegistry()
    refresher, ca_dir = _refresher(tmp_path, refresh_before=86400.0, metrics_registry=metrics)
    path = ca_dir / CRL_FILE
    assert refresher.refresh() == [path]  # missing: written
    write_pem(path, build_crl(refresher.ca, [], valid_days=0.5))
    assert refresher.stale(path)
    assert refresher.refresh() == [path]
    when = next_update(path)
    assert when is not None
    assert when - dt.datetime.now(dt.UTC) > dt.timedelta(days=29)
    assert refresher.refresh() == []  # fresh now: left alone
    gauge = metrics.get_sample_value("fedbus_crl_next_update_timestamp_seconds")
    assert gauge == pytest.approx(when.timestamp())
    _, cert = issue(refresher.ca, "agent-1", role=Role.TRAINER)
    refresher.registry.record_enrollment(identity_of(cert), cert)
    refresher.refresh()
    expiry = metrics.get_sample_value(
        "fedbus_agent_certificate_expiry_timestamp_seconds", {"agent_id": "agent-1"}
    )
    assert expiry == cert.not_valid_after_utc.timestamp()


async def _connects(url: str, tls: TlsFiles, name: str) -> bool:
    settings = BusSettings(name, backoff_initial=0.05, backoff_max=0.3, connect_timeout=2.0)
    async with bus_from_url(url, settings, tls=tls) as bus:
        try:
            await bus.wait_connected(timeout=2.0)
        except BusTimeoutError:
            return False
    return True


@pytest.mark.broker
async def test_mosquitto_accepts_agents_again_once_the_expired_crl_is_resigned(
    tmp_path: Path,
) -> None:
    """mosquitto started with an expired CRL refuses an enrolled agent's handshake; the
    refresher re-signs the broker's crl.pem and SIGHUPs the pid in the pid file, and the
    same agent connects again."""
    refresher, _ = _refresher(tmp_path, refresh_before=86400.0)
    ca = refresher.ca
    files = write_broker_config(
        "mqtt",
        ca,
        tmp_path / "broker",
        Members("agg", ("agent-1",)),
        port=free_port(),
        mosquitto_user=local_mosquitto_user(),
    )
    crl_path = files.directory / CRL_FILE
    write_pem(crl_path, build_crl(ca, [], valid_days=-0.001))  # nextUpdate 86 s ago
    key, cert = issue(ca, "agent-1", role=Role.TRAINER)
    write_private_key(tmp_path / "a1.key", key)
    write_pem(tmp_path / "a1.pem", cert)
    tls = TlsFiles(files.ca_file, tmp_path / "a1.pem", tmp_path / "a1.key")
    with embedded_broker(files) as broker:
        assert not await _connects(broker.url, tls, "agent-1")
        assert broker.pid is not None
        pid_file = tmp_path / "mosquitto.pid"
        pid_file.write_text(f"{broker.pid}\n")
        refresher.broker_dir, refresher.pid_file = files.directory, pid_file
        assert crl_path in refresher.refresh()
        connected = False
        async with asyncio.timeout(WAIT):
            while not connected:  # mosquitto applies the SIGHUP shortly after
                connected = await _connects(broker.url, tls, "agent-1")
    assert connected


def test_a_crl_missing_a_revoked_serial_is_resigned(tmp_path: Path) -> None:
    """A fresh CRL that lacks a serial the registry revoked since (a renewal superseded
    it) is re-signed with it, far from its nextUpdate."""
    refresher, ca_dir = _refresher(tmp_path, refresh_before=86400.0)
    path = ca_dir / CRL_FILE
    refresher.refresh()
    key, cert = issue(refresher.ca, "agent-1", role=Role.TRAINER)
    del key
    refresher.registry.record_enrollment(identity_of(cert), cert)
    assert refresher.refresh() == []
    refresher.registry.revoke("agent-1")
    assert refresher.refresh() == [path]
    crl = x509.load_pem_x509_crl(path.read_bytes())
    assert [r.serial_number for r in crl] == [cert.serial_number]


def test_the_aggregator_refreshes_the_crls_its_identity_table_names(tmp_path: Path) -> None:
    """``crl_refresher_for``: from ``[identity]`` (ca_dir, broker_dir, broker_pid_file, the
    two durations); none without a CA directory or with crl_refresh_before_days = 0."""
    refresher, ca_dir = _refresher(tmp_path)
    identity = IdentityConfig(
        ca_dir=ca_dir,
        broker_dir=tmp_path / "b",
        broker_pid_file=tmp_path / "pid",
        crl_refresh_before_days=1.0,
        crl_valid_days=10,
    )

    def config(ident: IdentityConfig) -> AgentConfig:
        return AgentConfig(
            role=Role.AGGREGATOR,
            agent_id="agg",
            federation="fed1",
            bus_url="mqtts://h:8883",
            state_dir=tmp_path / "s",
            plugin=PluginConfig(name="toy"),
            identity=ident,
        )

    made = crl_refresher_for(config(identity), refresher.ca, refresher.registry, None)
    assert made is not None
    assert made.paths() == [ca_dir / CRL_FILE, tmp_path / "b" / CRL_FILE]
    assert (made.refresh_before, made.valid_days) == (86400.0, 10)
    assert (
        crl_refresher_for(config(IdentityConfig()), refresher.ca, refresher.registry, None) is None
    )
    off = msgspec.structs.replace(identity, crl_refresh_before_days=0.0)
    assert crl_refresher_for(config(off), refresher.ca, refresher.registry, None) is None
