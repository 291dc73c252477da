"""A trainer's join attempts: which ``join`` an answer answers, and what the agent holds.

Each join the trainer starts (a new process, after a reconnect, for a new run or aggregator
incarnation) draws a new random ``attempt``; the join loop's retries (no answer within
``trainer.join_retry``, or the broker's acknowledgement late) keep it. The aggregator answers
a retry of the attempt it answered last with ``join_accepted`` alone, without the model
(``roles.aggregator.admission``), and the trainer ignores a second answer to the attempt it
was admitted by: nothing in it is new, and taking it would move its round back. Every join
says which model the agent holds (version and SHA-256), so a rejoin after a reconnect is not
sent the model it has; ``join_accepted`` names the model in force, and a held model that is
not it is dropped (it may be another run's).
"""

from __future__ import annotations

import secrets

from agent.messages.bodies import JoinAccepted, JoinRequest
from agent.plugin.loader import CheckedPlugin
from agent.roles.trainer.model import HeldModel


class JoinAttempts:
    """The current join attempt and the one an aggregator admitted us by."""

    def __init__(self) -> None:
        #: this join's ``JoinRequest.attempt`` (16 hex digits), kept by its retries
        self.current = secrets.token_hex(8)
        self._admitted = ("", "")  # (attempt, incarnation) of the admission held

    def renew(self) -> None:
        """A new join (not a retry): an answer to the earlier one may be lost."""
        self.current = secrets.token_hex(8)

    def request(
        self, agent_id: str, plugin: CheckedPlugin, *, held: HeldModel | None
    ) -> JoinRequest:
        """The ``join`` body of the current attempt, saying which model is ``held``."""
        return JoinRequest(
            agent_id=agent_id,
            plugin=plugin.name,
            num_examples=plugin.num_examples(),
            capabilities=["fedavg"],
            attempt=self.current,
            held_version=held.version if held else None,
            held_sha256=held.sha256 if held else None,
        )

    def answered_again(self, body: JoinAccepted, *, admitted: bool) -> bool:
        """Whether ``body`` answers again the attempt we are ``admitted`` by (a retry's
        answer: to be ignored); if not, it is the admission held from now on."""
        if admitted and body.attempt and (body.attempt, body.incarnation) == self._admitted:
            return True
        self._admitted = (body.attempt, body.incarnation)
        return False


def keeps(held: HeldModel | None, body: JoinAccepted) -> bool:
    """Whether the ``held`` model is the one in force that ``body`` names."""
    return held is not None and (held.version, held.sha256) == (body.version, body.sha256)
