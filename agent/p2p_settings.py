"""``[p2p]`` and ``[simulate]``: a trainer's serverless gossip settings (ARCHITECTURE.md §14)
and the demo's heterogeneous-fleet knobs. A leaf module, re-exported by ``agent.config``.

An agent is a P2P peer when its config says ``[aggregator] mode = "p2p"``; ``[p2p]`` then
names the graph every peer derives identically (``agent.secagg.graph.neighbours`` over
``peers``, ``degree`` and ``seed``) and how the gossip steps run.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from agent.messages.base import Name

Positive = Annotated[float, msgspec.Meta(gt=0)]


class _Table(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    pass


class P2PConfig(_Table, frozen=True):
    """``[p2p]``: decentralized parallel SGD over a seeded k-regular graph (Lian et al.,
    "Can Decentralized Algorithms Outperform Centralized Algorithms?", NeurIPS 2017, Alg. 1).

    Attributes:
        peers: every peer's agent id (this agent's included), the same list on every peer.
        degree: k, each peer's neighbours (1 ≤ k ≤ n - 1, n·k even; a Harary graph).
        seed: the graph seed (any string; hashed to 32 bytes), the same on every peer.
        local_steps: plugin ``fit`` calls between two exchanges (each one ``fit_config``).
        steps: gossip steps to run (0: until stopped).
        consensus_steps: gossip steps without a fit after the last of ``steps`` (the final
            consensus phase: each contracts the peers' spread from the mean by the mixing
            matrix's second eigenvalue, so every peer ends near the mean model; 0: none).
        wait: seconds a step waits for a fresh model from each neighbour it believes
            present; one that misses it is skipped, logged, and not waited for again until
            it sends (a vanished neighbour costs one ``wait``, not one per step).
        fit_config: scalars passed to every ``fit`` (``epochs``, ``lr``, ...).
        eval_every: evaluate the held model every k steps (0: never) and report accuracy
            in the status.
    """

    peers: Annotated[list[Name], msgspec.Meta(max_length=100_000)] = []
    degree: Annotated[int, msgspec.Meta(ge=1)] = 4
    seed: str = "fedbus-p2p"
    local_steps: Annotated[int, msgspec.Meta(ge=1)] = 1
    steps: Annotated[int, msgspec.Meta(ge=0)] = 0
    consensus_steps: Annotated[int, msgspec.Meta(ge=0)] = 0
    wait: Positive = 10.0
    fit_config: dict[str, bool | int | float | str] = {}
    eval_every: Annotated[int, msgspec.Meta(ge=0)] = 1

    @property
    def total_steps(self) -> int:
        """Every step a peer takes: ``steps`` + ``consensus_steps`` (0: until stopped)."""
        return self.steps + self.consensus_steps if self.steps else 0


class SimulateConfig(_Table, frozen=True):
    """``[simulate]``: make an agent a slow or intermittent device (``fedbus demo
    --slow-agents/--slowdown/--duty-cycle``, ``bench/modes.py``); off by default.

    Attributes:
        slowdown: every ``fit`` takes this many times its own duration (it sleeps the
            difference after the plugin returns); 1 is as fast as the machine.
        fit_seconds: the simulated compute time of one ``fit`` on a normal device, in
            seconds: a fit that returns sooner sleeps the rest, before ``slowdown`` scales
            it (a fit takes ``slowdown x max(own duration, fit_seconds)``); 0: off. Lets a
            benchmark give a small model the fit time of a real device, so that a 5x slower
            device really paces a synchronous round (``bench/modes.py``).
        duty_cycle: the fraction of each ``period`` the agent is connected; below 1 it
            closes its bus connection (a clean stop: ``offline``) for the rest of the
            period and comes back with its state from ``state_dir``.
        period: seconds of one on/off cycle.
        phase: seconds into the cycle at start (spreads the agents' off times).
    """

    slowdown: Annotated[float, msgspec.Meta(ge=1)] = 1.0
    fit_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    duty_cycle: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    period: Positive = 20.0
    phase: Annotated[float, msgspec.Meta(ge=0)] = 0.0
