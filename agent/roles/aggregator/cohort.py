"""Cohort sampling: which admitted agents train in a round."""

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


def sample_cohort(
    available: Collection[str],
    *,
    fraction: float,
    min_clients: int,
    max_clients: int,
    rng: random.Random,
) -> list[str]:
    """A uniform sample without replacement, sorted; empty when the round cannot run."""
    k = cohort_size(
        len(available), fraction=fraction, min_clients=min_clients, max_clients=max_clients
    )
    return sorted(rng.sample(sorted(available), k))
