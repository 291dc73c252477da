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
in_range       trained weights + 100 (the norm      trained weights + 100, then clipped,
               bound refuses it)                   quantized, masked: an in-range lie
none           honest                              honest
=============  ==================================  ======================================

and every evaluation result it sends is forged (accuracy 7, or 1.0 over 2^40 examples, or a
NaN loss). Each scenario runs the same federation with and without mallory on a real broker,
mallory and the honest trainers as separate processes, and reports the final accuracies,
every refusal and abort with its reason: ``ok`` when the accuracies are within 2 points, every
attack was refused or aborted with a reason, and no forged metric reached metrics.json.

Mallory's trainer is ``_mallory_trainer.py``. The ``in_range`` scenarios show what SecAgg+
cannot see: without ``max_update_norm`` the lie passes every check and costs the model; with
it, every trainer's delta (mallory's included, the honest code clips it) is norm-bounded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import structlog

from agent.brokers import EmbeddedBroker
from agent.config import AggregatorConfig, SecAggConfig, SecureAggregation
from agent.robust.settings import RobustConfig
from bench.fault_scenarios._federation import Run, federate, start_module, trainer_config

log = structlog.get_logger("mallory")

#: Accuracy may differ by at most this much from the run without mallory.
TOLERANCE = 0.02


def schedule(
    *, secure: bool, rounds: int, cohort: int, robust: RobustConfig | None = None
) -> AggregatorConfig:
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
        robust=robust or RobustConfig(),
        seed=1,
    )


async def compare(
    kind: str,
    *,
    secure: bool,
    honest: int,
    rounds: int,
    attacks: str,
    where: Path,
    robust: RobustConfig | None = None,
    limitation: bool = False,
) -> dict[str, Any]:
    """The same federation without and with mallory, each on a fresh ``kind`` broker (no
    retained model of one run reaches the other), both under ``robust``. ``limitation``: the
    attack is one the documentation says passes (``verdict``)."""
    with EmbeddedBroker(kind) as broker:  # type: ignore[arg-type]
        clean = await federate(
            broker.url,
            where / "clean",
            schedule=schedule(secure=secure, rounds=rounds, cohort=honest, robust=robust),
            honest=honest,
            secure=secure,
        )
    with EmbeddedBroker(kind) as broker:  # type: ignore[arg-type]
        path = trainer_config("mallory", 0, honest, broker.url, where / "attacked", secure=secure)
        log_path = where / "attacked" / "logs" / "mallory.log"
        mallory = start_module(
            "mallory", "bench.fault_scenarios._mallory_trainer", [str(path), attacks], log_path
        )
        attacked = await federate(
            broker.url,
            where / "attacked",
            schedule=schedule(secure=secure, rounds=rounds, cohort=honest + 1, robust=robust),
            honest=honest,
            extra=[mallory],
            secure=secure,
        )
    line = verdict(clean, attacked, where / "attacked", secure=secure, limitation=limitation)
    return {"attacks": attacks, **line}


def verdict(
    clean: Run, attacked: Run, where: Path, *, secure: bool, limitation: bool = False
) -> dict[str, Any]:
    """The scenario's line: accuracies, refusals and aborts with reasons, and ``ok``: every
    attack refused or aborted with a reason, no forged metric stored, the final accuracy
    within ``TOLERANCE`` of the run without mallory. With ``limitation`` (an in-range lie
    under SecAgg+), ``ok`` means it behaved as documented: no round aborted for it, and the
    accuracies say what it cost."""
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
    # a forged result that arrived after its round moved on is dropped before any handler
    metrics_dropped = [
        e["reason"]
        for e in attacked.where("message_dropped")
        if str(e.get("topic", "")).endswith("/metrics/mallory")
    ]
    sent = _mallory_sent(where / "logs" / "mallory.log")
    stored = json.loads((where / "aggregator" / "metrics.json").read_text())
    accuracies = [r.get("accuracy") for r in stored]
    stored_ok = all(a is None or 0.0 <= a <= 1.0 for a in accuracies)
    a, b = clean.final_accuracy, attacked.final_accuracy
    silent = ("fake_metric", "none", "in_range") if secure else ("fake_metric", "none")
    attacked_rounds = {r for r, attack in sent if attack not in silent}
    forged_rounds = {r for r, attack in sent if attack == "fake_metric"}
    answered = {r for r, _ in refused} | {r for r, _ in aborted}
    close = a is not None and b is not None and abs(a - b) <= TOLERANCE
    kept_out = forged_rounds <= {r for r, _ in metrics} or len(forged_rounds) <= len(metrics) + len(
        metrics_dropped
    )
    checked = stored_ok and attacked_rounds <= answered and kept_out
    ok = checked and (not aborted if limitation else close)
    return {
        "secure": secure,
        "accuracy_without_mallory": a,
        "accuracy_with_mallory": b,
        "mallory_sent": sent,
        "updates_refused": refused,
        "rounds_aborted": aborted,
        "metrics_refused": metrics,
        "metrics_dropped": metrics_dropped,
        "stored_accuracies_in_range": stored_ok,
        "limitation": limitation,
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


def _scenario(kind: str, *, secure: bool, attacks: str, rounds: int, **kw: Any) -> Any:
    async def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            return await compare(
                kind, secure=secure, honest=5, rounds=rounds, attacks=attacks, where=Path(tmp), **kw
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
    # An in-range lie under SecAgg+: what the sum checks cannot see (documented), ...
    "secagg_in_range_unbounded_mqtt": _scenario(
        "mqtt", secure=True, attacks="in_range", rounds=10, limitation=True
    ),
    # ... and the same lie with an L2 bound every trainer clips to: bounded influence.
    "secagg_in_range_bounded_mqtt": _scenario(
        "mqtt", secure=True, attacks="in_range", rounds=10, robust=RobustConfig(max_update_norm=5.0)
    ),
}
