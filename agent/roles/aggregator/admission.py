"""Admission: which agents take part in this run (ARCHITECTURE.md §4, step 1).

An agent asks with ``join``; it is admitted when it speaks for itself (the body's agent id is
the envelope's sender) and trains this federation's plugin. An admitted agent gets
``join_accepted`` (with the run's sealing key when identities are on, the join's ``attempt``
and the version and digest of the model in force) and that model in its inbox, unless its
join says it holds it already; a refused one ``join_rejected`` saying why. Joining again
(after a reconnect: a new ``attempt``) re-admits, the model re-sent only if the agent lacks
it, and what its inbox may have missed sent again (``on_rejoin``). A *retry* (the attempt
answered last, re-sent because the answer or the broker's acknowledgement was late) gets
``join_accepted`` alone: the first answer, model included, was acknowledged by the broker
and is on its way (a reconnect would have drawn a new attempt). This is what keeps a fleet
cheap to admit: at 1,000 agents on mosquitto, joins whose QoS 1 acknowledgement took over
10 s were re-sent, and each re-admission cost a 400 KB model (4,965 admissions; issue 15).
An admitted agent's repeated joins while its answer is still going out (a chunked model
takes seconds) or within ``rejoin_interval`` (5 s) after it went are not answered at all
(``join_ignored reason=duplicate``, logged once per agent and window), nor are joins of an
earlier attempt than the one answered (by the agent's envelope timestamp) within that window:
a NATS bus re-publishes an agent's recent joins after a reconnect, when the agent has already
joined afresh (20 devices of a fleet started before their broker's auth callout was served:
each admitted 3 times, a model each time). (With 1 s and no
attempts, a fleet process still digesting its members' first answers re-sent their joins
and each was admitted again: 1,153 admissions for 300 agents; issue 15. A 10M-parameter
trainer retrying during its 40 MB model push got the model 4 or 5 times over on mosquitto;
issue 16.) Once the run finished, joins are left for the next run's aggregator.
``answers`` and ``models_sent`` count what this run sent (logged with every
``agent_admitted``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog

from agent.errors import RoundError
from agent.messages import topics
from agent.messages.bodies import JoinAccepted, JoinRejected, JoinRequest, RejectCode
from agent.messages.envelope import Message
from agent.roles.aggregator.broadcast import publish_model
from agent.roles.aggregator.records import AgentRecord, GlobalState
from agent.runtime.outbox import Outbox

log = structlog.get_logger(__name__)


class Admission:
    """The admitted set of one run.

    Args:
        outbox: answers joins.
        plugin_name: agents must join with this plugin.
        wanted: admitted agents round 1 waits for (``min_available_clients``).
        seal_key: the aggregator's raw X25519 public key for this run (identities on), sent
            with every ``join_accepted``.
        current: the round and the model in force, read at each join.
        rejoin_interval: seconds after answering an agent during which its joins are
            duplicates (the device's join loop re-sends after ``trainer.join_retry``).
        incarnation, run_id: said in every ``join_accepted`` (trainers follow a new one).
        on_rejoin: awaited with the agent id after an admitted agent's join is answered
            again (``rejoin.InboxReplay``: what its inbox may have missed).
    """

    def __init__(
        self,
        *,
        outbox: Outbox,
        plugin_name: str,
        wanted: int,
        seal_key: bytes | None,
        current: Callable[[], tuple[int, GlobalState]],
        rejoin_interval: float = 5.0,
        incarnation: str = "",
        run_id: str = "",
        on_rejoin: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._outbox = outbox
        self._on_rejoin = on_rejoin
        self._plugin_name = plugin_name
        self._wanted = wanted
        self._seal_key = seal_key
        self._current = current
        self.incarnation, self.run_id = incarnation, run_id
        #: the admitted agents, by agent id
        self.agents: dict[str, AgentRecord] = {}
        #: agents revoked while this aggregator ran: never admitted again, out of cohorts
        self.revoked: set[str] = set()
        self._enough = asyncio.Event()
        self._closed = False
        self._rejoin_interval = rejoin_interval
        self._answered: dict[str, float] = {}  # agent id -> time.monotonic() of its answer
        self._answering: set[str] = set()  # agents whose answer is going out now
        #: joins not answered because they repeated an answered one, by agent id
        self.duplicates: dict[str, int] = {}
        self._attempts: dict[str, str] = {}  # agent id -> the JoinRequest.attempt answered
        #: agent id -> the envelope timestamp of the newest join answered (its clock)
        self._stamps: dict[str, float] = {}
        #: join_accepted sent, and models sent with them, in this run
        self.answers = self.models_sent = 0

    def close(self) -> None:
        """The run is over: joins from now on belong to the next run's aggregator."""
        self._closed = True

    async def wait(self, *, seconds: float, at_least: int) -> None:
        """Until ``wanted`` agents are admitted, or ``seconds`` passed with ``at_least``.

        Raises:
            RoundError: fewer than ``at_least`` agents joined within ``seconds``.
        """
        log.info("waiting_for_agents", wanted=self._wanted, timeout=seconds)
        try:
            async with asyncio.timeout(seconds):
                await self._enough.wait()
        except TimeoutError:
            if len(self.agents) < at_least:
                raise RoundError(
                    f"only {len(self.agents)} agent(s) joined within {seconds} s; at least "
                    f"{at_least} are needed"
                ) from None
            log.warning(
                "starting_with_fewer_agents", admitted=len(self.agents), wanted=self._wanted
            )

    async def revoke(self, agent_id: str) -> None:
        """``agent_id`` was revoked: out of the admitted set at once, and told so
        (``join_rejected`` with ``RejectCode.REVOKED``: it stops retrying)."""
        self.revoked.add(agent_id)
        self.agents.pop(agent_id, None)
        round_, _ = self._current()
        await self._outbox.try_send(
            topics.INBOX,
            JoinRejected(
                agent_id=agent_id,
                reason="this agent's certificate is revoked",
                code=RejectCode.REVOKED,
            ),
            round=round_,
            agent_id=agent_id,
        )
        log.warning("agent_revoked", agent=agent_id, admitted=len(self.agents))

    def record_round(self, cohort: Iterable[str], dropouts: Iterable[str]) -> None:
        """Remember which cohort members missed the round (they do not evaluate next)."""
        missed = set(dropouts)
        for agent_id in cohort:
            if agent_id in self.agents:
                self.agents[agent_id].missed_last_round = agent_id in missed

    def declared(self, agent_id: str) -> int:
        """The num_examples ``agent_id`` declared when it joined (0: unknown or not admitted)."""
        record = self.agents.get(agent_id)
        return record.num_examples if record is not None else 0

    def evaluators(self) -> frozenset[str]:
        """The admitted agents that answered in their last round."""
        return frozenset(a for a, rec in self.agents.items() if not rec.missed_last_round)

    def _duplicate(self, agent_id: str, *, window: bool = True) -> bool:
        """True (and counted) when an answer to ``agent_id`` is still going out or (with
        ``window``) it was answered less than ``rejoin_interval`` ago."""
        answered = self._answered.get(agent_id)
        if agent_id in self._answering:
            pass  # its answer (join_accepted and the model) is still going out
        elif not window or answered is None or time.monotonic() - answered >= self._rejoin_interval:
            return False
        count = self.duplicates[agent_id] = self.duplicates.get(agent_id, 0) + 1
        if count == 1 or count % 100 == 0:
            log.info("join_ignored", agent=agent_id, reason="duplicate", duplicates=count)
        return True

    async def on_join(self, message: Message[JoinRequest]) -> None:
        """The ``join`` listener: admit, refuse, or (run over) ignore."""
        body = message.body
        if self._closed:
            # Admitting it now would leave it "admitted" by a run that is over: it would not
            # join the next run's aggregator.
            log.info("join_ignored", agent=body.agent_id, reason="run_finished")
            return
        if body.agent_id != message.sender:
            log.warning("join_refused", reason="sender_mismatch", sender=message.sender)
            return
        if body.agent_id in self.revoked:
            await self.revoke(body.agent_id)  # tell it again: it should have stopped
            return
        round_, model = self._current()
        if body.plugin != self._plugin_name:
            reason = f"this federation trains plugin {self._plugin_name!r}, not {body.plugin!r}"
            await self._outbox.try_send(
                topics.INBOX,
                JoinRejected(
                    agent_id=body.agent_id, reason=reason, code=RejectCode.PLUGIN_MISMATCH
                ),
                round=round_,
                agent_id=body.agent_id,
            )
            log.warning("join_refused", agent=body.agent_id, reason="plugin_mismatch")
            return
        known = body.agent_id in self.agents
        # A retry of the join answered last (the same attempt, no reconnect between): that
        # answer, model included, is on its way or held (the broker acknowledged it). A new
        # attempt (the agent reconnected or restarted) is answered at once; only retries
        # wait out the rejoin window.
        attempted = known and bool(body.attempt)
        same = self._attempts.get(body.agent_id) == body.attempt
        fresh, retry = attempted and not same, attempted and same
        # An attempt built before the one answered last is a replay of an earlier one (a NATS
        # bus re-publishes its recent messages after a reconnect, old joins included, while
        # the agent joins afresh): within the window it is a duplicate too.
        stamp = message.envelope.timestamp
        older = stamp < self._stamps.get(body.agent_id, float("-inf"))
        if known and self._duplicate(body.agent_id, window=not fresh or older):
            return
        self._answered[body.agent_id] = time.monotonic()
        self._attempts[body.agent_id] = body.attempt
        self._stamps[body.agent_id] = max(stamp, self._stamps.get(body.agent_id, stamp))
        self.agents[body.agent_id] = AgentRecord(body.num_examples, time.time())
        held = (body.held_version, body.held_sha256) == (model.version, model.sha256)
        self._answering.add(body.agent_id)
        try:
            await self._answer(body, round_, model, with_model=not (retry or held))
        finally:
            self._answering.discard(body.agent_id)
            self._answered[body.agent_id] = time.monotonic()  # the window runs from its end
        log.info(
            "agent_admitted",
            agent=body.agent_id,
            rejoin=known,
            retry=retry,
            model_sent=not (retry or held),
            admitted=len(self.agents),
            answers=self.answers,
            models_sent=self.models_sent,
        )
        if known and not retry and self._on_rejoin is not None:
            await self._on_rejoin(body.agent_id)
        if len(self.agents) >= self._wanted:
            self._enough.set()

    async def _answer(
        self, join: JoinRequest, round_: int, model: GlobalState, *, with_model: bool
    ) -> None:
        """``join_accepted`` naming ``model``, then (``with_model``) the model in force, to
        the joining agent's inbox."""
        agent_id = join.agent_id
        await self._outbox.try_send(
            topics.INBOX,
            JoinAccepted(
                agent_id=agent_id,
                round=round_,
                seal_key=self._seal_key,
                incarnation=self.incarnation,
                run_id=self.run_id,
                attempt=join.attempt,
                version=model.version,
                sha256=model.sha256,
            ),
            round=round_,
            agent_id=agent_id,
        )
        self.answers += 1
        if with_model:
            # The model in force now: a round may have ended while join_accepted went out.
            round_, model = self._current()
            await publish_model(self._outbox, model, round=round_, agent_id=agent_id)
            self.models_sent += 1
