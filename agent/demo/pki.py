"""The demo's identity stack: a fresh federation CA, a locked-down broker, one-time tokens,
and every agent enrolled over the bus by its own ``fedbus enroll`` process (its key is made
there and never leaves it) before it starts (ARCHITECTURE.md §6).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.brokers import BrokerKind, free_port
from agent.bus.base import BusSettings
from agent.bus.url import TlsFiles, bus_from_url
from agent.errors import FedbusError
from agent.identity.ca import CertificateAuthority, init_ca, issue, save_ca
from agent.identity.ca_dir import write_crl
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
    """Enroll every agent of ``options`` (agent id → plugin options) through its own
    ``fedbus enroll`` process, while an enrollment service answers on the bus.

    Returns agent id → the config file its enrollment wrote.

    Raises:
        FedbusError: an enrollment failed (the message quotes its error line).
    """
    with Registry.open(pki.registry) as registry:
        tokens = {a: registry.create_token(a, ttl_seconds=600) for a in options}
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
                results = await asyncio.gather(
                    *(
                        _enroll_one(
                            pki,
                            a,
                            token=tokens[a],
                            url=url,
                            federation=federation,
                            work=work,
                            plugin=plugin,
                            options=options[a],
                            seconds=seconds,
                        )
                        for a in options
                    )
                )
            finally:
                serving.cancel()
                await asyncio.gather(serving, return_exceptions=True)
    return dict(zip(options, results, strict=True))


async def _enroll_one(
    pki: DemoPki,
    agent_id: str,
    *,
    token: str,
    url: str,
    federation: str,
    work: Path,
    plugin: str,
    options: Mapping[str, Any],
    seconds: float,
) -> Path:
    config = work / f"{agent_id}.toml"
    args = [
        "-m",
        "agent",
        "enroll",
        "--federation",
        federation,
        "--agent-id",
        agent_id,
        "--ca-fingerprint",
        pki.ca.fingerprint,
        "--bus-url",
        url,
        "--state-dir",
        str(work / agent_id),
        "--config",
        str(config),
        "--plugin",
        plugin,
        "--timeout",
        str(seconds),
    ]
    for key, value in options.items():
        args += ["-o", f"{key}={json.dumps(value)}"]
    tls = tls_files(pki, ENROLL_ID, url)
    if tls.cert_file is not None:
        args += [
            "--tls-ca",
            str(pki.ca_file),
            "--tls-cert",
            str(pki.cert(ENROLL_ID)),
            "--tls-key",
            str(pki.key(ENROLL_ID)),
        ]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FEDBUS_ENROLL_TOKEN": token},  # a secret: never on the command line
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise FedbusError(
            f"enrolling {agent_id} failed: {lines[-1] if lines else process.returncode}"
        )
    log.info("demo_agent_enrolled", agent=agent_id)
    return config
