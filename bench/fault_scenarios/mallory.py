"""Mallory: one enrolled device running a modified trainer, in plain and SecAgg+ rounds.

Mallory trains like any agent (the digits plugin, a real shard), then tampers with what it
sends (``MalloryOutbox``), by round, cycling through ``--attacks``:

=============  ==================================  ======================================
attack         plain round (model_update)          SecAgg+ round (masked_input)
=============  ==================================  ======================================
huge           every weight 3e38, 1 example        every word random (any ring value)
nan            every weight NaN                    every word random
overweight     num_examples = 2^53                 weight word + 2^30
shifted        every weight + 50                   every word + 2^31 after masking
none           honest                              honest
=============  ==================================  ======================================

and every evaluation result it sends is forged (accuracy 7, or 1.0 over 2^40 examples, or a
NaN loss). Each scenario runs the same federation with and without mallory on a real broker,
mallory and the honest trainers as separate processes, and reports the final accuracies,
every refusal and abort with its reason: ``ok`` when the accuracies are within 2 points, every
attack was refused or aborted with a reason, and no forged metric reached metrics.json.

    python -m bench.fault_scenarios.mallory CONFIG.toml ATTACKS   # run mallory's trainer
"""

from __future__ import annotations

import json
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from agent.brokers import EmbeddedBroker
from agent.config import AggregatorConfig, SecAggConfig, SecureAggregation
from agent.messages.bodies import Body, EvaluateRes, MaskedInput, ModelUpdate
from agent.messages.tensors import to_array, to_arrays, to_tensor, to_tensors
from agent.messages.topics import TopicSpec
from agent.runtime.outbox import Outbox
from bench.fault_scenarios._federation import Run, federate, start_module, trainer_config

log = structlog.get_logger("mallory")

#: Accuracy may differ by at most this much from the run without mallory.
TOLERANCE = 0.02


class Attack(StrEnum):
    NONE = "none"
    HUGE = "huge"
    NAN = "nan"
    OVERWEIGHT = "overweight"
    SHIFTED = "shifted"


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
    if attack is Attack.NONE:
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

    async def send(
        self, spec: TopicSpec, body: Body, *, round: int, agent_id: str | None = None
    ) -> int:
        attack = self.attacks[(max(round, 1) - 1) % len(self.attacks)]
        forged = tamper(body, attack, round)
        if forged is not body:
            log.warning("mallory_sent", attack=str(attack), kind=type(body).__name__, round=round)
        return await super().send(spec, forged, round=round, agent_id=agent_id)


def main(argv: list[str]) -> None:
    """Run mallory's trainer: ``CONFIG.toml ATTACKS`` (comma-separated ``Attack`` names)."""
    import agent.roles.trainer.role as trainer_role
    from agent.config import AgentConfig
    from agent.logs import configure_logging
    from agent.node import run_node, run_until_signal

    MalloryOutbox.attacks = tuple(Attack(a) for a in argv[1].split(","))
    trainer_role.Outbox = MalloryOutbox  # type: ignore[misc]  # the one modification
    config = AgentConfig.load(Path(argv[0]))
    configure_logging(level="info", fmt="json")
    run_until_signal(run_node(config))


def schedule(*, secure: bool, rounds: int, cohort: int) -> AggregatorConfig:
    return AggregatorConfig(
        rounds=rounds,
        min_fit_clients=cohort,
        min_available_clients=cohort,
        join_timeout=60.0,
        round_timeout=20.0,
        eval_timeout=5.0,
        fit_config={"epochs": 5},
        secure_aggregation=SecureAggregation.SECAGG_PLUS if secure else SecureAggregation.NONE,
        secagg=SecAggConfig(stage_timeout=10.0),
        seed=1,
    )


