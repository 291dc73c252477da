"""One federated run driven in process with the real trainer and aggregator math (bench only).

Each round does what ``fedbus`` does over the bus, function for function: the fit config
the aggregator sends (``fit_config`` + the strategy's + the privacy engine's clip norm), the
digits plugin's ``fit`` through the plugin loader, the trainer's DP clip
(``agent.privacy.local.clip_result``), then either the plain path (``plain_update``) or a
SecAgg+ round through ``agent.secagg.simulation`` (real keys, shares, masks) on the vector
the trainer masks (``secure_vector`` + its distributed-DP ``noise_share``), decoded by
``secure_update``; the privacy engine's ``release`` (central noise, the accountant); the
strategy's ``step``; and the num_examples-weighted evaluation on every agent's test slice.
Only the bus, the processes and the identities are left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.config import AggregatorConfig, SecAggConfig, SecureAggregation, StrategyConfig
from agent.plugin.api import PluginContext, Weights
from agent.plugin.loader import CheckedPlugin, load_plugin
from agent.privacy import local
from agent.privacy.config import PrivacyConfig
from agent.roles.aggregator.private_update import (
    plain_update,
    privacy_engine,
    release,
    secure_setup,
    secure_update,
)
from agent.secagg import simulation
from agent.secagg.keys import RoundContext
from agent.secagg.state import Setup
from agent.secagg.vector import flatten
from agent.strategy.factory import build_strategy
from agent.strategy.update import AggregatedUpdate, ClientResult, model_delta, weighted_mean


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run: the federation, the strategy, SecAgg+ on or off, and the DP settings."""

    agents: int = 10
    rounds: int = 20
    partition: str = "dirichlet"
    alpha: float = 0.5
    strategy: str = "fedavg"
    secure: bool = True
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    seed: int = 0

    def schedule(self) -> AggregatorConfig:
        return AggregatorConfig(
            rounds=self.rounds,
            min_fit_clients=min(3, self.agents),
            min_available_clients=self.agents,
            secure_aggregation=(
                SecureAggregation.SECAGG_PLUS if self.secure else SecureAggregation.NONE
            ),
            strategy=StrategyConfig(name=self.strategy),  # type: ignore[arg-type]
            privacy=self.privacy,
            seed=self.seed,
        )


def plugins(spec: RunSpec) -> list[CheckedPlugin]:
    """The digits agents of ``spec`` (the options the demo gives its agents)."""
    return [
        load_plugin(
            "digits-mlp",
            PluginContext(
                f"agent-{i:03d}",
                {
                    "agent_index": i,
                    "num_agents": spec.agents,
                    "partition": spec.partition,
                    "alpha": spec.alpha,
                    "seed": spec.seed,
                },
            ),
        )
        for i in range(spec.agents)
    ]


def evaluate(agents: list[CheckedPlugin], weights: Weights) -> float:
    """Federated accuracy: every agent's ``accuracy`` weighted by its test examples."""
    results = [p.evaluate(weights, {}) for p in agents]
    return weighted_mean(
        [(float(r.metrics["accuracy"]), r.num_examples) for r in results if r.num_examples]
    )


def run(spec: RunSpec) -> dict[str, Any]:
    """Run ``spec``; the accuracy and ε after every round, and the final ones."""
    schedule = spec.schedule()
    agents = plugins(spec)
    ids = [f"agent-{i:03d}" for i in range(spec.agents)]
    weights = agents[0].get_weights()
    strategy = build_strategy(schedule.strategy)
    engine = privacy_engine(schedule, seed=spec.seed)
    rng = np.random.default_rng(spec.seed)
    history: list[dict[str, Any]] = []
    for r in range(1, spec.rounds + 1):
        allowed, _ = engine.admits(1.0)
        if not allowed:
            break
        config = {
            **schedule.fit_config,
            **schedule.strategy.fit_config(),
            **engine.fit_config(),
            "round": r,
        }
        fits = {
            a: local.clip_result(p.fit(weights, config), weights, config)
            for a, p in zip(ids, agents, strict=True)
        }
        if spec.secure:
            update, plan = _secure(engine, schedule.secagg, weights, fits, config, r, rng)
        else:
            results = [
                ClientResult(a, f.weights, max(1, f.num_examples), f.metrics)
                for a, f in fits.items()
            ]
            update, plan = plain_update(engine, weights, results), None
        update, spent = release(
            engine, update, cohort_size=len(ids), population=len(ids), plan=plan
        )
        weights = strategy.step(weights, update)
        accuracy = evaluate(agents, weights)
        history.append(
            {
                "round": r,
                "accuracy": accuracy,
                "train_loss": update.metrics.get("train_loss"),
                "epsilon": None if spent is None else spent.epsilon,
            }
        )
    final = history[-1] if history else {}
    return {
        "final_accuracy": final.get("accuracy"),
        "epsilon": final.get("epsilon"),
        "noise_multiplier": engine.noise_multiplier or None,
        "rounds_run": len(history),
        "history": history,
    }


def _secure(
    engine: Any,
    settings: SecAggConfig,
    weights: Weights,
    fits: dict[str, Any],
    config: dict[str, Any],
    r: int,
    rng: np.random.Generator,
) -> tuple[AggregatedUpdate, Any]:
    """One SecAgg+ round through the simulation: the trainers' vectors and noise shares,
    the real client and server stage functions, the aggregator's decoding."""
    cohort = tuple(sorted(fits))
    layout = secure_setup(engine, settings, len(cohort), weights)
    setup = Setup(
        RoundContext("bench", r), layout.plan.params, cohort, os.urandom(32), layout.length
    )
    clip_norm = local.clip_norm_of(config)
    updates, noise = {}, {}
    for a, f in fits.items():
        updates[a] = local.secure_vector(
            flatten(model_delta(f.weights, weights)),
            f.metrics,
            clip_norm=clip_norm,
            slots=layout.slots,
            metric_scale=layout.plan.metric_scale,
        )
        share = local.noise_share(layout.length, layout.plan.noise_stddev, rng)
        if share is not None:
            noise[a] = share
    aggregate = simulation.SecAggRound(
        setup,
        updates,
        {a: max(1, f.num_examples) for a, f in fits.items()},
        noise=noise,
        rngs={a: np.random.default_rng([r, i]) for i, a in enumerate(cohort)},
    ).play()
    return secure_update(aggregate, weights, layout), layout.plan
