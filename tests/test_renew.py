"""Certificate renewal over the bus with no token (agent.runtime.renewal, .renewer): a
certificate a day from expiry is renewed, signed with itself; the registry supersedes the
old one, which can then renew nothing; the new one is on disk, signs, and is in the TLS
context; on a real mosquitto the renewed agent reconnects after the CRL lists the old one."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from agent.brokers import EmbeddedBroker, free_port
from agent.bus import Bus, BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.bus.url import TlsFiles, bus_from_url
from agent.cli.debug import status_lines
from agent.errors import BrokerRefusedError, IdentityError
from agent.identity.ca import CertificateAuthority, build_csr, issue, sign_csr
from agent.identity.ca_dir import init_ca_dir
from agent.identity.certificates import identity_of
from agent.identity.device import enroll
from agent.identity.keypair import certifies, commit_pair, recover_pair, stage_key, staged
from agent.identity.pem import load_certificate, load_private_key, write_pem, write_private_key
from agent.identity.registry import CertStatus, Registry
from agent.identity.verifier import Verifier
from agent.lockdown import Members, embedded_broker, local_mosquitto_user, write_broker_config
from agent.messages import topics
from agent.messages.bodies import AgentSummary, FederationStatus, Liveness, RoundPhase
from agent.messages.kinds import Kind
from agent.messages.signing import Signer
from agent.role import Role
from agent.runtime.enrollment import EnrollmentService
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security
from agent.runtime.outbox import Outbox
from agent.runtime.renewal import RenewalService
from agent.runtime.renewer import CertificateRenewer, RenewalFiles

pytestmark = pytest.mark.timeout(60)
FED = "fed1"


@dataclass
class Setup:
    ca: CertificateAuthority
    registry: Registry
    ca_dir: Path
    cert_file: Path
    key_file: Path


def _setup(tmp_path: Path, *, valid_days: int = 1) -> Setup:
    """A CA directory with a registry, and agent-1 enrolled with a certificate that
    expires in ``valid_days``."""
    ca_dir = tmp_path / "ca"
    ca = init_ca_dir(ca_dir, FED, aggregator_id="agg")
    registry = Registry.open(ca_dir / "registry.sqlite")
    key, cert = issue(ca, "agent-1", role=Role.TRAINER, valid_days=valid_days)
    registry.record_enrollment(identity_of(cert), cert)
    cert_file, key_file = tmp_path / "a1" / "cert.pem", tmp_path / "a1" / "key.pem"
    write_private_key(key_file, key)
    write_pem(cert_file, cert)
    return Setup(ca, registry, ca_dir, cert_file, key_file)


@contextlib.asynccontextmanager
async def _service(s: Setup, bus: Bus) -> AsyncIterator[None]:
    """The aggregator's enrollment connection, serving renewals, on ``bus``."""
    agg = Signer(
        load_private_key(s.ca_dir / "aggregator.key"), load_certificate(s.ca_dir / "aggregator.pem")
    )
    outbox = Outbox(bus, federation=FED, sender="agg", signer=agg)
    renewal = RenewalService(outbox, s.ca, s.registry, ca_dir=s.ca_dir, min_interval=0.0)
    service = EnrollmentService(bus, s.ca, s.registry, FED, sender="agg", renewal=renewal)
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), 10)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def _trainer(
    s: Setup, bus: Bus, tls: ssl.SSLContext | None = None, tls_files: TlsFiles | None = None
) -> AsyncIterator[CertificateRenewer]:
    """agent-1's outbox and a renewer answering on its inbox."""
    signer = Signer(load_private_key(s.key_file), load_certificate(s.cert_file))
    outbox = Outbox(bus, federation=FED, sender="agent-1", signer=signer)
    files = RenewalFiles(
        s.cert_file,
        None if tls_files is None else tls_files.cert_file,
        None if tls_files is None else tls_files.key_file,
        key_file=s.key_file,
    )
    renewer = CertificateRenewer(
        outbox=outbox,
        ca=s.ca.cert,
        files=files,
        reply_timeout=5.0,
        tls=tls,
        metrics_registry=CollectorRegistry(),
    )
    listeners = ListenerRegistry()
    listeners.register(Kind.RENEW_REPLY, renewer.on_reply, rounds=RoundPolicy.ANY)
    dispatcher = Dispatcher(
        federation=FED,
        registry=listeners,
        current_round=lambda: 0,
        max_payload=1 << 20,
        security=Security(Verifier(s.ca.cert)),
    )
    await bus.subscribe(topics.INBOX.format(FED, "agent-1"))
    task = asyncio.create_task(dispatcher.run(bus))
    try:
        yield renewer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_certificate_near_expiry_is_renewed_without_a_token(tmp_path: Path) -> None:
    """A certificate expiring in a day (renew_before 30 days) is due; one renewal replaces
    it and its key (rotated: a new key made here, the request signed with the old pair) on
    disk and as the signer, the registry calls the old one superseded, and a renewal
    signed with the old certificate gets no answer (its messages are refused)."""
    s = _setup(tmp_path)
    old = load_certificate(s.cert_file)
    old_key = load_private_key(s.key_file)
    broker = MemoryBroker()
    async with (
        MemoryBus(broker, BusSettings(client_id="agg-enroll")) as agg_bus,
        MemoryBus(broker, BusSettings(client_id="agent-1")) as bus,
        _service(s, agg_bus),
        _trainer(s, bus) as renewer,
    ):
        assert renewer.due()
        assert await renewer.renew()
        new = load_certificate(s.cert_file)
        assert new.serial_number != old.serial_number
        assert renewer.outbox.signer is not None
        assert renewer.outbox.signer.cert == new
        new_key = load_private_key(s.key_file)
        assert certifies(new, new_key)
        assert not certifies(new, old_key)
        assert renewer.outbox.signer.key.private_numbers() == new_key.private_numbers()
        assert not staged(s.key_file).exists()
        assert new.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
        assert not renewer.due()
        assert s.registry.cert_status("agent-1", old.serial_number) is CertStatus.SUPERSEDED
        assert s.registry.cert_status("agent-1", new.serial_number) is CertStatus.CURRENT
        row = s.registry.agent("agent-1")
        assert row is not None
        assert row.expires_at == new.not_valid_after_utc
        crl = x509.load_pem_x509_crl((s.ca_dir / "crl.pem").read_bytes())
        assert old.serial_number in [r.serial_number for r in crl]
        # the superseded certificate cannot renew again
        renewer.outbox.signer = Signer(old_key, old)
        renewer.reply_timeout = 0.5
        assert not await renewer.renew()


