"""The SecAgg+ server: relays stage messages, sums masked inputs, unmasks the sum.

Bonawitz et al., CCS 2017, Fig. 4 (server side), with the sparse graph of Bell et al., CCS
2020. The server's stage is the stage whose messages it is collecting; each ``close_*``
function ends a stage (the deadline passed, or everyone answered), records the dropouts and
returns what must be relayed:

    open_advertise → receive_keys* → close_advertise → receive_shares* → close_share_keys
      → receive_masked_input* → close_collect → receive_unmask* → finish

Sets: U1 advertised keys, U2 sent shares, U3 sent a masked input (the survivors), U4 revealed
shares. A client whose secrets could not be rebuilt from its live neighbours is excluded as
soon as that is known. The state holds only the running sum of masked inputs, never one
client's input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import SecAggAbortError, ShareError
from agent.robust.secure import check_ring_sum
from agent.secagg import keys, shamir
from agent.secagg.graph import neighbours
from agent.secagg.prg import MaskStream
from agent.secagg.quantize import dequantize_into
from agent.secagg.state import (
    PublicKeys,
    RevealedShares,
    Setup,
    Stage,
    expect,
    move,
    sign,
)

RingVector = npt.NDArray[np.unsignedinteger[Any]]
#: Which of a RevealedShares' two maps holds shares of a survivor's / a dropout's secret.
_SEED, _KEY = attrgetter("self_seed"), attrgetter("mask_key")


@dataclass(slots=True)
class ServerState:
    """The aggregator's view of one SecAgg+ round.

    Attributes:
        setup: the announced parameters.
        graph: agent id → N(agent id).
        stage: the stage being collected.
        keys: U1's advertised keys.
        ciphertexts: sender (U2) → holder → ciphertext.
        masks: survivor u → the peers whose pairwise masks u applied (N(u) ∩ U2).
        masked_sum: Σ_{u ∈ U3} y_u, shape (d + 1,), the ring dtype.
        survivors: U3.  dropped: U2 \\ U3.
        revealed: U4's revealed shares.
        dropouts: stage → the clients lost in it.
    """

    setup: Setup
    graph: dict[str, frozenset[str]]
    stage: Stage = Stage.SETUP
    keys: dict[str, PublicKeys] = field(default_factory=dict)
    ciphertexts: dict[str, dict[str, bytes]] = field(default_factory=dict)
    masks: dict[str, frozenset[str]] = field(default_factory=dict)
    masked_sum: RingVector | None = None
    survivors: frozenset[str] = frozenset()
    dropped: frozenset[str] = frozenset()
    revealed: dict[str, RevealedShares] = field(default_factory=dict)
    dropouts: dict[Stage, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The outcome of a SecAgg+ round.

    Attributes:
        weighted_sum: Σ_u w_u · x_u over survivors, shape (d,), float64 (within the
            quantization bound; x clipped).
        total_weight: Σ_u w_u.
        survivors: U3, sorted.
    """

    weighted_sum: npt.NDArray[np.float64]
    total_weight: int
    survivors: tuple[str, ...]

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        """The weighted mean Σ w·x / Σ w (FedAvg of the survivors' updates)."""
        return self.weighted_sum / self.total_weight


def setup(announced: Setup) -> ServerState:
    """Stage ``setup``: build the graph the cohort will build from the same announcement."""
    graph = neighbours(
        announced.cohort, k=announced.params.num_neighbours, seed=announced.graph_seed
    )
    return ServerState(announced, graph)


def open_advertise(state: ServerState) -> None:
    """Start collecting ``advertise_keys`` (after the setup went out)."""
    move(state, Stage.ADVERTISE_KEYS)


def receive_keys(state: ServerState, sender: str, public: PublicKeys) -> bool:
    """Record a client's public keys. False (ignored) for a stranger or a repeat."""
    expect(state, Stage.ADVERTISE_KEYS)
    if sender not in state.graph or sender in state.keys:
        return False
    if len(public.enc) != keys.KEY_BYTES or len(public.mask) != keys.KEY_BYTES:
        return False
    state.keys[sender] = public
    return True


def close_advertise(state: ServerState) -> dict[str, dict[str, PublicKeys]]:
    """End ``advertise_keys``: U1 = who advertised, minus clients with fewer than t
    neighbours in U1. Returns, for each u in U1, the keys of N(u) ∩ U1.

    Raises:
        SecAggAbortError: fewer than t clients remain.
    """
    move(state, Stage.SHARE_KEYS)
    live = _prune(set(state.keys), state.graph, state.setup.params.threshold)
    _record(state, Stage.ADVERTISE_KEYS, set(state.setup.cohort) - live)
    state.keys = {u: state.keys[u] for u in live}
    _require(state, len(live), "advertised keys")
    return {u: {v: state.keys[v] for v in state.graph[u] & live} for u in sorted(live)}


