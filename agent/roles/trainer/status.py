"""Where a trainer is (``TrainerState`` and its prose) and how it says so on the bus.

``Progress`` is the one record of the trainer's round and state, shared by its parts; the
state steers control flow, ``detail`` is for humans: it is the ``status`` the service manager
shows (``STATUS=``) and the ``detail`` of the agent's ``status`` messages, e.g.
``round 3: training``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import structlog

from agent.bus.base import Bus
from agent.messages import topics
from agent.messages.bodies import AgentStatus, Liveness
from agent.runtime.outbox import Outbox

log = structlog.get_logger(__name__)

#: How much of a failing plugin's message the status repeats.
MAX_ERROR = 200
#: ``AgentStatus.detail`` is bounded on the wire.
MAX_DETAIL = 1024


class TrainerState(StrEnum):
    """What a trainer is doing."""

    JOINING = "joining"  #: not admitted (yet, or again after a reconnect)
    REJECTED = "rejected"  #: the aggregator refused our join
    IDLE = "idle"  #: admitted, waiting for fit_ins or evaluate
    TRAINING = "training"  #: the plugin's fit runs
    MASKING = "masking"  #: SecAgg+: waiting for the neighbours' shares, then masking
    FIT_FAILED = "fit_failed"  #: the plugin's fit raised; idle until the next round
    FINISHED = "finished"  #: the aggregator finished the run; we re-join for the next one


def describe(state: TrainerState, *, round_: int, error: str = "") -> str:
    """The prose for ``state`` in round ``round_`` (``error``: why a fit failed)."""
    match state:
        case TrainerState.TRAINING | TrainerState.MASKING:
            return f"round {round_}: {state}"
        case TrainerState.FIT_FAILED:
            return f"idle (round {round_}: fit failed: {error[:MAX_ERROR]})"
        case _:
            return str(state)


@dataclass(slots=True)
class Progress:
    """The trainer's round (the newest it follows) and state, with its prose; ``changed``
    is set on every :meth:`enter` (the service manager's ``STATUS=`` is pushed from it)."""

    round: int = 0
    state: TrainerState = TrainerState.JOINING
    detail: str = str(TrainerState.JOINING)
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    def enter(self, state: TrainerState, *, round_: int | None = None, error: str = "") -> None:
        """Be in ``state`` (for round ``round_``, default the current round)."""
        self.state = state
        self.detail = describe(state, round_=self.round if round_ is None else round_, error=error)
        self.changed.set()


class StatusPublisher:
    """Publishes ``status/{agent_id}`` (retained): ``online`` with the trainer's ``detail``
    once connected and every ``heartbeat`` seconds, ``offline`` on a clean stop."""

    def __init__(
        self,
        *,
        bus: Bus,
        outbox: Outbox,
        agent_id: str,
        progress: Progress,
        model_version: Callable[[], int | None],
        heartbeat: float,
    ) -> None:
        self._bus = bus
        self._outbox = outbox
        self._id = agent_id
        self._progress = progress
        self._model_version = model_version
        self._heartbeat = heartbeat

    async def send(self, liveness: Liveness) -> None:
        """One status message (best effort: an unsent one is logged, not raised)."""
        body = AgentStatus(
            state=liveness,
            detail=self._progress.detail[:MAX_DETAIL],
            model_version=self._model_version(),
            cert_expires=None
            if self._outbox.signer is None
            else self._outbox.signer.cert.not_valid_after_utc.timestamp(),
        )
        await self._outbox.try_send(
            topics.STATUS, body, round=self._progress.round, agent_id=self._id
        )

    async def heartbeat(self) -> None:
        """``online`` once connected, then every ``heartbeat`` seconds; until cancelled."""
        while True:
            await self._bus.wait_connected()
            await self.send(Liveness.ONLINE)
            await asyncio.sleep(self._heartbeat)

    async def say_offline(self) -> None:
        """A clean stop says ``offline`` itself (MQTT sends the will only on a lost
        connection); best effort, bounded (2 s)."""
        try:
            async with asyncio.timeout(2.0):
                await self.send(Liveness.OFFLINE)
        except TimeoutError:
            log.warning("offline_status_not_sent")
