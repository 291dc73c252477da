"""Cohort sampling: which admitted agents train in a round.

Over-selection (Bonawitz et al., "Towards Federated Learning at Scale", SysML 2019, §2.2
"Selection"): the round needs ``cohort_size`` results, but ``ceil((1 + over_selection) ·
cohort_size)`` agents are asked, and the round closes as soon as the needed number answered;
the stragglers' late results are discarded. With ``over_selection = 0.3`` (the paper's 130 %)
a round no longer waits for its slowest 23 %.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection


def cohort_size(available: int, *, fraction: float, min_clients: int, max_clients: int) -> int:
    """``ceil(fraction * available)`` clamped to [min_clients, max_clients], at most
    ``available``. 0 when fewer than ``min_clients`` are available (the round cannot run)."""
    if available < min_clients:
        return 0
    wanted = max(min_clients, min(max_clients, math.ceil(fraction * available)))
    return min(wanted, available)


def over_selected(needed: int, available: int, *, over_selection: float) -> int:
    """How many to ask when ``needed`` results are wanted: ``ceil((1 + over_selection) ·
    needed)``, at most ``available`` (0 when ``needed`` is 0)."""
    if needed <= 0:
        return 0
    return min(available, math.ceil(round(needed * (1.0 + over_selection), 9)))


def sample_cohort(
    available: Collection[str],
    *,
    fraction: float,
    min_clients: int,
    max_clients: int,
    rng: random.Random,
    over_selection: float = 0.0,
) -> list[str]:
    """A uniform sample without replacement, sorted; empty when the round cannot run. With
    ``over_selection`` > 0, ``over_selected`` of the ``cohort_size`` needed are sampled."""
    k = cohort_size(
        len(available), fraction=fraction, min_clients=min_clients, max_clients=max_clients
    )
    k = over_selected(k, len(available), over_selection=over_selection)
    return sorted(rng.sample(sorted(available), k))
