"""The demo's identity stack: a fresh federation CA, a locked-down broker, one-time tokens,
and every agent enrolled over the bus before it starts (ARCHITECTURE.md §6), all from this
process as a fleet (``agent.fleet.enroll``), each with its own key and token.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.brokers import BrokerKind, free_port
from agent.bus.base import BusSettings
from agent.bus.url import TlsFiles, bus_from_url
from agent.errors import FedbusError
from agent.fleet.enroll import FleetDevice, enroll_fleet
from agent.identity.ca import CertificateAuthority, init_ca, issue, save_ca
from agent.identity.ca_dir import write_crl
from agent.identity.install import DeviceSetup
from agent.identity.pem import load_certificate, load_private_key, write_pem
from agent.identity.pem import write_private_key as write_key
from agent.identity.registry import Registry
from agent.lockdown import Members, local_mosquitto_user, write_broker_config
from agent.lockdown.files import BrokerFiles
from agent.messages.signing import Signer
from agent.role import Role
from agent.runtime.enrollment import EnrollmentService

log = structlog.get_logger(__name__)
AGGREGATOR_ID = "aggregator"
ENROLL_ID = "enroll"


@dataclass(frozen=True, slots=True)
class DemoPki:
    """Where the demo's CA and identities live (``REPORT/pki``)."""

    directory: Path
    ca: CertificateAuthority

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    @property
    def registry(self) -> Path:
        return self.directory / "registry.sqlite"


def create_pki(directory: Path, federation: str) -> DemoPki:
    """A new CA (the old demo CA, if any, is discarded), its registry, and the aggregator's
    and the shared enroll identity's keys and certificates."""
    shutil.rmtree(directory, ignore_errors=True)
    ca = init_ca(federation)
    save_ca(ca, directory)
    pki = DemoPki(directory, ca)
    for name, role in ((AGGREGATOR_ID, Role.AGGREGATOR), (ENROLL_ID, Role.ENROLL)):
        key, cert = issue(ca, name, role=role)
        write_key(pki.key(name), key)
        write_pem(pki.cert(name), cert)
    with Registry.open(pki.registry) as registry:
        write_crl(directory, registry)
    return pki


def lock_down(pki: DemoPki, kind: BrokerKind, agent_ids: Sequence[str]) -> BrokerFiles:
    """Broker configs admitting only the CA's identities, each to its own topics."""
    members = Members(AGGREGATOR_ID, tuple(agent_ids))
    return write_broker_config(
        kind,
        pki.ca,
        pki.directory / "broker",
        members,
        port=free_port(),
        mosquitto_user=local_mosquitto_user(),
    )


def tls_files(pki: DemoPki, name: str, url: str) -> TlsFiles:
    """Client TLS files for ``name`` on a TLS URL; none on a plain one."""
    if not url.startswith(("mqtts://", "tls://")):
        return TlsFiles(None, None, None)
    return TlsFiles(pki.ca_file, pki.cert(name), pki.key(name))


@asynccontextmanager
async def enrollment_service(
    pki: DemoPki, registry: Registry, *, url: str, federation: str, seconds: float = 60.0
) -> AsyncIterator[EnrollmentService]:
    """The CA's enrollment service on its own connection (as the aggregator's), answering
    while the block runs; entered once it listens on a live broker session."""
    settings = BusSettings(client_id=f"{federation}-demo-enroll")
    async with bus_from_url(url, settings, tls=tls_files(pki, AGGREGATOR_ID, url)) as bus:
        signer = Signer(
            load_private_key(pki.key(AGGREGATOR_ID)), load_certificate(pki.cert(AGGREGATOR_ID))
        )
        service = EnrollmentService(
            bus,
            pki.ca,
            registry,
            federation,
            sender=AGGREGATOR_ID,
            ca_dir=pki.directory,
            signer=signer,
        )
        serving = asyncio.create_task(service.run(), name="demo-enrollment")
        try:
            async with asyncio.timeout(seconds):
                await service.ready.wait()
            yield service
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)


def fleet_devices(
    pki: DemoPki,
    tokens: Mapping[str, str],
    *,
    url: str,
    work: Path,
    plugin: str,
    options: Mapping[str, Mapping[str, Any]],
) -> list[FleetDevice]:
    """One ``FleetDevice`` per agent of ``tokens``: config ``work/AGENT.toml``, state
    ``work/AGENT/``, its plugin options from ``options``."""
    ca_file = tls_files(pki, ENROLL_ID, url).ca_file
    return [
        FleetDevice(
            a, token, DeviceSetup(url, work / a, work / f"{a}.toml", plugin, options[a], ca_file)
        )
        for a, token in tokens.items()
    ]


async def enroll_agents(
    pki: DemoPki,
    *,
    url: str,
    federation: str,
    work: Path,
    plugin: str,
    options: Mapping[str, Mapping[str, Any]],
    seconds: float = 60.0,
) -> dict[str, Path]:
    """Enroll every agent of ``options`` (agent id → plugin options) over the bus from this
    process (``agent.fleet.enroll.enroll_fleet``: per agent a key made for it, a CSR, its own
    one-time token, as ``fedbus enroll`` does), while an enrollment service answers.

    Returns agent id → the config file its enrollment wrote.

    Raises:
        FedbusError: an enrollment failed (the message quotes the first failure).
    """
    tls = tls_files(pki, ENROLL_ID, url)
    with Registry.open(pki.registry) as registry:
        tokens = registry.create_tokens(list(options), ttl_seconds=600)
        devices = fleet_devices(pki, tokens, url=url, work=work, plugin=plugin, options=options)
        async with enrollment_service(pki, registry, url=url, federation=federation):
            result = await enroll_fleet(
                devices,
                federation=federation,
                ca_fingerprint=pki.ca.fingerprint,
                tls_cert=tls.cert_file,
                tls_key=tls.key_file,
                timeout=seconds,
            )
    if result.failed:
        agent_id, exc = min(result.failed.items())
        raise FedbusError(f"enrolling {agent_id} failed: {exc}")
    log.info("demo_agents_enrolled", agents=len(result.installed))
    return {a: result.installed[a].config_path for a in options}
