"""What a peer knows of its neighbours: their sealing keys, their newest models, who is
present, and the bounded wait of one gossip step (ARCHITECTURE.md §14)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.messages.peer_bodies import PeerHello, PeerModel
from agent.messages.tensors import to_arrays
from agent.roles.peer.mixing import Neighbour
from agent.secagg.graph import neighbours

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Seen:
    key: bytes | None = None
    hello: bool = False
    version: int = -1
    model: Neighbour | None = None
    fresh: bool = False  # a model arrived since the last mix
    present: bool = True  # waited for; False once it missed a wait, until it sends again
    done: bool = False  # took all its steps: never waited for again
    revoked: bool = False  # its certificate was revoked: never waited for, sent to or mixed
    skipped: int = 0
    last_seen: float = field(default_factory=time.monotonic)


def graph_neighbours(config: AgentConfig) -> frozenset[str]:
    """This agent's neighbours in the ``[p2p]`` graph.

    Raises:
        ConfigError: the agent is not in ``peers``, or no ``degree``-regular graph exists.
    """
    p2p = config.p2p
    if config.agent_id not in p2p.peers:
        raise ConfigError(f"[p2p] peers does not list this agent ({config.agent_id})")
    seed = hashlib.sha256(p2p.seed.encode()).digest()
    try:
        return neighbours(p2p.peers, k=p2p.degree, seed=seed)[config.agent_id]
    except ValueError as exc:
        raise ConfigError(f"[p2p] degree = {p2p.degree}: {exc}") from exc


class NeighbourBook:
    """The neighbours of one peer (fixed by the graph) and what each last sent.

    A neighbour starts *present*: a step waits for its model. One that misses a step's wait
    is skipped (logged ``neighbour_skipped``) and marked absent, so the following steps do
    not wait for it; one that says it is leaving (a clean stop) is marked absent at once
    (``neighbour_left``); any other message from it makes it present again
    (``neighbour_back``).
    """

    def __init__(self, neighbours: Iterable[str]) -> None:
        self._seen = {a: _Seen() for a in sorted(neighbours)}
        self._arrived = asyncio.Event()

    @property
    def ids(self) -> list[str]:
        """The neighbours' agent ids, sorted."""
        return list(self._seen)

    def key(self, agent_id: str) -> bytes | None:
        """The neighbour's sealing key (None: not heard yet, or identities off)."""
        return self._seen[agent_id].key

    def heard(self, agent_id: str) -> bool:
        """Whether a ``peer_hello`` from the neighbour arrived."""
        return self._seen[agent_id].hello

    async def greeted(self, wait: float) -> list[str]:
        """Wait up to ``wait`` s for a hello from every neighbour (their keys, before the
        first step); returns those still silent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (silent := [a for a, s in self._seen.items() if not s.hello]) and (
            left := deadline - loop.time()
        ) > 0:
            self._arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                break
        return silent

    def all_done(self) -> bool:
        """Nothing is left to average with: every neighbour was revoked, or took all its
        steps and left no model (a done neighbour's final model is still mixed)."""
        return all(s.revoked or (s.done and s.model is None) for s in self._seen.values())

    def present(self) -> list[str]:
        """The neighbours a step waits for."""
        return [a for a, s in self._seen.items() if s.present and not s.done and not s.revoked]

    def revoked(self, agent_id: str) -> bool:
        """Whether the CA host announced the neighbour revoked."""
        return self._seen[agent_id].revoked

    def revoke(self, agent_id: str) -> bool:
        """Never wait for, send to or mix ``agent_id`` again; its held model is discarded.
        Returns False for an agent that is not a neighbour."""
        seen = self._seen.get(agent_id)
        if seen is None:
            return False
        seen.revoked, seen.model, seen.fresh = True, None, False
        self._arrived.set()  # a step waiting for it stops waiting
        log.warning("neighbour_revoked", neighbour=agent_id)
        return True

    def on_hello(self, sender: str, body: PeerHello) -> bool:
        """Keep ``sender``'s key. Returns True when it wants our hello (it asked, or its key
        is new: it (re)started)."""
        seen = self._seen[sender]
        new = body.reply or not seen.hello or seen.key != body.seal_key
        seen.key, seen.hello, seen.done = body.seal_key, True, body.done
        if body.leaving:  # a clean stop: skip it now rather than after a wait
            seen.present = False
            log.info("neighbour_left", neighbour=sender, version=body.version)
        else:
            self._back(sender, seen)
        self._arrived.set()
        return new and not body.leaving

    def on_model(self, sender: str, body: PeerModel) -> bool:
        """Keep ``sender``'s model unless an older version than the one held (a restarted
        neighbour counts again from its saved version). Returns whether it was kept."""
        seen = self._seen[sender]
        if seen.revoked:
            return False
        self._back(sender, seen)
        if body.version < seen.version:
            return False
        seen.version = body.version
        seen.model = Neighbour(to_arrays(body.tensors), body.degree)
        seen.fresh = True
        self._arrived.set()
        return True

    def _back(self, sender: str, seen: _Seen) -> None:
        seen.last_seen = time.monotonic()
        if not seen.present:
            seen.present = True
            log.info("neighbour_back", neighbour=sender, skipped_steps=seen.skipped)
            seen.skipped = 0

    async def collect(self, wait: float, *, step: int) -> dict[str, Neighbour]:
        """Wait up to ``wait`` s for a fresh model from every present neighbour; return the
        fresh ones (and mark them used) and the final model of every done one. The present
        ones still missing are skipped; a revoked one is never returned."""
        deadline = asyncio.get_running_loop().time() + wait
        while missing := [a for a in self.present() if not self._seen[a].fresh]:
            self._arrived.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                for a in missing:
                    seen = self._seen[a]
                    seen.present = False
                    seen.skipped += 1
                    log.warning("neighbour_skipped", neighbour=a, step=step, waited=wait)
                break
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                continue
        fresh: dict[str, Neighbour] = {}
        for agent_id, seen in self._seen.items():
            # a done neighbour's final model is mixed at every step: a peer still training
            # keeps being pulled to it instead of drifting to its own data alone
            if (seen.fresh or seen.done) and seen.model is not None and not seen.revoked:
                fresh[agent_id] = seen.model
                seen.fresh = False
        return fresh