def receive_shares(state: ServerState, sender: str, ciphertexts: Mapping[str, bytes]) -> bool:
    """Record a client's share ciphertexts. False (ignored) unless the sender is in U1, has
    not sent yet, and addressed exactly its neighbours in U1."""
    expect(state, Stage.SHARE_KEYS)
    if sender not in state.keys or sender in state.ciphertexts:
        return False
    if set(ciphertexts) != state.graph[sender] & state.keys.keys():
        return False
    state.ciphertexts[sender] = dict(ciphertexts)
    return True


def close_share_keys(state: ServerState) -> dict[str, dict[str, bytes]]:
    """End ``share_keys``: U2 = who sent shares, minus clients whose secrets fewer than t
    members of U2 hold. Returns, for each u in U2, the ciphertexts addressed to u by
    N(u) ∩ U2 (u masks against exactly those senders).

    Raises:
        SecAggAbortError: fewer than t clients remain.
    """
    move(state, Stage.COLLECT_MASKED_INPUT)
    live = _prune(set(state.ciphertexts), state.graph, state.setup.params.threshold)
    _record(state, Stage.SHARE_KEYS, set(state.keys) - live)
    state.ciphertexts = {u: state.ciphertexts[u] for u in live}
    _require(state, len(live), "shared keys")
    relay = {u: {v: state.ciphertexts[v][u] for v in state.graph[u] & live} for u in sorted(live)}
    state.masks = {u: frozenset(relay[u]) for u in relay}
    return relay


def receive_masked_input(state: ServerState, sender: str, masked: RingVector) -> bool:
    """Add a masked input to the running sum. False (ignored) unless the sender is in U2, has
    not sent yet, and the vector has d + 1 words of the ring dtype."""
    expect(state, Stage.COLLECT_MASKED_INPUT)
    params, length = state.setup.params, state.setup.length + 1
    if sender not in state.masks or sender in state.survivors:
        return False
    if masked.dtype != params.dtype or masked.shape != (length,):
        return False
    if state.masked_sum is None:
        state.masked_sum = params.zeros(length)
    np.add(state.masked_sum, masked, out=state.masked_sum)
    state.survivors = state.survivors | {sender}
    return True


def close_collect(state: ServerState) -> tuple[list[str], list[str]]:
    """End ``collect_masked_input``: returns (survivors U3, dropped U2 \\ U3), both sorted;
    the survivors are asked to unmask.

    Raises:
        SecAggAbortError: fewer than t survivors.
    """
    move(state, Stage.UNMASK)
    state.dropped = frozenset(state.masks) - state.survivors
    _record(state, Stage.COLLECT_MASKED_INPUT, set(state.dropped))
    _require(state, len(state.survivors), "sent a masked input")
    return sorted(state.survivors), sorted(state.dropped)


def receive_unmask(state: ServerState, sender: str, revealed: RevealedShares) -> bool:
    """Record a survivor's revealed shares. False (ignored) unless the sender is a survivor
    that has not answered, revealing seed shares only of survivors and key shares only of
    dropouts, all among its neighbours."""
    expect(state, Stage.UNMASK)
    if sender not in state.survivors or sender in state.revealed:
        return False
    mine = state.graph[sender]
    if not set(revealed.self_seed) <= state.survivors & mine:
        return False
    if not set(revealed.mask_key) <= state.dropped & mine:
        return False
    state.revealed[sender] = revealed
    return True


def finish(state: ServerState) -> Aggregate:
    """End ``unmask``: rebuild every survivor's self-mask seed and every dropout's mask key
    from t shares each, strip all masks from the sum, and decode it.

    Raises:
        SecAggAbortError: a secret with fewer than t shares, or shares that do not rebuild a
            key matching what its owner advertised. The state moves to ``aborted``.
    """
    expect(state, Stage.UNMASK)
    try:
        result = _unmask(state)
    except SecAggAbortError:
        move(state, Stage.ABORTED)
        raise
    move(state, Stage.DONE)
    return result


def abort(state: ServerState) -> None:
    """Give the round up (a deadline with nothing to unmask, or an outside error)."""
    move(state, Stage.ABORTED)


