"""The privacy accountant: (ε, δ) of the rounds released so far, by Google's ``dp-accounting``.

Each round that released a model is one Gaussian mechanism of noise multiplier z (noise
standard deviation / L2 sensitivity) on the cohort, and the cohort is a sample of the
admitted agents with rate q = cohort / admitted. The round is charged as the Poisson-sampled
Gaussian (Mironov, Talwar and Zhang, "Rényi Differential Privacy of the Sampled Gaussian
Mechanism", 2019) and the rounds compose in Rényi DP (Mironov, "Rényi Differential
Privacy", CSF 2017); ε for the reported δ is the library's RDP-to-(ε, δ) conversion. The
cohort sampler draws a fixed-size sample without replacement, not a Poisson one: charging
it as Poisson with the same rate is the usual approximation (as in TensorFlow Federated
and Opacus), stated here so nobody mistakes it for more. With q = 1 there is no sampling
and the charge is the plain Gaussian mechanism.

The discrete Gaussian of distributed DP is charged as the continuous Gaussian of the same
standard deviation: its Rényi divergence is no larger (Canonne, Kamath and Steinke 2020,
Prop. 11 ff.), and the sum of the survivors' discrete Gaussians differs from one discrete
Gaussian by a term (Kairouz et al. 2021, Thm. 1) below 10^-100 at the shares' standard
deviation of thousands of quantization steps, so it is not charged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when first needed: it loads scipy (~70 MB, seconds), needless
    import dp_accounting  # when DP is off

from agent.errors import ConfigError

#: The Rényi orders searched for the tightest ε: the integers 2…64 and a few above (the
#: library's default grid also has fractional orders below 2; they only tighten ε > 10,
#: and its sampled-Gaussian series converges slowly there).
ORDERS = (*range(2, 65), 80, 96, 128, 192, 256, 512)


def _dp() -> Any:
    """The ``dp_accounting`` package, imported on first use."""
    import dp_accounting
    import dp_accounting.rdp

    return dp_accounting


def round_event(noise_multiplier: float, sampling_rate: float) -> dp_accounting.DpEvent:
    """One round's mechanism: Gaussian(z), Poisson-sampled at q when q < 1."""
    dp_accounting = _dp()
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate >= 1:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)


def epsilon_of(rounds: dict[tuple[float, float], int], delta: float) -> float:
    """ε at ``delta`` of ``rounds``: (noise multiplier, sampling rate) → how many rounds were
    charged at it (0 for none); each distinct mechanism is computed once and self-composed."""
    if not rounds:
        return 0.0
    accountant = _dp().rdp.RdpAccountant(list(ORDERS))
    for (z, q), count in rounds.items():
        accountant.compose(round_event(z, q), count)
    return float(accountant.get_epsilon(delta))


def calibrate(*, target_epsilon: float, delta: float, rounds: int, sampling_rate: float) -> float:
    """The smallest noise multiplier z for which ``rounds`` rounds at rate q cost at most
    ``target_epsilon`` at ``delta`` (``dp_accounting.calibrate_dp_mechanism``).

    Raises:
        ConfigError: no z in [0.01, 10^4] reaches the target.
    """
    dp_accounting = _dp()

    def event(z: float) -> Any:
        return dp_accounting.SelfComposedDpEvent(round_event(z, sampling_rate), rounds)

    try:
        z = dp_accounting.calibrate_dp_mechanism(
            lambda: dp_accounting.rdp.RdpAccountant(list(ORDERS)),
            event,
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(0.01, 1e4),
        )
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"no noise multiplier reaches ε = {target_epsilon}: {exc}") from exc
    return float(z)


@dataclass(slots=True)
class Accountant:
    """The rounds charged so far and their (ε, ``delta``).

    Attributes:
        delta: the δ every ε is reported for.
        rounds: (noise multiplier, sampling rate) → released rounds charged at it (RDP
            composition is commutative, so the order does not matter).
    """

    delta: float
    rounds: dict[tuple[float, float], int] = field(default_factory=dict)
    epsilon: float = 0.0

    def charge(self, noise_multiplier: float, sampling_rate: float) -> float:
        """Add one released round; returns the new ε (also ``epsilon``)."""
        key = (noise_multiplier, min(1.0, sampling_rate))
        self.rounds[key] = self.rounds.get(key, 0) + 1
        self.epsilon = epsilon_of(self.rounds, self.delta)
        return self.epsilon

    def projected(self, noise_multiplier: float, sampling_rate: float, rounds: int = 1) -> float:
        """ε if ``rounds`` more such rounds were charged (nothing is charged)."""
        key = (noise_multiplier, min(1.0, sampling_rate))
        more = {**self.rounds, key: self.rounds.get(key, 0) + rounds}
        return epsilon_of(more, self.delta)


def within(epsilon: float, target: float) -> bool:
    """ε ≤ target, allowing the float noise of the calibration (relative 1e-9)."""
    return epsilon <= target * (1 + 1e-9) or math.isclose(epsilon, target, rel_tol=1e-9)