async def compare(
    kind: str, *, secure: bool, honest: int, rounds: int, attacks: str, where: Path
) -> dict[str, Any]:
    """The same federation without and with mallory, each on a fresh ``kind`` broker (no
    retained model of one run reaches the other)."""
    with EmbeddedBroker(kind) as broker:  # type: ignore[arg-type]
        clean = await federate(
            broker.url,
            where / "clean",
            schedule=schedule(secure=secure, rounds=rounds, cohort=honest),
            honest=honest,
            secure=secure,
        )
    with EmbeddedBroker(kind) as broker:  # type: ignore[arg-type]
        path = trainer_config("mallory", 0, honest, broker.url, where / "attacked", secure=secure)
        log_path = where / "attacked" / "logs" / "mallory.log"
        mallory = start_module(
            "mallory", "bench.fault_scenarios.mallory", [str(path), attacks], log_path
        )
        attacked = await federate(
            broker.url,
            where / "attacked",
            schedule=schedule(secure=secure, rounds=rounds, cohort=honest + 1),
            honest=honest,
            extra=[mallory],
            secure=secure,
        )
    return verdict(clean, attacked, where / "attacked", secure=secure, attacks=attacks)


def verdict(
    clean: Run, attacked: Run, where: Path, *, secure: bool, attacks: str
) -> dict[str, Any]:
    """The scenario's line: accuracies, refusals and aborts with reasons, and ``ok``."""
    refused = [
        (e.get("round"), e["reason"])
        for e in attacked.where("update_rejected")
        if e.get("agent") == "mallory"
    ]
    metrics = [
        (e.get("round"), e["reason"])
        for e in attacked.where("metrics_rejected")
        if e.get("agent") == "mallory"
    ]
    aborted = [(e.get("round"), e["reason"]) for e in attacked.where("secagg_aborted")]
    sent = _mallory_sent(where / "logs" / "mallory.log")
    stored = json.loads((where / "aggregator" / "metrics.json").read_text())
    accuracies = [r.get("accuracy") for r in stored]
    in_range = all(a is None or 0.0 <= a <= 1.0 for a in accuracies)
    a, b = clean.final_accuracy, attacked.final_accuracy
    attacked_rounds = {r for r, attack in sent if attack not in ("fake_metric", "none")}
    forged_rounds = {r for r, attack in sent if attack == "fake_metric"}
    answered = {r for r, _ in refused} | {r for r, _ in aborted}
    close = a is not None and b is not None and abs(a - b) <= TOLERANCE
    ok = (
        close
        and in_range
        and attacked_rounds <= answered
        and forged_rounds <= {r for r, _ in metrics}
    )
    return {
        "secure": secure,
        "attacks": attacks,
        "accuracy_without_mallory": a,
        "accuracy_with_mallory": b,
        "mallory_sent": sent,
        "updates_refused": refused,
        "rounds_aborted": aborted,
        "metrics_refused": metrics,
        "stored_accuracies_in_range": in_range,
        "ok": ok,
    }


def _mallory_sent(log_path: Path) -> list[tuple[int, str]]:
    out = []
    for line in log_path.read_text().splitlines():
        if '"mallory_sent"' in line:
            e = json.loads(line)
            attack = "fake_metric" if e["kind"] == "EvaluateRes" else e["attack"]
            out.append((e["round"], attack))
    return out


def _scenario(kind: str, *, secure: bool, attacks: str, rounds: int, honest: int = 5) -> Any:
    async def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            return await compare(
                kind, secure=secure, honest=honest, rounds=rounds, attacks=attacks, where=Path(tmp)
            )

    return run


SCENARIOS = {
    "plain_mqtt": _scenario(
        "mqtt", secure=False, attacks="huge,nan,overweight,shifted,none", rounds=10
    ),
    "plain_nats": _scenario(
        "nats", secure=False, attacks="huge,nan,overweight,shifted,none", rounds=10
    ),
    "secagg_mqtt": _scenario(
        "mqtt",
        secure=True,
        attacks="shifted,huge,overweight,nan,none,none,none,none,none,none",
        rounds=10,
    ),
    "secagg_nats": _scenario(
        "nats",
        secure=True,
        attacks="shifted,huge,overweight,nan,none,none,none,none,none,none",
        rounds=10,
    ),
}

if __name__ == "__main__":
    main(sys.argv[1:])
