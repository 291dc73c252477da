"""The aggregator's side of differential privacy: one ``PrivacyEngine`` per run.

What each mode does, round by round (``[aggregator.privacy]``, ``PrivacyConfig``):

- **central**: agents clip their model delta to L2 norm C (the clip norm travels in the fit
  config as ``dp_clip_norm``); the aggregator clips again what it sees in the clear, weights
  every survivor equally (num_examples would let one agent scale its influence), and adds
  N(0, (z·C)²) to the sum, i.e. N(0, (z·C/s)²) to the mean of s survivors. With SecAgg+ the
  noise goes on the unmasked aggregate. Adaptive clipping (Andrew et al. 2021) moves C
  after every round from the noisy fraction of unclipped updates.
- **distributed** (SecAgg+ only): the aggregator is not trusted with a noiseless sum. Each
  agent clips, quantizes and adds a discrete Gaussian share of standard deviation
  σ/√s_min (in quantization steps) before masking, so the unmasked sum of s survivors holds
  noise of variance s·σ²/s_min ≥ σ² (Kairouz, Liu and Steinke, ICML 2021).
  **Fewer survivors than planned**: s_min = max(t, ⌈min_survivor_fraction · n⌉) for a
  cohort of n with SecAgg+ threshold t; the agents refuse to reveal any share for an unmask
  request naming fewer than s_min survivors (the round aborts, nothing is released), so the
  sum never carries less than σ². With s ≥ s_min survivors the accountant is charged with
  the noise actually in the sum, multiplier z·√(s/s_min).
  Threat model: the aggregator is honest but curious (Kairouz et al. 2021, §2): agents
  take the announced σ_u, s_min and clip norm as given, so an aggregator that announced
  less noise could weaken the guarantee; it never sees a noiseless sum if it follows the
  protocol it announced.

The L2 sensitivity Δ of one agent (σ = z·Δ) is C for central DP. For distributed DP it adds
the secure metrics' words (at most ``metric_share``·C together) and the quantizer's
rounding (at most one step per word, √D steps for D words, by the triangle inequality):
Δ = √(C² + (metric_share·C)²) + √D·δ. Weights are uniform in both modes (SecAgg+ runs with
``max_weight = 1``), so the reported ``num_examples`` of a DP round is its survivor count.

ε after every round comes from ``agent.privacy.accountant``. With ``target_epsilon`` set,
``noise_multiplier = 0`` is calibrated so that ``rounds`` rounds fit the budget, and a round
whose charge would exceed it does not run (``admits``): the run stops there and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from agent.errors import ConfigError
from agent.privacy import accountant, clipping, noise
from agent.privacy.config import PrivacyConfig, PrivacyMode
from agent.secagg.params import SecAggParams

log = structlog.get_logger(__name__)

#: Standard deviations of total noise kept between the sum and the ring's edges.
_HEADROOM = 7.0


@dataclass(frozen=True, slots=True)
class RingPlan:
    """A SecAgg+ round's DP settings, announced in its ``fit_ins``.

    Attributes:
        params: the SecAgg+ parameters (``max_weight`` 1 under DP; the clipping range
            widened under distributed DP so the noisy sum cannot leave the ring's range).
        metric_scale: the amplitude a of each secure-metric word (0: no secure metrics).
        noise_stddev: each agent's discrete Gaussian standard deviation, in steps (0: none).
        min_survivors: s_min (0: no floor beyond the SecAgg+ threshold).
        sensitivity: Δ, one agent's L2 sensitivity in model units (0 without DP).
    """

    params: SecAggParams
    metric_scale: float
    noise_stddev: float = 0.0
    min_survivors: int = 0
    sensitivity: float = 0.0


@dataclass(frozen=True, slots=True)
class RoundPrivacy:
    """What a released round cost, as recorded in ``metrics.json``: ε of every round so far
    at ``delta``, the noise multiplier charged, the clip norm used, the sampling rate, and
    the clip norm the next round uses (it moves under adaptive clipping)."""

    mode: str
    epsilon: float
    delta: float
    noise_multiplier: float
    clip_norm: float
    sampling_rate: float
    next_clip_norm: float


class PrivacyEngine:
    """Plans and charges the DP of every round of one run.

    Args:
        config: ``[aggregator.privacy]``.
        rounds: the schedule's rounds (the horizon ``noise_multiplier = 0`` calibrates for).
        sampling_rate: the expected q = cohort / admitted (``fraction_fit``).
        expected_cohort: the expected cohort size (σ_b's default: cohort / 20).
        seed: the aggregator's noise source (None: fresh from the OS).

    Raises:
        ConfigError: the budget cannot be met, or a single round would already exceed it.
    """

    def __init__(
        self,
        config: PrivacyConfig,
        *,
        rounds: int,
        sampling_rate: float,
        expected_cohort: int,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.mode = config.mode
        self.clip_norm = config.clip_norm
        self.accountant = accountant.Accountant(config.delta)
        self._rng = np.random.default_rng(seed)
        self.noise_multiplier = 0.0
        self.count_stddev = config.clip_count_stddev or max(1.0, expected_cohort / 20)
        if self.mode is PrivacyMode.OFF:
            return
        z = config.noise_multiplier
        if not z:
            z = accountant.calibrate(
                target_epsilon=config.target_epsilon,
                delta=config.delta,
                rounds=rounds,
                sampling_rate=sampling_rate,
            )
        self.noise_multiplier = z
        target = config.target_epsilon
        if target:
            first = self.accountant.projected(z, sampling_rate)
            if not accountant.within(first, target):
                raise ConfigError(
                    f"privacy: one round at noise multiplier {z:.4g} costs ε = {first:.3f}, "
                    f"more than target_epsilon = {target}; refusing to start"
                )
            total = self.accountant.projected(z, sampling_rate, rounds)
            if not accountant.within(total, target):
                log.warning("privacy_budget_short", epsilon_after_all_rounds=total, target=target)
        if config.adaptive_clipping:
            clipping.delta_noise_multiplier(z, self.count_stddev)  # raises when too small
        log.info(
            "privacy_planned", mode=str(self.mode), noise_multiplier=z, clip_norm=self.clip_norm
        )

    @property
    def on(self) -> bool:
        return self.mode is not PrivacyMode.OFF

    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon

    def fit_config(self) -> dict[str, float]:
        """What every ``fit`` config carries: the clip norm C (nothing without DP)."""
        return {clipping.CLIP_KEY: self.clip_norm} if self.on else {}

    def admits(self, sampling_rate: float) -> tuple[bool, float]:
        """Whether one more round at rate q stays within ``target_epsilon`` (always, without
        a target), and the ε it would leave. Distributed rounds are projected at s_min
        survivors, the least noise the agents allow."""
        if not self.on:
            return True, 0.0
        projected = self.accountant.projected(self.noise_multiplier, sampling_rate)
        target = self.config.target_epsilon
        return (not target or accountant.within(projected, target)), projected

    def ring(self, params: SecAggParams, *, slots: int, length: int) -> RingPlan:
        """The SecAgg+ round's settings for ``slots`` secure metrics and a masked vector of
        ``length`` words (model and metrics; the weight word is not noised).

        Raises:
            ConfigError: no SecAgg+ parameters hold the noise (see ``SecAggParams``).
        """
        if not self.on:
            return RingPlan(params, params.clipping_range if slots else 0.0)
        uniform = replace(params, max_weight=1)
        if self.mode is PrivacyMode.CENTRAL:
            return RingPlan(uniform, uniform.clipping_range if slots else 0.0)
        c_norm, z = self.clip_norm, self.noise_multiplier
        metric_norm = self.config.metric_share * c_norm if slots else 0.0
        scale = metric_norm / math.sqrt(2 * slots) if slots else 0.0
        s_min = max(
            params.threshold, math.ceil(self.config.min_survivor_fraction * params.num_clients)
        )
        base = math.hypot(c_norm, metric_norm)
        rng_range = max(c_norm, scale) + _HEADROOM * z * base * 1.01 / s_min
        widened = replace(uniform, clipping_range=rng_range)
        sensitivity = base + math.sqrt(length) * widened.step
        sigma = z * sensitivity
        return RingPlan(
            widened,
            scale,
            noise_stddev=sigma / widened.step / math.sqrt(s_min),
            min_survivors=s_min,
            sensitivity=sensitivity,
        )

    def clip(self, delta: list[npt.NDArray[np.float64]]) -> list[npt.NDArray[np.float64]]:
        """The aggregator's own clip of an update it sees in the clear (central DP)."""
        return clipping.clip(delta, self.clip_norm)[0] if self.on else delta

    def release(
        self,
        mean: list[npt.NDArray[np.float64]],
        metrics: Mapping[str, float],
        *,
        survivors: int,
        sampling_rate: float,
        plan: RingPlan | None = None,
    ) -> tuple[list[npt.NDArray[np.float64]], dict[str, float], RoundPrivacy | None]:
        """The round's mean delta and metrics as released, and what the round cost.

        Central: Gaussian noise on the mean, the adaptive-clipping count noised and C moved.
        Distributed: the noise is already in (``plan``); charged at z·√(s/s_min).
        """
        out = dict(metrics)
        if not self.on:
            return mean, out, None
        used_clip, z = self.clip_norm, self.noise_multiplier
        if self.mode is PrivacyMode.CENTRAL:
            z_delta = z
            if self.config.adaptive_clipping:
                z_delta = clipping.delta_noise_multiplier(z, self.count_stddev)
                self._adapt(out, survivors)
            stddev = z_delta * used_clip / survivors
            mean = [m + noise.gaussian(m.size, stddev, self._rng).reshape(m.shape) for m in mean]
            charged = z
        else:
            s_min = plan.min_survivors if plan is not None else survivors
            charged = z * math.sqrt(survivors / max(1, s_min))
        epsilon = self.accountant.charge(charged, sampling_rate)
        record = RoundPrivacy(
            str(self.mode),
            epsilon,
            self.config.delta,
            charged,
            used_clip,
            sampling_rate,
            self.clip_norm,
        )
        log.info(
            "privacy_spent", epsilon=epsilon, delta=self.config.delta, noise_multiplier=charged
        )
        return mean, out, record

    def restore(self, rounds: Sequence[Mapping[str, Any]]) -> None:
        """Charge again the rounds a previous process released (each round's recorded
        ``privacy``, in order) and take up its clip norm: a resumed run must not start its
        budget at zero.

        Raises:
            KeyError, TypeError: a record without ``noise_multiplier``/``sampling_rate``.
        """
        for r in rounds:
            self.accountant.charge(float(r["noise_multiplier"]), float(r["sampling_rate"]))
            self.clip_norm = float(r.get("next_clip_norm", r.get("clip_norm", self.clip_norm)))

    def _adapt(self, metrics: dict[str, float], survivors: int) -> None:
        """Andrew et al. 2021: C from the noisy fraction of unclipped updates; the exact
        fraction is replaced by the noisy one in what the round records."""
        below = metrics.get(clipping.BELOW_METRIC)
        if below is None:
            return
        noisy = below + float(self._rng.normal(0.0, self.count_stddev)) / survivors
        metrics[clipping.BELOW_METRIC] = noisy
        self.clip_norm = clipping.next_clip_norm(
            self.clip_norm,
            noisy,
            target_quantile=self.config.target_quantile,
            lr=self.config.clip_lr,
        )
