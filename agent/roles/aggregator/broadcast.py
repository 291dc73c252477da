"""What the aggregator sends to many: the model in force, and one body to each of a cohort."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import structlog

from agent.ledger.book import RoundLedger
from agent.messages import topics
from agent.messages.bodies import Body, GlobalModel
from agent.roles.aggregator.records import GlobalState
from agent.runtime.outbox import Outbox
from agent.runtime.tasks import task_group

log = structlog.get_logger(__name__)


async def publish_model(
    outbox: Outbox, state: GlobalState, *, round: int, agent_id: str | None = None
) -> None:
    """``model_para`` for ``state``: to everyone (retained on MQTT), or to ``agent_id``'s
    inbox. An unsent model is logged by the outbox, not raised (the agent is a dropout)."""
    body = GlobalModel(
        version=state.version, sha256=state.sha256, tensors=state.tensors, ledger=[*state.ledger]
    )
    spec = topics.GLOBAL_MODEL if agent_id is None else topics.INBOX
    size = await outbox.try_send(spec, body, round=round, agent_id=agent_id)
    if size is not None:
        log.info("model_published", version=state.version, size=size, to=agent_id or "all")


async def send_each(outbox: Outbox, agents: Iterable[str], body: Body, *, round: int) -> None:
    """``body`` to each agent's inbox, concurrently: each QoS 1 publish waits for its broker
    acknowledgement, so one slow publish does not hold up the others."""
    async with task_group() as tg:
        for agent_id in agents:
            tg.create_task(outbox.try_send(topics.INBOX, body, round=round, agent_id=agent_id))


async def recorded(
    ledger: RoundLedger | None,
    state: GlobalState,
    *,
    round: int,
    cohort: Sequence[str] = (),
    survivors: Sequence[str] = (),
) -> GlobalState:
    """``state`` with round ``round``'s record appended to the ledger (and its tail, which
    ``publish_model`` sends along); ``state`` itself when there is no ledger (identities
    off). Dropouts are the cohort members that did not survive.

    Raises:
        OSError: the record cannot be written.
    """
    if ledger is None:
        return state
    tail = await ledger.append(
        round=round,
        cohort=cohort,
        survivors=survivors,
        dropouts=sorted(set(cohort) - set(survivors)),
        model_version=state.version,
        model_sha256=state.sha256,
    )
    return dataclasses.replace(state, ledger=tail)
