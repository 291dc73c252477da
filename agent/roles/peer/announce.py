"""The CA host's side of P2P revocation (``[aggregator] mode = "p2p"``, ARCHITECTURE.md §14):
``announce_revocations`` publishes the registry's CRL and revoked agents on
``fl/{federation}/revocations`` for the peers (``revocation.PeerRevocations``). Apart from the
peer's side, so that a device never imports the registry."""

from __future__ import annotations

import asyncio

import structlog

from agent.identity.ca import CertificateAuthority, build_crl
from agent.identity.registry import AgentStatus, Registry
from agent.messages import topics
from agent.messages.peer_bodies import Revocations
from agent.runtime.outbox import Outbox

log = structlog.get_logger(__name__)

#: Seconds between the CA host's looks at the registry (and between re-sends, for NATS).
ANNOUNCE_EVERY = 1.0
#: Re-send an unchanged announcement at least this often (NATS retains nothing).
RESEND_EVERY = 10.0


def revocations_of(ca: CertificateAuthority, registry: Registry) -> Revocations:
    """The announcement for the registry as it is now (a freshly signed CRL)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    crl = build_crl(ca, registry.revoked_serials())
    agents = sorted(r.agent_id for r in registry.agents() if r.status is AgentStatus.REVOKED)
    return Revocations(crl=crl.public_bytes(Encoding.DER), agents=agents)


async def announce_revocations(
    outbox: Outbox,
    ca: CertificateAuthority,
    registry: Registry,
    *,
    every: float = ANNOUNCE_EVERY,
    resend: float = RESEND_EVERY,
) -> None:
    """The CA host's side: publish ``revocations`` at start, within ``every`` s of a change
    in the registry's revoked serials, and every ``resend`` s; until cancelled."""
    loop = asyncio.get_running_loop()
    held: tuple[object, ...] | None = None
    sent_at = -resend
    while True:
        serials = await asyncio.to_thread(registry.revoked_serials)
        key = tuple(s for s, _ in serials)
        if key != held or loop.time() - sent_at >= resend:
            body = await asyncio.to_thread(revocations_of, ca, registry)
            if await outbox.try_send(topics.REVOCATIONS, body, round=0):
                if key != held:
                    log.info("revocations_announced", revoked=body.agents, serials=len(key))
                held, sent_at = key, loop.time()
        await asyncio.sleep(every)
