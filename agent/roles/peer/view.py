"""``fedbus status`` for a P2P federation: every peer's version, accuracy and distance from
the mean, from the peers' own ``status`` messages (no aggregator holds a summary).

The distance from the mean is ``sketch.distances`` over the peers' reported sketches: an
estimate of ‖x_i - x̄‖₂, x̄ the mean model of the peers that reported (see ``sketch``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import msgspec

from agent.bus.base import Bus
from agent.errors import ProtocolError
from agent.messages import topics
from agent.messages.bodies import AgentStatus, Liveness
from agent.messages.codec import decode
from agent.roles.peer.sketch import distances


def merge(old: AgentStatus | None, new: AgentStatus) -> AgentStatus:
    """``new``, keeping ``old``'s version, sketch and accuracy when ``new`` has none (the
    last will, signed at connect, says only ``offline``)."""
    if old is None or new.model_version is not None:
        return new
    return msgspec.structs.replace(
        new,
        model_version=old.model_version,
        sketch=old.sketch,
        accuracy=old.accuracy,
        done=old.done,
    )


async def collect(bus: Bus, federation: str, seconds: float) -> dict[str, AgentStatus]:
    """The newest ``status`` of every agent heard within ``seconds`` (retained on MQTT; on
    NATS wait at least one ``[trainer] heartbeat``)."""
    await bus.subscribe(topics.STATUS.filter(federation))
    found: dict[str, AgentStatus] = {}
    try:
        async with asyncio.timeout(seconds):
            async for raw in bus.messages():
                try:
                    message = decode(raw.payload)
                except ProtocolError:
                    continue
                if isinstance(message.body, AgentStatus):
                    sender = message.envelope.sender
                    found[sender] = merge(found.get(sender), message.body)
    except TimeoutError:
        pass
    return found


def peer_lines(federation: str, statuses: Mapping[str, AgentStatus]) -> list[str]:
    """One line per peer: liveness, version, accuracy, distance from the mean, detail."""
    gaps = distances({a: s.sketch for a, s in statuses.items() if s.sketch})
    online = sum(1 for s in statuses.values() if s.state is Liveness.ONLINE)
    versions = [s.model_version for s in statuses.values() if s.model_version is not None]
    lines = [
        f"federation {federation} (p2p): {online} peers online of {len(statuses)}, "
        f"versions {min(versions, default=0)}-{max(versions, default=0)}",
        f"  {'peer':<16} {'state':<8} {'version':>7} {'accuracy':>8} {'from mean':>9}  detail",
    ]
    for agent_id in sorted(statuses):
        s = statuses[agent_id]
        acc = "-" if s.accuracy is None else f"{100 * s.accuracy:.2f}%"
        gap = "-" if agent_id not in gaps else f"{gaps[agent_id]:.4f}"
        version = "-" if s.model_version is None else str(s.model_version)
        lines.append(f"  {agent_id:<16} {s.state!s:<8} {version:>7} {acc:>8} {gap:>9}  {s.detail}")
    lines.append(f"as of {time.strftime('%H:%M:%S')}; from mean: ‖sketch - mean sketch‖₂")
    return lines