def _unmask(state: ServerState) -> Aggregate:
    setup_ = state.setup
    params = setup_.params
    _record(state, Stage.UNMASK, set(state.survivors) - set(state.revealed))
    seeds = _reconstruct(state, sorted(state.survivors), _SEED, "self_seed")
    mask_keys = _reconstruct(state, sorted(state.dropped), _KEY, "mask_key")
    total = state.masked_sum
    if total is None:  # close_collect aborts first; kept for a state built by hand
        raise SecAggAbortError("too_few_survivors", "no masked input")
    state.masked_sum = None  # unmasked in place (the round ends here), masks by segment
    # every mask to take out, then one pass over the sum (MaskStream.apply)
    masks = [(seed, -1) for seed in seeds.values()]
    context = setup_.context
    for v, raw in mask_keys.items():
        private = keys.private_from_bytes(raw)
        if keys.public_bytes(private) != state.keys[v].mask:
            raise SecAggAbortError("bad_shares", f"the shares of {v}'s mask key do not match it")
        for u in sorted(state.survivors):
            if v not in state.masks[u]:
                continue
            seed = keys.agree(
                private, state.keys[u].mask, info=context.info(keys.MASK_PURPOSE, u, v)
            )
            # u applied sign(u, v)·PRG(s_uv); take it back out.
            masks.append((seed, -sign(u, v)))
    MaskStream(len(total), params.dtype).apply(total, masks)
    # What honest, clipped, quantized, weight-capped inputs can add up to (agent.robust.secure).
    check_ring_sum(
        total,
        survivors=len(state.survivors),
        bits=params.quantization_bits,
        max_weight=params.max_weight,
    )
    weight = int(total[-1])
    weighted = np.empty(len(total) - 1, np.float64)
    dequantize_into(weighted, total[:-1], len(state.survivors), params, float(params.max_weight))
    del total  # the ring sum goes before anything else model-sized is built
    return Aggregate(weighted, weight, tuple(sorted(state.survivors)))


def _reconstruct(state: ServerState, owners: list[str], pick: Any, what: str) -> dict[str, bytes]:
    """Rebuild ``what`` for every owner from the first t revealed shares, in one batch."""
    t = state.setup.params.threshold
    xs: list[list[int]] = []
    ys: list[list[Any]] = []
    index = _holders(state, pick)
    for owner in owners:
        holders = index.get(owner, [])
        if len(holders) < t:
            raise SecAggAbortError(
                "too_few_shares", f"{len(holders)} shares of {owner}'s {what}, {t} needed"
            )
        try:
            xs.append([state.setup.x_of(h) for h in holders[:t]])
            ys.append(
                [shamir.share_from_bytes(pick(state.revealed[h])[owner]) for h in holders[:t]]
            )
        except ShareError as exc:
            raise SecAggAbortError("bad_shares", f"{owner}'s {what}: {exc}") from exc
    if not owners:
        return {}
    try:
        secrets = shamir.combine(np.asarray(xs), np.asarray(ys))
    except ShareError as exc:
        raise SecAggAbortError("bad_shares", f"{what}: {exc}") from exc
    return dict(zip(owners, secrets, strict=True))


def missing_shares(state: ServerState) -> dict[str, int]:
    """The secrets ``finish`` cannot rebuild: owner → revealed shares, for every survivor
    whose self-mask seed and every dropout whose mask key has fewer than t (empty: no
    ``too_few_shares`` abort). Reads the state only.

    Raises:
        StageError: not in ``unmask``.
    """
    expect(state, Stage.UNMASK)
    t = state.setup.params.threshold
    seeds, mask_keys = _holders(state, _SEED), _holders(state, _KEY)
    counts = {o: len(seeds.get(o, [])) for o in sorted(state.survivors)}
    counts |= {o: len(mask_keys.get(o, [])) for o in sorted(state.dropped)}
    return {owner: count for owner, count in counts.items() if count < t}


def _holders(state: ServerState, pick: Any) -> dict[str, list[str]]:
    """Owner → the revealers (sorted) that sent a share of its secret picked by ``pick``."""
    index: dict[str, list[str]] = {}
    for holder in sorted(state.revealed):
        for owner in pick(state.revealed[holder]):
            index.setdefault(owner, []).append(holder)
    return index


def _prune(live: set[str], graph: Mapping[str, frozenset[str]], t: int) -> set[str]:
    """Drop clients with fewer than t neighbours in ``live`` until none is left to drop."""
    while True:
        weak = {u for u in live if len(graph[u] & live) < t}
        if not weak:
            return live
        live -= weak


def _record(state: ServerState, stage: Stage, lost: set[str]) -> None:
    state.dropouts[stage] = frozenset(lost)


def _require(state: ServerState, count: int, what: str) -> None:
    t = state.setup.params.threshold
    if count < t:
        move(state, Stage.ABORTED)
        raise SecAggAbortError("too_few_survivors", f"{count} clients {what}, {t} needed")