@pytest.mark.broker
async def test_a_renewed_agent_reconnects_to_mosquitto_once_the_old_certificate_is_revoked(
    tmp_path: Path,
) -> None:
    """On a locked-down mosquitto: agent-1 renews over its TLS session; the broker's CRL then
    lists the old serial and is reloaded, and agent-1's next session (the same TLS context,
    reloaded by the renewer) is accepted, while a client presenting the old one is not."""
    s = _setup(tmp_path)
    old_tls = TlsFiles(s.ca_dir / "ca.pem", tmp_path / "old.pem", tmp_path / "old.key")
    write_pem(old_tls.cert_file, load_certificate(s.cert_file))  # type: ignore[arg-type]
    write_private_key(tmp_path / "old.key", load_private_key(s.key_file))
    files = write_broker_config(
        "mqtt",
        s.ca,
        tmp_path / "broker",
        Members("agg", ("agent-1",)),
        port=free_port(),
        mosquitto_user=local_mosquitto_user(),
    )
    agg_tls = TlsFiles(files.ca_file, s.ca_dir / "aggregator.pem", s.ca_dir / "aggregator.key")
    tls_files = TlsFiles(files.ca_file, s.cert_file, s.key_file)
    context = tls_files.ssl_context()

    def settings(name: str) -> BusSettings:
        return BusSettings(name, backoff_initial=0.05, backoff_max=0.3, connect_timeout=2.0)

    with embedded_broker(files) as broker:
        async with (
            bus_from_url(broker.url, settings("agg-enroll"), tls=agg_tls) as agg_bus,
            bus_from_url(broker.url, settings("agent-1"), context=context) as bus,
        ):
            await agg_bus.wait_connected(timeout=10)
            await bus.wait_connected(timeout=10)
            async with _service(s, agg_bus), _trainer(s, bus, context, tls_files) as renewer:
                assert await renewer.renew()
        members = Members("agg", ("agent-1",), revoked_serials=tuple(s.registry.revoked_serials()))
        write_broker_config(
            "mqtt",
            s.ca,
            files.directory,
            members,
            port=files.port,
            mosquitto_user=local_mosquitto_user(),
        )
        broker.reload()
        async with bus_from_url(broker.url, settings("agent-1"), context=context) as again:
            await again.wait_connected(timeout=10)
        async with bus_from_url(broker.url, settings("agent-1-old"), tls=old_tls) as stale:
            with pytest.raises((TimeoutError, BrokerRefusedError)):
                await stale.wait_connected(timeout=2.0)


