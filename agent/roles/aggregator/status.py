"""What the aggregator says about itself: its ``RoundPhase`` with a human ``detail``, published
as ``federation_status`` (retained) on every change and every ``status_every`` seconds, and
the one-line text systemd shows (``STATUS=``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping

from agent.messages import topics
from agent.messages.bodies import (
    AgentSummary,
    FederationStatus,
    Liveness,
    RoundPhase,
    RoundSummary,
)
from agent.roles.aggregator.records import AgentRecord, RoundRecord
from agent.roles.liveness import LivenessTracker
from agent.runtime.outbox import Outbox

#: Phases inside a round: their text is prefixed with the round number.
IN_ROUND = frozenset({RoundPhase.TRAINING, RoundPhase.EVALUATING})


class StatusBoard:
    """The aggregator's phase, the last finished round, and the agents it knows.

    Args:
        liveness: what the agents said of themselves.
        admitted: the admitted agents (read at each report).
        current_round: the aggregator's current round (read at each report).
        revoked: agents revoked while the aggregator runs (shown revoked, never online).
        incarnation, run_id: this aggregator process and its run, said in every report.
    """

    def __init__(
        self,
        *,
        liveness: LivenessTracker,
        admitted: Mapping[str, AgentRecord],
        current_round: Callable[[], int],
        revoked: Collection[str] = (),
        incarnation: str = "",
        run_id: str = "",
    ) -> None:
        self._revoked = revoked
        self.incarnation, self.run_id = incarnation, run_id
        self._liveness = liveness
        self._admitted = admitted
        self._round = current_round
        self.phase = RoundPhase.STARTING
        #: for humans: ``waiting for 3 agents``, ``training (5 agents)``, ...
        self.detail = "starting"
        self.last_round: RoundRecord | None = None
        #: how often the aggregator's bus reconnected (``FederationStatus.reconnects``)
        self.reconnects = 0
        self._changed = asyncio.Event()
        #: set whenever ``text`` may have changed (systemd's ``STATUS=`` is pushed from it)
        self.text_changed = asyncio.Event()

    def enter(self, phase: RoundPhase, detail: str) -> None:
        """Now in ``phase``; ``detail`` says more, for humans."""
        self.phase, self.detail = phase, detail
        self.text_changed.set()

    def finished_round(self, record: RoundRecord) -> None:
        """A round ended: report it at once."""
        self.last_round = record
        self.changed()

    def changed(self) -> None:
        """Something worth reporting happened: send ``federation_status`` now."""
        self._changed.set()
        self.text_changed.set()

    def reconnected(self) -> float:
        """Our bus reconnected: say so at once, so that trainers resend what they published
        while we had no session (``FederationStatus.reconnects``, ``roles.trainer.resend``).
        Returns when (``time.monotonic()``)."""
        self.reconnects += 1
        self.changed()
        return time.monotonic()

    @property
    def text(self) -> str:
        """One line for humans (systemd ``STATUS=``), e.g. ``round 3: training (5 agents)``."""
        if self.phase in IN_ROUND:
            return f"round {self._round()}: {self.detail}"
        return self.detail

    def federation_status(self) -> FederationStatus:
        """The summary ``fedbus status`` shows."""
        admitted, live = self._admitted, self._liveness
        known = sorted(set(admitted) | set(live.agents) | set(self._revoked))
        last = self.last_round
        gone = AgentSummary(state=Liveness.OFFLINE, detail="revoked", revoked=True)
        return FederationStatus(
            round=self._round(),
            phase=self.phase,
            detail=self.detail,
            agents={
                a: gone if a in self._revoked else live.summary(a, admitted=a in admitted)
                for a in known
            },
            incarnation=self.incarnation,
            run_id=self.run_id,
            reconnects=self.reconnects,
            last_round=None
            if last is None
            else RoundSummary(
                round=last.round,
                survivors=last.survivors,
                dropouts=last.dropouts,
                accuracy=last.accuracy,
                loss=last.loss,
                seconds=round(last.seconds, 3),
            ),
        )

    async def report(self, outbox: Outbox, *, every: float) -> None:
        """Send ``federation_status`` (retained) on every change, and every ``every`` s for
        subscribers that missed it (NATS keeps nothing). Runs until cancelled."""
        while True:
            try:
                async with asyncio.timeout(every):
                    await self._changed.wait()
            except TimeoutError:
                pass
            self._changed.clear()
            await outbox.try_send(
                topics.FEDERATION_STATUS, self.federation_status(), round=self._round()
            )
