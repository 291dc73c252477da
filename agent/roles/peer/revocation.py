"""Revocation in a P2P federation: the CA host announces, every peer refuses
(ARCHITECTURE.md §14).

The broker already shuts a revoked device out (mosquitto's CRL, the NATS callout, eviction:
``agent.runtime.evict``), but a peer does not rely on the broker alone: a model that was
queued for it, or one that crosses a broker whose CRL lags, must not be mixed either. The
aggregator host (which runs only the CA, enrollment, the CRL refresh and the callout in p2p
mode) publishes ``revocations`` (``announce.announce_revocations``): the CRL built from the registry
(RFC 5280 §5, DER, signed by the CA) and the agents revoked now, retained on MQTT and re-sent
every ``every`` s for NATS, at once after a change. Each peer (``PeerRevocations``):

* checks the CRL's issuer and signature against its own CA certificate and ignores a CRL
  older (``last_update``) than the one it holds (a replay);
* refuses every message signed by a certificate whose serial the CRL lists (the
  ``Verifier``'s ``revoked`` check: the message is dropped, reason ``revoked``);
* stops waiting for, sending to and mixing the named neighbours
  (``book.NeighbourBook.revoke``: their held model is discarded);
* stops itself (``AgentRevokedError``) when it is named.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import structlog
from cryptography import x509

from agent.errors import AgentRevokedError, ProtocolError
from agent.messages.envelope import Message
from agent.messages.peer_bodies import Revocations
from agent.role import Identity
from agent.roles.peer.book import NeighbourBook

log = structlog.get_logger(__name__)


class BadRevocationsError(ProtocolError):
    """A ``revocations`` body whose CRL is unreadable or not signed by our CA."""

    reason = "bad_crl"


class PeerRevocations:
    """What one peer knows of revocations (see the module docstring); ``book`` (None in
    unit tests) is told of each revoked neighbour."""

    def __init__(
        self, ca_cert: x509.Certificate, *, agent_id: str = "", book: NeighbourBook | None = None
    ) -> None:
        self._ca, self._id, self._book = ca_cert, agent_id, book
        self._self_revoked = asyncio.Event()
        self._updated: dt.datetime | None = None
        #: serials listed in the newest CRL held
        self.serials: frozenset[int] = frozenset()
        #: agents the newest announcement names as revoked
        self.agents: frozenset[str] = frozenset()

    def refuses(self, identity: Identity) -> bool:
        """The ``Verifier``'s ``revoked`` check: True for a certificate the CRL lists."""
        return identity.serial in self.serials

    def update(self, body: Revocations) -> frozenset[str] | None:
        """Take ``body``; returns the agents it revokes that were not revoked before, or None
        for a CRL older than the one held (nothing changes).

        Raises:
            BadRevocationsError: the CRL is not DER, or not issued and signed by our CA.
        """
        try:
            crl = x509.load_der_x509_crl(body.crl)
            valid = crl.issuer == self._ca.subject and crl.is_signature_valid(
                self._ca.public_key()  # type: ignore[arg-type]
            )
        except (ValueError, TypeError) as exc:
            raise BadRevocationsError("the revocations' CRL is not readable") from exc
        if not valid:
            raise BadRevocationsError("the revocations' CRL is not signed by our CA")
        updated = crl.last_update_utc
        if self._updated is not None and updated < self._updated:
            return None
        self._updated = updated
        self.serials = frozenset(r.serial_number for r in crl)
        new = frozenset(body.agents) - self.agents
        self.agents = frozenset(body.agents)
        return new

    async def on_message(self, message: Message[Revocations]) -> None:
        """The ``revocations`` listener: a bad CRL is dropped with its reason; each newly
        revoked neighbour leaves the book; our own id stops us (``stop_when_revoked``)."""
        try:
            new = self.update(message.body)
        except BadRevocationsError as exc:
            log.warning("message_dropped", reason=exc.reason, kind=str(message.kind))
            return
        for agent_id in sorted(new or ()):
            if agent_id == self._id:
                log.error("agent_revoked", consequence="stopping")
                self._self_revoked.set()
            elif self._book is not None:
                self._book.revoke(agent_id)

    async def stop_when_revoked(self) -> None:
        """Raises ``AgentRevokedError`` once the CA host announced us revoked (the process
        exits with its status, as a revoked trainer's does)."""
        await self._self_revoked.wait()
        raise AgentRevokedError(
            f"agent {self._id!r} is revoked by the federation's CA: stopping; re-enroll (a new "
            "token from the operator) to take part again"
        )
