"""A SecAgg+ round played in process, through the real client and server stage functions.

The protocol is Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017, Fig. 4, on the sparse neighbour graph of Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020. Nothing of it is re-implemented here:
every message is built by ``agent.secagg.client`` and taken in by ``agent.secagg.server``; this
module carries them between the two, as the aggregator relays them over the bus, and leaves
out the messages of the clients that drop.

- ``SecAggRound``: a whole round with real keys, shares, masks and unmasking (tests, the
  benchmark). An ``Observer`` can time every stage-function call, see every client message and
  inspect the server's state between stages.
- ``survival``: the same stages run on the server's bookkeeping alone, with placeholder keys,
  ciphertexts, shares and a one-word vector: whether the server's own rules abort a round for a
  dropout plan, in a few milliseconds for 100 clients (the benchmark's Monte Carlo).

A dropout plan maps a stage of ``DROP_STAGES`` to the clients that never send that stage's
message (and so nothing after it).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import SecAggAbortError
from agent.secagg import client, keys, server
from agent.secagg.keys import RoundContext
from agent.secagg.params import SecAggParams, resolve
from agent.secagg.state import PublicKeys, RevealedShares, Setup, Stage

#: The stages a client can vanish in, in protocol order: it never sends that stage's message.
DROP_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_INPUT, Stage.UNMASK)
#: The owner name under which ``Observer.call`` reports the server's calls.
SERVER = "aggregator"

Plan = Mapping[Stage, Collection[str]]
FloatVector = npt.NDArray[np.floating[Any]]
RingVector = npt.NDArray[np.unsignedinteger[Any]]
ClientMessage = PublicKeys | dict[str, bytes] | RingVector | RevealedShares


class SimulationError(RuntimeError):
    """The server refused a message an honest client built: a bug, not a dropout."""


def announce(
    n: int,
    d: int,
    *,
    params: SecAggParams | None = None,
    context: RoundContext | None = None,
    graph_seed: bytes | None = None,
) -> Setup:
    """The aggregator's announcement for a cohort ``agent-000`` … ``agent-{n−1}``.

    Args:
        n: cohort size (≥ 3 for the default parameters).
        d: parameters per update (the masked vector has d + 1 ring words).
        params: k, t and the ring; default ``resolve(n)``.
        context: federation and round; default ("sim", 1).
        graph_seed: 32 bytes fixing the neighbour graph; default fresh random.
    """
    cohort = tuple(f"agent-{i:03d}" for i in range(n))
    return Setup(
        context or RoundContext("sim", 1),
        params or resolve(n),
        cohort,
        os.urandom(32) if graph_seed is None else graph_seed,
        d,
    )


def check_plan(setup: Setup, plan: Plan) -> None:
    """Raises ``ValueError`` for a stage outside ``DROP_STAGES`` or a stranger in ``plan``."""
    for stage, lost in plan.items():
        if stage not in DROP_STAGES:
            raise ValueError(f"clients cannot drop in stage {stage}")
        strangers = set(lost) - set(setup.cohort)
        if strangers:
            raise ValueError(f"not in the cohort: {sorted(strangers)}")


class Observer:
    """Hooks into a ``SecAggRound``; each does nothing unless overridden."""

    def call(self, owner: str, step: str) -> AbstractContextManager[object]:
        """Wraps one stage-function call. ``owner``: an agent id or ``SERVER``; ``step``: the
        function's name (``setup`` for the server covers ``setup`` and ``open_advertise``)."""
        return nullcontext()

    def sent(self, sender: str, stage: Stage, message: ClientMessage) -> None:
        """A client's message of ``stage``: its ``PublicKeys``, its holder → ciphertext map,
        its masked vector (shape (d + 1,), the ring dtype) or its ``RevealedShares``."""

    def inspect(self, state: server.ServerState) -> None:
        """The server's state after all receive_keys, all receive_shares, each
        receive_masked_input and all receive_unmask calls (each before the stage closes)."""


