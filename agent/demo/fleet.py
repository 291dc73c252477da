"""The demo's training mode and heterogeneous fleet (``fedbus demo --mode``,
``--slow-agents/--slowdown``, ``--duty-agents/--duty-cycle/--duty-period``).

Agents ``agent-00`` … ``agent-(K-1)`` are the slow ones (``[simulate] slowdown``), the next
M the intermittent ones (``[simulate] duty_cycle``, their off windows spread evenly over the
period by ``phase``). ``--mode p2p`` gives every agent ``[aggregator] mode = "p2p"`` and the
same ``[p2p]`` graph, and the demo runs no aggregator (``agent.demo.p2p``).
"""

from __future__ import annotations

import msgspec

from agent.config import AgentConfig, P2PConfig, SimulateConfig, TrainingMode
from agent.demo.options import DemoOptions
from agent.errors import ConfigError

#: The module the async mode's trainer side lives in; ``--mode async`` needs it.
#: The P2P graph's degree in the demo (lowered for small fleets: n·k must be even); 8 of 20
#: mixes much faster than 4 (second eigenvalue 0.70 against 0.90: ARCHITECTURE.md §14).
P2P_DEGREE = 8
#: Seconds a P2P step waits for a neighbour's model in the demo.
P2P_WAIT = 2.0
#: Gossip steps without a fit after the last training step (the final consensus phase).
P2P_CONSENSUS_STEPS = 20


def check_mode(options: DemoOptions) -> TrainingMode:
    """The demo's ``TrainingMode``.

    Raises:
        ConfigError: slow and intermittent agents that do not fit in ``--agents``.
    """
    mode = TrainingMode(options.mode)
    if options.slow_agents + options.duty_agents > options.agents:
        raise ConfigError(
            f"--slow-agents {options.slow_agents} + --duty-agents {options.duty_agents} "
            f"> --agents {options.agents}"
        )
    return mode


def degree(agents: int) -> int:
    """The P2P degree for ``agents`` peers: ``P2P_DEGREE`` or less, with n·k even."""
    k = min(P2P_DEGREE, agents - 1)
    return k - 1 if (agents * k) % 2 else k


def simulate(options: DemoOptions, index: int) -> SimulateConfig:
    """Agent ``index``'s ``[simulate]``: slow, intermittent or neither; every agent's fit
    takes at least ``fit_seconds`` (times its slowdown)."""
    fit = options.fit_seconds
    if index < options.slow_agents:
        return SimulateConfig(slowdown=options.slowdown, fit_seconds=fit)
    duty = index - options.slow_agents
    if duty < options.duty_agents and options.duty_cycle < 1:
        phase = options.duty_period * duty / options.duty_agents
        return SimulateConfig(
            duty_cycle=options.duty_cycle, period=options.duty_period, phase=phase, fit_seconds=fit
        )
    return SimulateConfig(fit_seconds=fit)


def p2p_config(options: DemoOptions, agent_ids: list[str]) -> P2PConfig:
    """The ``[p2p]`` every demo peer gets: ``--rounds`` gossip steps over the demo's graph."""
    return P2PConfig(
        peers=agent_ids,
        degree=degree(len(agent_ids)),
        seed=f"demo-{options.seed}",
        steps=options.rounds,
        consensus_steps=P2P_CONSENSUS_STEPS,
        wait=P2P_WAIT,
        fit_config=dict(options.fit_config),
    )


def shape_agent(options: DemoOptions, index: int, config: AgentConfig) -> AgentConfig:
    """Agent ``index``'s config with the demo's mode and fleet settings (unchanged with the
    defaults: the demo without these flags writes the configs it always wrote)."""
    mode = TrainingMode(options.mode)
    changes: dict[str, object] = {}
    if (sim := simulate(options, index)) != SimulateConfig():
        changes["simulate"] = sim
    if mode is TrainingMode.P2P:  # the trainer side of async needs no setting
        changes["aggregator"] = msgspec.structs.replace(config.aggregator, mode=mode)
        ids = [f"agent-{i:02d}" for i in range(options.agents)]
        changes["p2p"] = p2p_config(options, ids)
    return msgspec.structs.replace(config, **changes) if changes else config


def describe(options: DemoOptions) -> str:
    """The demo's fleet line, after a newline ("" without the flags)."""
    parts = []
    if options.mode != TrainingMode.SYNC:
        parts.append(f"mode {options.mode}")
    if options.slow_agents and options.slowdown > 1:
        parts.append(f"{options.slow_agents} agents {options.slowdown:g}x slower")
    if options.fit_seconds > 0:
        parts.append(f"every fit at least {options.fit_seconds:g} s of simulated compute")
    if options.duty_agents and options.duty_cycle < 1:
        parts.append(
            f"{options.duty_agents} agents online {100 * options.duty_cycle:.0f}% of every "
            f"{options.duty_period:g} s"
        )
    return f"\nfleet: {', '.join(parts)}" if parts else ""
