"""A peer's model sketch and the distance from the mean (``fedbus status`` in P2P mode).

Each peer puts ``s_i = R x_i`` in its status, where x_i is its model's floating-point values
flattened in the plugin's order (float64) and R a ``SKETCH_SIZE`` x D matrix of independent
N(0, 1/m) entries drawn from ``SKETCH_SEED`` (the same R on every peer; it is generated in
blocks so that it is never held whole). R is linear, so the sketch of the mean model is the
mean of the sketches, and by Johnson-Lindenstrauss (Dasgupta & Gupta, "An elementary proof
of a theorem of Johnson and Lindenstrauss", 2003) ‖s_i - s̄‖₂ is within a factor (1 ± ε) of
‖x_i - x̄‖₂ with high probability for m = O(ε⁻² log n). The *distance from the mean*
shown by ``fedbus status`` is ‖s_i - s̄‖₂ with s̄ the mean sketch of the peers that reported
one (their retained status, online or not). With m = 16 one standard deviation of the
estimate is about 1/√(2m) ≈ 18 %: a consensus gauge, not an exact norm. A sketch reveals m
random linear projections of the model, less than the model the neighbours receive anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from agent.plugin.api import Weights, is_averaged

#: m, the sketch's length.
SKETCH_SIZE = 16
#: The seed of R, fixed so every peer and every ``fedbus status`` agree.
SKETCH_SEED = 0x5EED
_BLOCK = 65_536


def sketch(weights: Weights, *, size: int = SKETCH_SIZE) -> list[float]:
    """s = R x for the floating-point values of ``weights`` (``size`` floats)."""
    flat = np.concatenate(
        [np.ravel(a).astype(np.float64) for a in weights if is_averaged(a)] or [np.zeros(0)]
    )
    rng = np.random.default_rng(SKETCH_SEED)
    out = np.zeros(size)
    for start in range(0, flat.size, _BLOCK):
        block = flat[start : start + _BLOCK]
        out += rng.standard_normal((size, block.size)) @ block
    return [float(v) for v in out / np.sqrt(size)]


def distances(sketches: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """agent id → ‖s_i - s̄‖₂, s̄ the mean of ``sketches`` (those of one length only: the
    most common; the others are left out)."""
    if not sketches:
        return {}
    lengths = [len(s) for s in sketches.values()]
    size = max(set(lengths), key=lengths.count)
    kept = {a: np.asarray(s, dtype=np.float64) for a, s in sketches.items() if len(s) == size}
    mean = np.mean(list(kept.values()), axis=0)
    return {a: float(np.linalg.norm(s - mean)) for a, s in kept.items()}