@pytest.mark.broker
async def test_a_mistyped_pin_costs_neither_the_token_nor_the_working_certificate(
    tmp_path: Path, mosquitto: EmbeddedBroker
) -> None:
    """An enrolled device re-enrolls with a mistyped --ca-fingerprint: the aggregator refuses
    (fingerprint_mismatch) before it redeems the token or signs anything, so the device's
    certificate stays current and the same token then works with the right pin."""
    s = _setup(tmp_path, valid_days=365)
    working = load_certificate(s.cert_file)
    token = s.registry.create_token("agent-1", 60)
    wrong = "0" * 64
    settings = BusSettings("agg-enroll", backoff_initial=0.05, backoff_max=0.3)
    async with bus_from_url(mosquitto.url, settings) as agg_bus, _service(s, agg_bus):
        with pytest.raises(IdentityError) as refused:
            await enroll(
                mosquitto.url,
                federation=FED,
                agent_id="agent-1",
                token=token,
                ca_fingerprint=wrong,
                timeout=10,
            )
        assert refused.value.reason == "fingerprint_mismatch"
        status = s.registry.cert_status("agent-1", working.serial_number)
        assert status is CertStatus.CURRENT
        result = await enroll(
            mosquitto.url,
            federation=FED,
            agent_id="agent-1",
            token=token,
            ca_fingerprint=s.ca.fingerprint,
            timeout=10,
        )
    assert result.identity.agent_id == "agent-1"


def test_expiry_shows_in_status_and_metrics(tmp_path: Path) -> None:
    """``fedbus status`` prints each agent's certificate expiry; the renewer's gauge holds
    the notAfter of the certificate in use."""
    summary = FederationStatus(
        round=1,
        phase=RoundPhase.TRAINING,
        detail="training",
        agents={"agent-1": AgentSummary(state=Liveness.ONLINE, cert_expires=1798761600.0)},
    )
    assert "cert expires 2027-01-01" in "\n".join(status_lines(FED, summary))
    s = _setup(tmp_path)
    signer = Signer(load_private_key(s.key_file), load_certificate(s.cert_file))
    metrics = CollectorRegistry()
    CertificateRenewer(
        outbox=Outbox(
            MemoryBus(MemoryBroker(), BusSettings("x")),
            federation=FED,
            sender="agent-1",
            signer=signer,
        ),
        ca=s.ca.cert,
        files=RenewalFiles(s.cert_file),
        metrics_registry=metrics,
    )
    gauge = metrics.get_sample_value("fedbus_certificate_expiry_timestamp_seconds")
    assert gauge == signer.cert.not_valid_after_utc.timestamp()


def test_a_rotation_interrupted_at_any_step_leaves_a_matching_pair(tmp_path: Path) -> None:
    """A crash after the new key was staged (before the answer) keeps the old pair; a crash
    after the new certificate was written but before its key is finished by the loader
    (``recover_pair``), in both copies ``[identity]`` and ``[tls]`` may name."""
    s = _setup(tmp_path)
    copy_cert, copy_key = tmp_path / "tls.pem", tmp_path / "tls.key"
    old, old_key = load_certificate(s.cert_file), load_private_key(s.key_file)
    write_pem(copy_cert, old)
    write_private_key(copy_key, old_key)
    certs, keys = [s.cert_file, copy_cert], [s.key_file, copy_key]
    stage_key(keys)  # crash: no answer yet
    recover_pair(certs, keys)
    assert load_certificate(s.cert_file) == old
    assert certifies(old, load_private_key(s.key_file))
    assert not staged(s.key_file).exists()
    new_key = stage_key(keys)
    csr = build_csr(new_key, agent_id="agent-1", federation=FED)
    new = sign_csr(s.ca, csr, agent_id="agent-1", role=Role.TRAINER, valid_days=30)
    write_pem(copy_cert, new)  # crash: one certificate copy written, no key yet
    recover_pair(certs, keys)
    for cert_file, key_file in zip(certs, keys, strict=True):
        assert load_certificate(cert_file) == new
        assert certifies(new, load_private_key(key_file))
    assert not any(staged(k).exists() for k in keys)
    commit_pair(certs, keys, new, new_key)  # a finished commit recovers to itself
    recover_pair(certs, keys)
    assert certifies(load_certificate(s.cert_file), load_private_key(s.key_file))