@dataclass
class SecAggRound:
    """One round: every client of ``setup.cohort`` answers every stage unless ``plan`` drops it.

    Construction runs the setup stage (client and server); ``play`` runs the rest, or call
    the stage methods in order to stop part-way.

    Attributes:
        setup: the announcement (cohort, params, d).
        updates: agent id → its update, shape (d,), float (clipped by the quantizer).
        weights: agent id → its num_examples (capped at ``max_weight``).
        plan: who never sends which stage's message.
        observer: timing and inspection hooks.
        rngs: agent id → the generator of its stochastic rounding (default: fresh).
        noise: agent id → its distributed-DP integer noise share, shape (d,) (default: none).
        clients, server_state: the stage states, readable at any point.
    """

    setup: Setup
    updates: Mapping[str, FloatVector]
    weights: Mapping[str, int]
    plan: Plan = field(default_factory=dict)
    observer: Observer = field(default_factory=Observer)
    rngs: Mapping[str, np.random.Generator] = field(default_factory=dict)
    noise: Mapping[str, npt.NDArray[np.int64]] = field(default_factory=dict)
    clients: dict[str, client.ClientState] = field(init=False, default_factory=dict)
    server_state: server.ServerState = field(init=False)

    def __post_init__(self) -> None:
        check_plan(self.setup, self.plan)
        with self.observer.call(SERVER, "setup"):
            self.server_state = server.setup(self.setup)
            server.open_advertise(self.server_state)
        for a in self.setup.cohort:
            with self.observer.call(a, "setup"):
                self.clients[a] = client.setup(a, self.setup)

    def _answers(self, agent: str, stage: Stage) -> bool:
        return agent not in self.plan.get(stage, ())

    def _deliver(self, accepted: bool, sender: str, stage: Stage) -> None:
        if not accepted:
            raise SimulationError(f"the server refused {sender}'s {stage} message")

    def advertise(self) -> dict[str, dict[str, PublicKeys]]:
        """Stage ``advertise_keys``; returns ``close_advertise``'s relay (u → keys of N(u) ∩ U1).

        Raises:
            SecAggAbortError: fewer than t clients left (the server aborts).
        """
        for a, state in self.clients.items():
            if self._answers(a, Stage.ADVERTISE_KEYS):
                with self.observer.call(a, "advertise_keys"):
                    public = client.advertise_keys(state)
                self.observer.sent(a, Stage.ADVERTISE_KEYS, public)
                with self.observer.call(SERVER, "receive_keys"):
                    accepted = server.receive_keys(self.server_state, a, public)
                self._deliver(accepted, a, Stage.ADVERTISE_KEYS)
        self.observer.inspect(self.server_state)
        with self.observer.call(SERVER, "close_advertise"):
            return server.close_advertise(self.server_state)

    def share(self, relay: Mapping[str, Mapping[str, PublicKeys]]) -> dict[str, dict[str, bytes]]:
        """Stage ``share_keys``; returns ``close_share_keys``' relay (u → ciphertexts to u)."""
        for a, peer_keys in relay.items():
            if self._answers(a, Stage.SHARE_KEYS):
                with self.observer.call(a, "share_keys"):
                    ciphertexts = client.share_keys(self.clients[a], peer_keys)
                self.observer.sent(a, Stage.SHARE_KEYS, ciphertexts)
                with self.observer.call(SERVER, "receive_shares"):
                    accepted = server.receive_shares(self.server_state, a, ciphertexts)
                self._deliver(accepted, a, Stage.SHARE_KEYS)
        self.observer.inspect(self.server_state)
        with self.observer.call(SERVER, "close_share_keys"):
            return server.close_share_keys(self.server_state)

    def collect(self, relay: Mapping[str, Mapping[str, bytes]]) -> tuple[list[str], list[str]]:
        """Stage ``collect_masked_input``; returns ``close_collect``'s (survivors, dropped)."""
        for a, ciphertexts in relay.items():
            if self._answers(a, Stage.COLLECT_MASKED_INPUT):
                with self.observer.call(a, "collect_masked_input"):
                    masked = client.collect_masked_input(
                        self.clients[a],
                        ciphertexts,
                        update=self.updates[a],
                        weight=self.weights[a],
                        rng=self.rngs.get(a),
                        noise=self.noise.get(a),
                    )
                self.observer.sent(a, Stage.COLLECT_MASKED_INPUT, masked)
                with self.observer.call(SERVER, "receive_masked_input"):
                    accepted = server.receive_masked_input(self.server_state, a, masked)
                self._deliver(accepted, a, Stage.COLLECT_MASKED_INPUT)
                self.observer.inspect(self.server_state)
        with self.observer.call(SERVER, "close_collect"):
            return server.close_collect(self.server_state)

    def unmask(self, survivors: list[str], dropped: list[str]) -> None:
        """Stage ``unmask``: each answering survivor reveals its shares to the server."""
        for a in survivors:
            if self._answers(a, Stage.UNMASK):
                with self.observer.call(a, "unmask"):
                    revealed = client.unmask(self.clients[a], survivors=survivors, dropped=dropped)
                self.observer.sent(a, Stage.UNMASK, revealed)
                with self.observer.call(SERVER, "receive_unmask"):
                    accepted = server.receive_unmask(self.server_state, a, revealed)
                self._deliver(accepted, a, Stage.UNMASK)
        self.observer.inspect(self.server_state)

    def finish(self, *, keep_state: bool = False) -> server.Aggregate:
        """``server.finish``; with ``keep_state``, on a copy, so that it can be repeated (it
        copies the masked sum and only records dropouts and moves the stage)."""
        state = self.server_state
        if keep_state:
            total = state.masked_sum  # finish unmasks it in place: give it a copy
            state = replace(
                state,
                dropouts=dict(state.dropouts),
                masked_sum=None if total is None else total.copy(),
            )
        with self.observer.call(SERVER, "finish"):
            return server.finish(state)

    def play(self) -> server.Aggregate:
        """The stages after setup, in order.

        Raises:
            SecAggAbortError: the server (or a client) aborted the round.
        """
        self.unmask(*self.collect(self.share(self.advertise())))
        return self.finish()


