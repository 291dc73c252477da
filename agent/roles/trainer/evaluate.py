"""The trainer's evaluation: ``evaluate`` → the plugin's evaluate → ``metrics``."""

from __future__ import annotations

import asyncio

import structlog

from agent.errors import FedbusError
from agent.messages import topics
from agent.messages.bodies import EvaluateIns, EvaluateRes
from agent.plugin.loader import CheckedPlugin
from agent.roles.trainer.model import ModelStore
from agent.runtime.outbox import Outbox

log = structlog.get_logger(__name__)


async def evaluate(
    round_: int,
    ins: EvaluateIns,
    *,
    plugin: CheckedPlugin,
    models: ModelStore,
    outbox: Outbox,
    agent_id: str,
) -> None:
    """Evaluate the model ``ins`` names (waiting for it) and send the result for ``round_``.

    The plugin runs in a worker thread; a plugin error is logged (``evaluate_failed``) and
    nothing is sent: the round goes on without us.
    """
    with structlog.contextvars.bound_contextvars(round=round_):
        model = await models.wait_for(ins.model_version, ins.model_sha256)
        if model is None:
            return
        try:
            result = await asyncio.to_thread(plugin.evaluate, model.weights, ins.config)
        except FedbusError as exc:
            log.exception("evaluate_failed", error=str(exc))
            return
        res = EvaluateRes(
            model_version=model.version,
            loss=result.loss,
            num_examples=result.num_examples,
            metrics=result.metrics,
        )
        if await outbox.try_send(topics.METRICS, res, round=round_, agent_id=agent_id) is None:
            return
        log.info("metrics_sent", loss=round(result.loss, 5), num_examples=result.num_examples)
