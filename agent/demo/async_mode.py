"""``fedbus demo --mode async``: the ``[aggregator]`` settings of buffered asynchronous
aggregation (FedBuff, ``agent.roles.aggregator.buffered``) in the generated config.

``--buffer-size`` K (default: half the agents, at least 4 under SecAgg+, whose rounds need
a cohort that survives a dropout) and ``--concurrency`` (default: every agent) say how it
runs, ``--participation`` how an update's weight counts its agent's rarity
(``agent.roles.aggregator.participation``); ``--rounds`` counts model versions (each made
of K updates).
"""

from __future__ import annotations

from typing import Any

from agent.async_settings import AsyncConfig, Participation
from agent.config import SecureAggregation, TrainingMode
from agent.demo.options import DemoOptions

#: The smallest SecAgg+ buffer whose round still unmasks after one dropout (n = 4: k = 3, t = 2).
SECURE_MIN_BUFFER = 4


def mode_fields(options: DemoOptions) -> dict[str, Any]:
    """The ``AggregatorConfig`` fields ``options.mode`` sets (``{}`` for sync).

    Raises:
        ValueError: an unknown mode, or a SecAgg+ buffer larger than the fleet.
    """
    mode = TrainingMode(options.mode)
    if mode is not TrainingMode.ASYNC:
        return {} if mode is TrainingMode.SYNC else {"mode": mode}
    secure = options.secure_aggregation == SecureAggregation.SECAGG_PLUS
    floor = SECURE_MIN_BUFFER if secure else 1
    size = options.buffer_size or max(floor, options.agents // 2)
    if size > options.agents and not options.buffer_size:
        raise ValueError(
            f"async SecAgg+ needs a buffer of at least {floor} agents (a secure round that "
            f"survives a dropout), and there are {options.agents}: use --agents {floor} or "
            "more, or --secure-aggregation none"
        )
    if size > options.agents:
        raise ValueError(
            f"--buffer-size {size} is more than the {options.agents} agents: no buffer "
            "could ever fill; use more --agents or a smaller --buffer-size"
        )
    settings = AsyncConfig(
        concurrency=options.concurrency or options.agents,
        buffer_size=size,
        participation=Participation(options.participation),
    )
    return {"mode": mode, "async_": settings}
