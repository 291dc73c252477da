"""What the aggregator sends to many: the model in force, and one body to each of a cohort."""

from __future__ import annotations

from collections.abc import Iterable

import structlog

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
    body = GlobalModel(version=state.version, sha256=state.sha256, tensors=state.tensors)
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
