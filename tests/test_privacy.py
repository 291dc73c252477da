"""Differential privacy (agent.privacy): the noise has the planned variance, the accountant agrees
with dp-accounting, clipping bounds an update, and a run that would exceed target_epsilon stops
(or does not start) and says so."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import dp_accounting
import msgspec
import numpy as np
import pytest
from dp_accounting import rdp
from structlog.testing import capture_logs

from agent.config import SecAggConfig, SecureAggregation
from agent.demo.options import DemoOptions
from agent.demo.report import write_report
from agent.errors import ConfigError
from agent.messages.bodies import SecAggSetup, UnmaskRequest
from agent.messages.envelope import Message, new_envelope
from agent.messages.kinds import Kind
from agent.privacy import accountant, clipping, local, noise
from agent.privacy.config import PrivacyConfig, PrivacyMode
from agent.privacy.engine import PrivacyEngine
from agent.roles.aggregator.records import RoundRecord
from agent.roles.trainer.secure_fit import SecureFit
from agent.secagg import simulation
from agent.secagg.params import resolve
from tests.helpers import aggregator_config, federate_in_memory, toy, trainer_config

pytestmark = pytest.mark.timeout(60)


def test_discrete_gaussian_has_the_asked_variance() -> None:
    rng = np.random.default_rng(7)
    for sigma in (0.8, 3.0, 250.0):
        x = noise.discrete_gaussian(40_000, sigma, rng)
        assert x.dtype == np.int64
        assert abs(x.mean()) < 4 * sigma / 200
        assert x.var() == pytest.approx(sigma**2, rel=0.04)


def test_distributed_noise_has_the_configured_variance_in_the_unmasked_sum() -> None:
    """Ten agents with zero updates add their discrete Gaussian shares before masking; the
    variance of the unmasked mean is (z·Δ)² · s/s_min / s², as planned (fixed seed)."""
    n, d = 10, 4000
    config = PrivacyConfig(mode=PrivacyMode.DISTRIBUTED, clip_norm=1.0, noise_multiplier=0.7)
    engine = PrivacyEngine(config, rounds=1, sampling_rate=1.0, expected_cohort=n, seed=1)
    plan = engine.ring(resolve(n), slots=0, length=d)
    assert plan.min_survivors == 9  # ⌈0.9 · 10⌉ ≥ t
    setup = simulation.announce(n, d, params=plan.params)
    rng = np.random.default_rng(3)
    shares = {a: local.noise_share(d, plan.noise_stddev, rng) for a in setup.cohort}
    run = simulation.SecAggRound(
        setup,
        {a: np.zeros(d) for a in setup.cohort},
        {a: 1 for a in setup.cohort},
        noise={a: s for a, s in shares.items() if s is not None},
        rngs={a: np.random.default_rng(i) for i, a in enumerate(setup.cohort)},
    )
    aggregate = run.play()
    sigma = config.noise_multiplier * plan.sensitivity
    expected = sigma**2 * n / plan.min_survivors / n**2
    assert aggregate.mean.var() == pytest.approx(expected, rel=0.06)
    assert abs(aggregate.mean.mean()) < 4 * math.sqrt(expected / d)
    # the accountant is charged with the noise actually in the sum: z·√(s/s_min)
    _, _, spent = engine.release([aggregate.mean], {}, survivors=n, sampling_rate=1.0, plan=plan)
    assert spent is not None
    assert spent.noise_multiplier == pytest.approx(0.7 * math.sqrt(10 / 9))


def test_accountant_matches_dp_accounting() -> None:
    """Five central rounds at z = 1.1, q = 0.3: ε equals dp-accounting's RDP accountant
    composing the Poisson-sampled Gaussian five times over the same Rényi orders;
    calibration hits its target."""
    config = PrivacyConfig(mode=PrivacyMode.CENTRAL, noise_multiplier=1.1, delta=1e-5)
    engine = PrivacyEngine(config, rounds=5, sampling_rate=0.3, expected_cohort=3, seed=0)
    zero = [np.zeros(4)]
    for _ in range(5):
        _, _, spent = engine.release(zero, {}, survivors=3, sampling_rate=0.3)
    reference = rdp.RdpAccountant(list(accountant.ORDERS))
    event = dp_accounting.PoissonSampledDpEvent(0.3, dp_accounting.GaussianDpEvent(1.1))
    reference.compose(event, 5)
    assert spent is not None
    assert spent.epsilon == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    # a resumed run charges the recorded rounds again instead of starting at zero
    resumed = PrivacyEngine(config, rounds=5, sampling_rate=0.3, expected_cohort=3)
    resumed.restore([asdict(spent)] * 5)
    assert resumed.epsilon == pytest.approx(spent.epsilon, rel=1e-9)
    z = accountant.calibrate(target_epsilon=2.0, delta=1e-5, rounds=20, sampling_rate=0.1)
    again = rdp.RdpAccountant(list(accountant.ORDERS))
    again.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(z)), 20)
    assert again.get_epsilon(1e-5) == pytest.approx(2.0, rel=1e-3)


def test_clipping_bounds_the_update_and_adaptive_clipping_moves_c() -> None:
    delta = [np.full((3, 2), 2.0), np.full(2, 2.0)]
    clipped, below = clipping.clip(delta, 1.0)
    assert not below
    assert clipping.l2_norm(clipped) == pytest.approx(1.0)
    same, below = clipping.clip(delta, 100.0)
    assert below
    np.testing.assert_array_equal(same[0], delta[0])
    # Andrew et al. 2021: all below the quantile shrinks C by exp(-lr (1 - γ))
    assert clipping.next_clip_norm(1.0, 1.0, target_quantile=0.5, lr=0.2) == pytest.approx(
        math.exp(-0.1)
    )
    assert clipping.delta_noise_multiplier(1.0, 5.0) == pytest.approx((1 - 1 / 100) ** -0.5)


def test_a_budget_one_round_exceeds_refuses_to_start() -> None:
    config = PrivacyConfig(mode=PrivacyMode.CENTRAL, noise_multiplier=0.3, target_epsilon=1.0)
    with pytest.raises(ConfigError, match="refusing to start"):
        PrivacyEngine(config, rounds=5, sampling_rate=1.0, expected_cohort=3)


async def test_a_run_that_would_exceed_target_epsilon_stops_and_says_so(tmp_path: Path) -> None:
    """Central DP at z = 2 with a budget that covers two of four rounds: the schedule runs
    two, records ε after each, stops before the third and says why."""
    two = accountant.Accountant(1e-5)
    two.charge(2.0, 1.0)
    budget = two.projected(2.0, 1.0) * 1.01  # two rounds fit, three do not
    config = aggregator_config("mem://", tmp_path, agents=3, rounds=4)
    privacy = PrivacyConfig(
        mode=PrivacyMode.CENTRAL, noise_multiplier=2.0, target_epsilon=budget, clip_norm=0.5
    )
    config = msgspec.structs.replace(
        config, aggregator=msgspec.structs.replace(config.aggregator, privacy=privacy)
    )
    plugins = {f"a{i}": toy(float(i), 10) for i in range(1, 4)}
    with capture_logs() as logs:
        summary, _ = await federate_in_memory(
            plugins, config, lambda a: trainer_config(a, "mem://", tmp_path)
        )
    assert summary.stopped == "privacy_budget"
    assert [r.round for r in summary.rounds] == [1, 2]
    epsilons = [r.epsilon for r in summary.rounds]
    assert epsilons[0] is not None
    assert epsilons[1] is not None
    assert epsilons[0] < epsilons[1] <= budget
    assert all(r.num_examples == 3 for r in summary.rounds)  # uniform weights under DP
    (reached,) = [e for e in logs if e["event"] == "privacy_budget_reached"]
    assert reached["round"] == 3
    assert "stopping before round 3" in reached["detail"]
    (finished,) = [e for e in logs if e["event"] == "federation_finished" and "stopped" in e]
    assert finished["stopped"] == "privacy_budget"


async def test_distributed_dp_runs_through_secagg_and_records_epsilon(tmp_path: Path) -> None:
    """Five agents under SecAgg+ with distributed DP: every round is charged (ε grows), the
    weights are uniform, and the secure train_loss is still recorded (noisy)."""
    config = aggregator_config("mem://", tmp_path, agents=5, rounds=2, round_timeout=5.0)
    schedule = msgspec.structs.replace(
        config.aggregator,
        min_fit_clients=3,
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=2.0),
        privacy=PrivacyConfig(mode=PrivacyMode.DISTRIBUTED, noise_multiplier=0.5, clip_norm=10.0),
    )
    config = msgspec.structs.replace(config, aggregator=schedule)
    plugins = {f"a{i}": toy(1.0, 10) for i in range(5)}
    summary, _ = await federate_in_memory(
        plugins, config, lambda a: trainer_config(a, "mem://", tmp_path)
    )
    first, second = summary.rounds
    assert first.privacy is not None
    assert first.privacy["mode"] == "distributed"
    assert 0 < (first.epsilon or 0) < (second.epsilon or 0)
    assert first.num_examples == 5
    # the secure metrics carry the same noise: an estimate within the documented range
    assert 0.0 <= first.metrics["train_loss"] <= 20.0


class _Outbox:
    def __init__(self) -> None:
        self.sent: list[object] = []

    async def try_send(self, spec: object, body: object, **kw: object) -> int:
        self.sent.append(body)
        return 1


async def test_agents_reveal_nothing_for_fewer_survivors_than_the_noise_was_sized_for() -> None:
    """Distributed DP: an unmask request naming fewer survivors than ``min_survivors`` gets
    no shares (the sum would carry less noise than planned), so the round aborts."""
    cohort = [f"a{i}" for i in range(5)]
    params = resolve(5)
    body = SecAggSetup(
        cohort=cohort,
        num_neighbours=params.num_neighbours,
        threshold=params.threshold,
        clipping_range=params.clipping_range,
        quantization_bits=params.quantization_bits,
        ring_bits=params.ring_bits,
        max_weight=1,
        graph_seed=bytes(32),
        length=4,
        stage_timeout=1.0,
        noise_stddev=10.0,
        min_survivors=5,
    )
    outbox = _Outbox()
    secure = SecureFit.announced(
        body,
        federation="f",
        round_=1,
        outbox=outbox,
        agent_id="a0",  # type: ignore[arg-type]
    )
    request = UnmaskRequest(survivors=cohort[:4], dropped=[cohort[4]])
    envelope = new_envelope(
        kind=Kind.UNMASK_REQUEST, federation="f", round=1, sender="aggregator", body=b""
    )
    message = Message(envelope, request, "fl/f/agent/a0")
    with capture_logs() as logs:
        await secure.handle(message)
    assert outbox.sent == []
    (refused,) = [e for e in logs if e["event"] == "secagg_refused"]
    assert refused["reason"] == "dp_too_few_survivors"


def test_the_report_shows_epsilon_per_round(tmp_path: Path) -> None:
    """With DP on, metrics.json and metrics.csv carry ε per round and why the run stopped;
    the plot is written (accuracy against centralized, ε below)."""
    records = [
        RoundRecord(
            r,
            ["a"],
            ["a"],
            [],
            1,
            math.nan,
            0.5 + r / 10,
            1.0,
            10,
            0.1,
            r,
            "0" * 64,
            privacy={
                "mode": "central",
                "epsilon": r / 2,
                "delta": 1e-5,
                "noise_multiplier": 1.0,
                "clip_norm": 1.0,
                "sampling_rate": 1.0,
            },
        )
        for r in (1, 2)
    ]
    files = write_report(
        tmp_path,
        records=records,
        final_accuracy=0.7,
        centralized_accuracy=0.9,
        settings={"strategy": "fedadam", "dp": "central", "epsilon": 1.0},
        wall_seconds=1.0,
        stopped="privacy_budget",
    )
    report = json.loads(files[0].read_text())
    assert report["stopped"] == "privacy_budget"
    assert [r["privacy"]["epsilon"] for r in report["rounds"]] == [0.5, 1.0]
    assert report["rounds"][0]["train_loss"] is None
    assert files[1].read_text().splitlines()[0].endswith(",epsilon")
    assert files[2].read_bytes().startswith(b"\x89PNG")


def test_demo_flags_configure_privacy(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fedbus demo --dp distributed --epsilon 4`` reaches the aggregator's config; the
    defaults parse (no DP); --dp without a budget is refused."""
    from click.testing import CliRunner

    import agent.demo.runner
    from agent.cli.demo import demo
    from agent.demo.configs import aggregator_config as demo_aggregator

    seen: list[DemoOptions] = []

    def run_demo(options: DemoOptions) -> object:
        seen.append(options)
        return object()  # not None: the run was not interrupted

    monkeypatch.setattr(agent.demo.runner, "run_demo", run_demo)
    runner = CliRunner()
    assert runner.invoke(demo, []).exit_code == 0
    assert seen[-1].dp == "off"
    result = runner.invoke(demo, ["--dp", "distributed", "--epsilon", "4", "--clip-norm", "2"])
    assert result.exit_code == 0, result.output
    privacy = demo_aggregator(seen[-1], "mem://", None).aggregator.privacy
    assert (privacy.mode, privacy.target_epsilon, privacy.clip_norm) == (
        PrivacyMode.DISTRIBUTED,
        4.0,
        2.0,
    )
    refused = runner.invoke(demo, ["--dp", "central"])
    assert refused.exit_code != 0
    assert "--epsilon" in refused.output
