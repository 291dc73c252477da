"""Abort probability of a SecAgg+ round for bench/secagg.py, by Monte Carlo over neighbour
graphs and dropout draws, and by union bounds.

Each trial's verdict comes from ``agent.secagg.simulation.survival``: the server's own stage
functions (pruning in close_advertise and close_share_keys, the survivor threshold of
close_collect, ``missing_shares`` for finish's reconstruction) run on placeholder messages, so
the estimate follows the server's rules as they are, not a copy of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
from secagg_round import DROPOUT, Json, sig

from agent.secagg import server
from agent.secagg.params import abort_bound, resolve
from agent.secagg.simulation import DROP_STAGES, Plan, announce, survival
from agent.secagg.state import Stage

#: Trials per neighbour graph (a fresh graph seed per batch).
MC_BATCH = 500
NEVER = len(DROP_STAGES)  # a client's drop-stage index when it completes the round
AFTER_SHARE_KEYS = DROP_STAGES.index(Stage.COLLECT_MASKED_INPUT)

#: (rng, trials, n) → int8 (trials, n): per client, the index in DROP_STAGES of the message
#: it never sends, or NEVER.
Sampler = Callable[[np.random.Generator, int, int], npt.NDArray[np.int8]]


def iid_after_share_keys(rng: np.random.Generator, trials: int, n: int) -> npt.NDArray[np.int8]:
    """Each client independently vanishes with p = DROPOUT after share_keys."""
    drop = rng.random((trials, n)) < DROPOUT
    return np.where(drop, AFTER_SHARE_KEYS, NEVER).astype(np.int8)


def exact_after_share_keys(rng: np.random.Generator, trials: int, n: int) -> npt.NDArray[np.int8]:
    """Exactly round(DROPOUT·n) clients, uniformly chosen, vanish after share_keys."""
    stage = np.full((trials, n), NEVER, dtype=np.int8)
    chosen = np.argsort(rng.random((trials, n)), axis=1)[:, : round(DROPOUT * n)]
    np.put_along_axis(stage, chosen, AFTER_SHARE_KEYS, axis=1)
    return stage


def iid_spread(rng: np.random.Generator, trials: int, n: int) -> npt.NDArray[np.int8]:
    """Each client independently vanishes with p = DROPOUT, at a uniformly chosen stage."""
    drop = rng.random((trials, n)) < DROPOUT
    where = rng.integers(0, NEVER, (trials, n), dtype=np.int8)
    return np.where(drop, where, NEVER).astype(np.int8)


def plans(stage: npt.NDArray[np.int8], cohort: Sequence[str]) -> Iterator[Plan]:
    """Each row of a sampler's output as a dropout plan."""
    for row in stage:
        yield {
            s: frozenset(cohort[i] for i in np.flatnonzero(row == j))
            for j, s in enumerate(DROP_STAGES)
        }


def upper_95(count: int, trials: int) -> float:
    """One-sided 95% Clopper-Pearson upper bound on a probability seen ``count`` times in
    ``trials`` (≈ 3/trials when count = 0)."""
    if count >= trials:
        return 1.0
    j = np.arange(count + 1, dtype=np.float64)
    log_comb = np.concatenate(([0.0], np.cumsum(np.log((trials - j[1:] + 1) / j[1:]))))

    def cdf(p: float) -> float:
        terms = log_comb + j * math.log(p) + (trials - j) * math.log1p(-p)
        top = float(terms.max())
        return math.exp(top) * float(np.exp(terms - top).sum())

    low, high = count / trials, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) > 0.05 else (low, mid)
    return high


def estimate(
    n: int, k: int, t: int, sample: Sampler, *, trials: int, rng: np.random.Generator
) -> Json:
    """Monte Carlo abort probability: batches of MC_BATCH trials, a fresh graph seed each,
    every trial judged by ``survival`` (the server's rules)."""
    params = resolve(n, num_neighbours=k, threshold=t)
    count = 0
    for start in range(0, trials, MC_BATCH):
        size = min(MC_BATCH, trials - start)
        setup = announce(n, 1, params=params, graph_seed=rng.bytes(32))
        template = server.setup(setup)
        for plan in plans(sample(rng, size, n), setup.cohort):
            count += survival(setup, plan, template=template).abort is not None
    return {
        "trials": trials,
        "aborts": count,
        "probability": sig(count / trials, 3),
        "upper_95": sig(upper_95(count, trials), 3),
    }


def exact_union_bound(n: int, k: int, t: int, dropped: int) -> float:
    """Union bound when exactly ``dropped`` of n clients vanish: n times the chance that more
    than k - t of one client's k neighbours (a uniform k-subset of the other n - 1, the
    dropouts being uniform) are among them."""

    def tail(gone: int) -> float:
        hits = range(k - t + 1, min(k, gone) + 1)
        ways = sum(math.comb(gone, j) * math.comb(n - 1 - gone, k - j) for j in hits)
        return ways / math.comb(n - 1, k)

    share = dropped / n  # the client itself is among the dropouts
    return min(1.0, n * ((1 - share) * tail(dropped) + share * tail(dropped - 1)))


def abort_probability(n: int, *, trials: int, rng: np.random.Generator) -> Json:
    """The default (k, t) and k = 3 at DROPOUT, by Monte Carlo and by params.abort_bound."""
    default = resolve(n)
    out: Json = {"n": n, "dropout": DROPOUT}
    variants: list[tuple[str, int, int, dict[str, Sampler]]] = [
        (
            "default",
            default.num_neighbours,
            default.threshold,
            {
                "iid_after_share_keys": iid_after_share_keys,
                "exactly_10pct_after_share_keys": exact_after_share_keys,
                "iid_spread_over_stages": iid_spread,
            },
        ),
        ("k3", 3, 2, {"iid_after_share_keys": iid_after_share_keys}),
    ]
    for name, k, t, samplers in variants:
        out[name] = {
            "k": k,
            "t": t,
            "union_bound": sig(abort_bound(n, k, t, DROPOUT), 3),
            "union_bound_exactly_10pct": sig(exact_union_bound(n, k, t, round(DROPOUT * n)), 3),
            **{s: estimate(n, k, t, f, trials=trials, rng=rng) for s, f in samplers.items()},
        }
    return out
