"""Enrolling a fleet over the bus from one process: one ``enroll_online`` per device (the
function behind ``fedbus enroll bus``: a fresh key made here, a CSR, the device's own
one-time token, the pinned CA fingerprint, every check of the reply), run concurrently, at
most ``concurrency`` at a time. A refusal (a bad or used token) fails that device only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.bus.admission import ConnectGate, use_gate
from agent.errors import FedbusError
from agent.identity.install import DeviceSetup, Installed, enroll_online

log = structlog.get_logger(__name__)

#: Enrollments in flight at once (each holds a broker connection while it waits).
DEFAULT_CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class FleetDevice:
    """One device to enroll: its agent id, its one-time token, and what its config says."""

    agent_id: str
    token: str
    setup: DeviceSetup

    def __repr__(self) -> str:  # the token is a secret: never in a log or an error
        return f"FleetDevice(agent_id={self.agent_id!r})"


@dataclass(frozen=True, slots=True)
class FleetEnrollment:
    """What ``enroll_fleet`` did: agent id → what it installed, or why it failed."""

    installed: dict[str, Installed]
    failed: dict[str, FedbusError]


async def enroll_fleet(
    devices: Sequence[FleetDevice],
    *,
    federation: str,
    ca_fingerprint: str,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109 - each device's deadline, as fedbus enroll's
    concurrency: int = DEFAULT_CONCURRENCY,
) -> FleetEnrollment:
    """Enroll every device of ``devices`` (``agent.identity.install.enroll_online``), at most
    ``concurrency`` at a time, each within ``timeout`` s of its start.

    Args:
        tls_cert, tls_key: the shared enroll identity, for a locked-down broker.

    Returns:
        Every device in ``installed`` or ``failed`` (an ``IdentityError`` with the CA's
        reason — ``bad_token``, ``used_token``, ... — or a ``ConfigError``). Nothing raises
        for one device.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    gate = asyncio.Semaphore(concurrency)
    installed: dict[str, Installed] = {}
    failed: dict[str, FedbusError] = {}

    async def one(device: FleetDevice) -> None:
        async with gate:
            try:
                installed[device.agent_id] = await enroll_online(
                    device.setup,
                    device.token,
                    federation=federation,
                    agent_id=device.agent_id,
                    ca_fingerprint=ca_fingerprint,
                    tls_cert=tls_cert,
                    tls_key=tls_key,
                    timeout=timeout,
                )
            except FedbusError as exc:
                failed[device.agent_id] = exc
                log.warning("fleet_enroll_failed", agent_id=device.agent_id, error=str(exc))

    with use_gate(ConnectGate()):  # their connects, a bounded number at a time
        async with asyncio.TaskGroup() as tg:
            for device in devices:
                tg.create_task(one(device), name=f"enroll-{device.agent_id}")
    log.info("fleet_enrolled", enrolled=len(installed), failed=len(failed))
    return FleetEnrollment(installed, failed)
