"""How a trainer follows its aggregator: which incarnation (aggregator process) admitted it,
which ones it left behind, and whether the aggregator said it is revoked.

A ``federation_status`` from an incarnation that is neither the one that admitted the trainer
nor one it left behind means the aggregator restarted (crashed, failed over): the trainer
joins again at once. A ``join_accepted`` of the admitting incarnation and run with an earlier
round than the admission held is a stale copy (resent or replayed after the current one): it is
ignored, or it would take the trainer back to that round and model. A signed
``join_rejected`` with ``RejectCode.REVOKED`` stops it with ``AgentRevokedError`` (exit
status 78: a service manager must not restart it).
"""

from __future__ import annotations

import asyncio

import structlog

from agent.errors import AgentRevokedError
from agent.messages.bodies import JoinAccepted, JoinRejected, RejectCode

log = structlog.get_logger(__name__)


class Follower:
    """The aggregator incarnation a trainer follows.

    Args:
        agent_id: the trainer (named in the error when revoked).
        signed: identities are on, so a refusal is the aggregator's own (only then may a
            ``revoked`` refusal stop the trainer: anyone can publish on an open broker).
    """

    def __init__(self, agent_id: str, *, signed: bool) -> None:
        self._id = agent_id
        self._signed = signed
        #: the incarnation that admitted us ("" before any, or when it does not say)
        self.incarnation = ""
        self._admission: tuple[str, int] = ("", 0)  # its run_id and round
        self._left: set[str] = set()
        #: the last incarnation ``is_new`` answered True for: joined at once once; until it
        #: admits us the join loop's backoff re-sends (else every status it publishes while
        #: a fleet joins would make every waiting trainer join again: O(n²) joins)
        self._announced = ""
        self._revoked = asyncio.Event()

    def admitted_by(self, incarnation: str, *, run_id: str = "", round: int = 0) -> None:
        """``join_accepted`` from ``incarnation`` (for ``run_id``, at ``round``)."""
        if self.incarnation and incarnation != self.incarnation:
            self._left.add(self.incarnation)
        self.incarnation = incarnation
        self._admission = (run_id, round)

    def stale(self, body: JoinAccepted) -> bool:
        """Whether ``body`` answered an earlier join than the admission held: the same
        (stated) incarnation and run, an earlier round."""
        run_id, round_ = self._admission
        same = bool(body.incarnation) and body.incarnation == self.incarnation
        return same and body.run_id == run_id and body.round < round_

    def is_new(self, incarnation: str) -> bool:
        """Whether a ``federation_status`` from ``incarnation`` is a new aggregator's; from
        then on the admitting one counts as left behind."""
        if not incarnation or incarnation in (self.incarnation, self._announced):
            return False
        if incarnation in self._left:
            return False
        self._announced = incarnation
        log.info("aggregator_incarnation_seen", previous=self.incarnation, incarnation=incarnation)
        if self.incarnation:
            self._left.add(self.incarnation)
        return True

    def rejected(self, body: JoinRejected, *, aggregator: str) -> None:
        """A ``join_rejected``: a signed ``revoked`` one stops the trainer."""
        if body.code is RejectCode.REVOKED and self._signed:
            log.error("agent_revoked", aggregator=aggregator, consequence="stopping")
            self._revoked.set()

    async def stop_when_revoked(self) -> None:
        """Raises ``AgentRevokedError`` once the aggregator said we are revoked."""
        await self._revoked.wait()
        raise AgentRevokedError(
            f"agent {self._id!r} is revoked by the federation's aggregator: stopping; "
            "re-enroll (a new token from the operator) to take part again"
        )