@dataclass(frozen=True, slots=True)
class Survival:
    """What the server's rules make of a dropout plan.

    Attributes:
        abort: the ``SecAggAbortError`` reason, or None when ``finish`` has every share.
        excluded: stage → the clients the server recorded as lost in it, for the stages it
            closes before ``finish`` (``finish`` itself records the unmask stage).
        missing: owner → shares revealed, for secrets with fewer than t (the reason
            ``too_few_shares``).
    """

    abort: str | None
    excluded: Mapping[Stage, frozenset[str]]
    missing: Mapping[str, int]


@cache
def _placeholder_key() -> X25519PrivateKey:
    return keys.generate()


def survival(setup: Setup, plan: Plan, *, template: server.ServerState | None = None) -> Survival:
    """Run ``plan`` through the server's stage functions with placeholder messages, then ask
    ``server.missing_shares`` whether ``finish`` could rebuild every secret.

    The placeholders pass exactly the checks the server makes of real messages (32-byte keys,
    ciphertexts for the right holders, a vector of d + 1 ring words); what survivors reveal
    comes from ``client.unmask`` itself. Nothing is encrypted, masked or reconstructed.

    Args:
        setup: the announcement; ``setup.length`` may be 1.
        plan: who never sends which stage's message.
        template: ``server.setup(setup)`` computed once, to reuse its graph over many plans.
    """
    check_plan(setup, plan)
    graph = (template or server.setup(setup)).graph
    state = server.ServerState(setup, graph)
    server.open_advertise(state)
    answers = {s: set(setup.cohort) - set(plan.get(s, ())) for s in DROP_STAGES}
    placeholder = PublicKeys(bytes(keys.KEY_BYTES), bytes(keys.KEY_BYTES))
    try:
        for a in sorted(answers[Stage.ADVERTISE_KEYS]):
            server.receive_keys(state, a, placeholder)
        relay = server.close_advertise(state)
        for a in sorted(answers[Stage.SHARE_KEYS] & relay.keys()):
            server.receive_shares(state, a, dict.fromkeys(relay[a], b""))
        held = server.close_share_keys(state)
        vector = setup.params.zeros(setup.length + 1)
        for a in sorted(answers[Stage.COLLECT_MASKED_INPUT] & held.keys()):
            server.receive_masked_input(state, a, vector)
        survivors, dropped = server.close_collect(state)
        key = _placeholder_key()
        for a in sorted(answers[Stage.UNMASK] & set(survivors)):
            view = client.ClientState(
                a,
                setup,
                graph[a],
                stage=Stage.COLLECT_MASKED_INPUT,
                enc_key=key,
                mask_key=key,
                self_seed=b"",
                held=dict.fromkeys(held[a], (b"", b"")),
            )
            revealed = client.unmask(view, survivors=survivors, dropped=dropped)
            server.receive_unmask(state, a, revealed)
    except SecAggAbortError as exc:
        return Survival(exc.reason, dict(state.dropouts), {})
    missing = server.missing_shares(state)
    return Survival("too_few_shares" if missing else None, dict(state.dropouts), missing)
