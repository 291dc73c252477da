"""The trainer's side of asynchronous SecAgg+ (FedBuff, Nguyen et al., AISTATS 2022, with
each buffer aggregated by a SecAgg+ round, ARCHITECTURE.md §4 "async").

A ``fit_ins`` with ``hold`` set: train as usual, then keep the result (``HeldUpdate.keep``)
and announce ``update_ready`` (the base version and num_examples, nothing of the update). A
later ``fit_ins`` with ``secagg`` opens the secure round of the buffer this agent filled:
``take`` gives the held result weighed by this agent's own staleness weight s(τ), τ = the
round's model version - the base version, s from the fit config (``agent.async_settings``),
as the trained weights of a model named like the round's, so the one masking path
(``SecureFit.masked_input``) masks s(τ)·(w - x_base) against the round's model version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import structlog

from agent.async_settings import from_fit_config
from agent.messages import topics
from agent.messages.bodies import FitIns, UpdateReady
from agent.plugin.api import FitResult, is_averaged
from agent.roles.trainer.model import HeldModel
from agent.runtime.outbox import Outbox

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Held:
    """A trained result kept for its buffer's secure round: the model it trained from."""

    base: HeldModel
    result: FitResult


class HeldUpdate:
    """At most one held update (a newer ``hold`` fit replaces it)."""

    def __init__(self, *, outbox: Outbox, agent_id: str) -> None:
        self._outbox = outbox
        self._id = agent_id
        self.held: Held | None = None

    async def keep(self, round_: int, base: HeldModel, result: FitResult) -> None:
        """Hold ``result`` (trained from ``base``) and send ``update_ready``."""
        self.held = Held(base, result)
        ready = UpdateReady(base_version=base.version, num_examples=max(1, result.num_examples))
        await self._outbox.try_send(topics.UPDATE, ready, round=round_, agent_id=self._id)
        log.info("update_ready", base_version=base.version, num_examples=ready.num_examples)

    def take(self, ins: FitIns) -> tuple[HeldModel, FitResult] | None:
        """For the secure ``fit_ins`` of our buffer's round: the held update as (base,
        result) where base is named like ``ins``'s model and result's float arrays are
        x_base + s(τ)·(w - x_base), float64 (so the masked delta is s(τ)·(w - x_base));
        the integer arrays are the trained ones (sent beside the masked input, unweighted:
        ``agent.roles.trainer.carried``). None (nothing held, or a config naming no
        staleness function: logged) and the update is given up either way."""
        held, self.held = self.held, None
        if held is None:
            return None
        tau = ins.model_version - held.base.version
        try:
            s = from_fit_config(ins.config, tau)
        except ValueError as exc:
            log.warning("fit_refused", reason="staleness", error=str(exc))
            return None
        weights = [
            np.asarray(b, np.float64) + s * (np.asarray(w, np.float64) - np.asarray(b, np.float64))
            if is_averaged(b)
            else w
            for w, b in zip(held.result.weights, held.base.weights, strict=True)
        ]
        base = HeldModel(ins.model_version, ins.model_sha256, held.base.weights)
        log.info("held_update_weighed", staleness=tau, weight=round(s, 6))
        result = FitResult(weights, held.result.num_examples, dict(held.result.metrics))
        return base, result
