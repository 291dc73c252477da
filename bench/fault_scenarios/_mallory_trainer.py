"""Mallory's modified trainer (not a scenario module): the ``fedbus run`` trainer with two
changes, its outbox (``MalloryOutbox``: what it sends, tampered by round) and, for the
``in_range`` attack, its plugin's fit (trained weights + 100, then the honest code path).
The attacks are tabled in ``mallory.py``.

    python -m bench.fault_scenarios._mallory_trainer CONFIG.toml ATTACKS
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

import numpy as np
import structlog

from agent.messages.bodies import Body, EvaluateRes, MaskedInput, ModelUpdate
from agent.messages.tensors import to_array, to_arrays, to_tensor, to_tensors
from agent.messages.topics import TopicSpec
from agent.plugin.api import FitResult, Scalar, Weights
from agent.runtime.outbox import Outbox

log = structlog.get_logger("mallory")


class Attack(StrEnum):
    NONE = "none"
    HUGE = "huge"
    NAN = "nan"
    OVERWEIGHT = "overweight"
    SHIFTED = "shifted"
    IN_RANGE = "in_range"  # the plugin's weights + 100, sent through the honest code path


def tamper(body: Body, attack: Attack, round_: int) -> Body:
    """What mallory sends instead of ``body`` in round ``round_``."""
    if isinstance(body, EvaluateRes):
        forged = [
            EvaluateRes(
                model_version=body.model_version,
                loss=0.0,
                num_examples=body.num_examples,
                metrics={"accuracy": 7.0},
            ),
            EvaluateRes(
                model_version=body.model_version,
                loss=0.0,
                num_examples=2**40,
                metrics={"accuracy": 1.0},
            ),
            EvaluateRes(
                model_version=body.model_version,
                loss=float("nan"),
                num_examples=body.num_examples,
                metrics={"accuracy": 1.0},
            ),
        ]
        return forged[round_ % len(forged)]
    if attack in (Attack.NONE, Attack.IN_RANGE):
        return body
    if isinstance(body, ModelUpdate):
        weights = to_arrays(body.tensors)
        n = body.num_examples
        if attack is Attack.HUGE:
            weights, n = [np.full_like(w, 3e38) for w in weights], 1
        elif attack is Attack.NAN:
            weights = [np.full_like(w, np.nan) for w in weights]
        elif attack is Attack.OVERWEIGHT:
            n = 2**53
        else:
            weights = [w + np.asarray(50.0, w.dtype) for w in weights]
        return ModelUpdate(
            model_version=body.model_version,
            num_examples=n,
            tensors=to_tensors(weights),
            metrics=body.metrics,
        )
    if isinstance(body, MaskedInput):
        words = to_array(body.vector).copy()
        if attack in (Attack.HUGE, Attack.NAN):
            info = np.iinfo(words.dtype)
            words[:-1] = np.random.default_rng().integers(
                0, info.max, words.size - 1, dtype=words.dtype, endpoint=True
            )
        elif attack is Attack.OVERWEIGHT:
            words[-1] += np.asarray(2**30, words.dtype)
        else:
            words[:-1] += np.asarray(2**31, words.dtype)
        return MaskedInput(model_version=body.model_version, vector=to_tensor(words))
    return body


class MalloryOutbox(Outbox):
    """The trainer's outbox, tampering as ``attacks`` (round r: attacks[(r - 1) % len]) say."""

    attacks: tuple[Attack, ...] = (Attack.NONE,)

    @classmethod
    def attack_of(cls, round_: int) -> Attack:
        return cls.attacks[(max(round_, 1) - 1) % len(cls.attacks)]

    async def send(
        self,
        spec: TopicSpec,
        body: Body,
        *,
        round: int,
        agent_id: str | None = None,
        peer: str = "+",
    ) -> int:
        # the signature is ``Outbox.send``'s: ``try_send`` passes every keyword it takes
        attack = self.attack_of(round)
        forged = tamper(body, attack, round)
        if forged is not body:
            log.warning("mallory_sent", attack=str(attack), kind=type(body).__name__, round=round)
        return await super().send(spec, forged, round=round, agent_id=agent_id, peer=peer)


def main(argv: list[str]) -> None:
    """Run mallory's trainer: ``CONFIG.toml ATTACKS`` (comma-separated ``Attack`` names)."""
    import agent.roles.trainer.role as trainer_role
    from agent.config import AgentConfig
    from agent.logs import configure_logging
    from agent.node import run_node, run_until_signal
    from agent.plugin.loader import CheckedPlugin

    MalloryOutbox.attacks = tuple(Attack(a) for a in argv[1].split(","))
    trainer_role.Outbox = MalloryOutbox  # type: ignore[misc]  # the modifications
    honest_fit = CheckedPlugin.fit

    def fit(self: CheckedPlugin, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        result = honest_fit(self, weights, config)
        round_ = int(config.get("round", 0))
        if MalloryOutbox.attack_of(round_) is not Attack.IN_RANGE:
            return result
        log.warning("mallory_sent", attack="in_range", kind="FitResult", round=round_)
        lied = [w + np.asarray(100.0, w.dtype) for w in result.weights]
        return FitResult(lied, result.num_examples, result.metrics)

    CheckedPlugin.fit = fit  # type: ignore[method-assign]
    config = AgentConfig.load(Path(argv[0]))
    configure_logging(level="info", fmt="json")
    run_until_signal(run_node(config))


if __name__ == "__main__":
    main(sys.argv[1:])
