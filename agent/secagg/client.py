"""The SecAgg+ client: one function per stage, each checking and advancing ``ClientState``.

Bonawitz et al., CCS 2017, Fig. 4 (client side of rounds 0-4), with the neighbour graph of
Bell et al., CCS 2020, §4: a client shares its secrets with, and masks against, only its k
neighbours. Client u with neighbours N(u) sends

    y_u = q(x_u) ‖ w_u  +  PRG(b_u)  +  Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv)      (mod 2^m)

where q is the quantizer, w_u its weight, b_u a fresh 32-byte self-mask seed and s_uv the
HKDF output of X25519(s_u^sk, s_v^pk) (+ when u < v, − otherwise, so pairs cancel).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import SecAggAbortError, ShareError
from agent.secagg import keys, shamir
from agent.secagg.graph import neighbours_of
from agent.secagg.prg import SEGMENT_WORDS, MaskStream
from agent.secagg.quantize import Quantizer, weight_word
from agent.secagg.state import PublicKeys, RevealedShares, Setup, Stage, move, sign

RingVector = npt.NDArray[np.unsignedinteger[Any]]


@dataclass(slots=True)
class ClientState:
    """One client's view of one SecAgg+ round.

    Attributes:
        agent_id: this client.
        setup: the round's announced parameters.
        neighbours: N(u), from the graph.
        stage: the last stage completed.
        enc_key, mask_key: this round's X25519 private keys (never leave the client, except
            ``mask_key`` as Shamir shares, revealed only if this client drops out).
        self_seed: b_u, 32 bytes (revealed only as shares, and only if this client survives).
        peers: neighbours that advertised keys (from the aggregator's relay).
        held: shares this client holds for others: owner → (seed share, key share).
        share_keys: the AEAD key shared with each peer (derived once, in ``share_keys``).
    """

    agent_id: str
    setup: Setup
    neighbours: frozenset[str]
    stage: Stage = Stage.SETUP
    enc_key: X25519PrivateKey = field(default_factory=keys.generate)
    mask_key: X25519PrivateKey = field(default_factory=keys.generate)
    self_seed: bytes = field(default_factory=lambda: os.urandom(32))
    peers: dict[str, PublicKeys] = field(default_factory=dict)
    held: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    share_keys: dict[str, bytes] = field(default_factory=dict)


def setup(agent_id: str, announced: Setup) -> ClientState:
    """Stage ``setup``: derive this client's neighbours from the announced graph (its own
    row only, ``graph.neighbours_of``: the server's row for it, without the other n − 1).

    Raises:
        ShareError: this client is not in the cohort.
    """
    if agent_id not in announced.cohort:
        raise ShareError(f"{agent_id} is not in the announced cohort")
    near = neighbours_of(
        announced.cohort, agent_id, k=announced.params.num_neighbours, seed=announced.graph_seed
    )
    return ClientState(agent_id, announced, near)


def advertise_keys(state: ClientState) -> PublicKeys:
    """Stage ``advertise_keys``: the two public keys to send to the aggregator."""
    move(state, Stage.ADVERTISE_KEYS)
    return PublicKeys(enc=keys.public_bytes(state.enc_key), mask=keys.public_bytes(state.mask_key))


def share_keys(state: ClientState, peer_keys: Mapping[str, PublicKeys]) -> dict[str, bytes]:
    """Stage ``share_keys``: Shamir-share b_u and the mask key among the neighbours that
    advertised, each share pair encrypted to its holder.

    Args:
        peer_keys: the relayed public keys of neighbours that advertised (a subset of N(u)).

    Returns:
        holder id → ciphertext (ChaCha20-Poly1305 of seed share ‖ key share, 128 bytes + 28).

    Raises:
        ShareError: keys from a non-neighbour.
        SecAggAbortError: fewer than t neighbours advertised (this client's secrets could not
            be reconstructed; it must not take part).
    """
    move(state, Stage.SHARE_KEYS)
    strangers = set(peer_keys) - state.neighbours
    if strangers:
        raise ShareError(f"keys relayed for non-neighbours {sorted(strangers)}")
    t = state.setup.params.threshold
    if len(peer_keys) < t:
        raise SecAggAbortError(
            "too_few_neighbours", f"{len(peer_keys)} neighbours advertised keys, {t} needed"
        )
    state.peers = dict(peer_keys)
    holders = sorted(peer_keys)
    shares = shamir.split(
        [state.self_seed, keys.private_bytes(state.mask_key)],
        xs=[state.setup.x_of(v) for v in holders],
        threshold=t,
    )
    context = state.setup.context
    out: dict[str, bytes] = {}
    for j, v in enumerate(holders):
        info = context.info(keys.SHARE_PURPOSE, state.agent_id, v)
        key = state.share_keys[v] = keys.agree(state.enc_key, peer_keys[v].enc, info=info)
        plaintext = shamir.share_to_bytes(shares[0, j]) + shamir.share_to_bytes(shares[1, j])
        out[v] = keys.encrypt(key, plaintext, associated_data=_ad(context, state.agent_id, v))
    return out


class UpdateSource(Protocol):
    """A client's update read block by block, never held whole (``collect_masked_input``):
    ``length`` values; ``read(start, out)`` writes values ``start … start + len(out) − 1``
    into ``out`` (float64)."""

    @property
    def length(self) -> int: ...

    def read(self, start: int, out: npt.NDArray[np.float64]) -> None: ...


@dataclass(frozen=True, slots=True)
class ArraySource:
    """An ``UpdateSource`` over a flat array (shape (d,), any float dtype)."""

    values: npt.NDArray[np.floating[Any]]

    @property
    def length(self) -> int:
        return int(self.values.shape[0])

    def read(self, start: int, out: npt.NDArray[np.float64]) -> None:
        np.copyto(out, self.values[start : start + out.shape[0]])


#: A source of distributed DP's integer noise: the next ``n`` words of the share, int64.
NoiseSource = Callable[[int], npt.NDArray[np.int64]]


def collect_masked_input(
    state: ClientState,
    ciphertexts: Mapping[str, bytes],
    *,
    update: npt.NDArray[np.floating[Any]] | UpdateSource,
    weight: int,
    rng: np.random.Generator | None = None,
    noise: npt.NDArray[np.int64] | NoiseSource | None = None,
) -> RingVector:
    """Stage ``collect_masked_input``: decrypt the shares others sent us, then mask.

    The vector is built ``SEGMENT_WORDS`` values at a time: a block of the update is read,
    quantized, noised and masked by every seed before the next (``MaskStream`` seeks), so
    besides the result this holds O(block) scratch, not float64 copies of the update.

    Args:
        ciphertexts: sender id → ciphertext addressed to us (senders form N(u) ∩ U2).
        update: shape (d,), float: this client's model delta; or an ``UpdateSource`` of d
            values (the trainer's reads trained − base from the model arrays).
        weight: num_examples (capped at ``max_weight``).
        noise: shape (d,), int64: distributed DP's integer noise share, added to the
            quantized update in the ring before masking (``agent.privacy``); or a
            ``NoiseSource`` drawing it block by block; none by default.

    Returns:
        y_u, shape (d + 1,), the ring dtype: quantized update ‖ weight, masked.

    Raises:
        ShareError: a ciphertext from a non-peer, or one that does not authenticate.
        ValueError: an update or noise of the wrong length, a NaN in the update.
    """
    move(state, Stage.COLLECT_MASKED_INPUT)
    setup_ = state.setup
    source = ArraySource(update) if isinstance(update, np.ndarray) else update
    if (isinstance(update, np.ndarray) and update.ndim != 1) or source.length != setup_.length:
        shape = update.shape if isinstance(update, np.ndarray) else (source.length,)
        raise ValueError(f"update has shape {shape}, expected ({setup_.length},)")
    if isinstance(noise, np.ndarray) and noise.shape != (setup_.length,):
        raise ValueError(f"noise has shape {noise.shape}, expected ({setup_.length},)")
    context = setup_.context
    for v, blob in ciphertexts.items():
        if v not in state.share_keys:
            raise ShareError(f"shares from {v}, who is not a neighbour that advertised")
        ad = _ad(context, v, state.agent_id)
        plain = keys.decrypt(state.share_keys[v], blob, associated_data=ad)
        if len(plain) != 2 * shamir.SHARE_BYTES:
            raise ShareError(f"shares from {v} have the wrong length")
        state.held[v] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
    params = setup_.params
    masks = [(state.self_seed, 1)]
    for v in sorted(state.held):
        seed = keys.agree(
            state.mask_key,
            state.peers[v].mask,
            info=context.info(keys.MASK_PURPOSE, state.agent_id, v),
        )
        masks.append((seed, sign(state.agent_id, v)))
    y = np.empty(setup_.length + 1, dtype=params.dtype)
    stream = MaskStream(len(y), params.dtype)
    quantizer = Quantizer(params, weight=weight, rng=rng)
    values = np.empty(min(SEGMENT_WORDS, setup_.length), np.float64)
    for start in range(0, setup_.length, SEGMENT_WORDS):
        block = y[start : min(start + SEGMENT_WORDS, setup_.length)]
        scratch = values[: block.shape[0]]
        source.read(start, scratch)
        quantizer.into(block, scratch)
        if isinstance(noise, np.ndarray):
            block += noise[start : start + len(block)].astype(params.dtype)  # two's complement
        elif noise is not None:
            block += noise(len(block)).astype(params.dtype)  # mod 2^m, as the masks
        stream.apply(block, masks, start)
    y[-1] = weight_word(weight, params)
    stream.apply(y[-1:], masks, setup_.length)
    return y


def unmask(
    state: ClientState, *, survivors: Collection[str], dropped: Collection[str]
) -> RevealedShares:
    """Stage ``unmask``: reveal seed shares of survivors and key shares of dropouts.

    Raises:
        SecAggAbortError: the aggregator's lists overlap, omit us, or name fewer survivors
            than the threshold (revealing anything then could expose an individual update).
    """
    move(state, Stage.UNMASK)
    alive, gone = set(survivors), set(dropped)
    if alive & gone:
        raise SecAggAbortError("inconsistent_view", "a client listed as survivor and dropout")
    if state.agent_id not in alive:
        raise SecAggAbortError("inconsistent_view", "we are not listed among the survivors")
    if len(alive) < state.setup.params.threshold:
        raise SecAggAbortError(
            "too_few_survivors",
            f"{len(alive)} survivors, threshold {state.setup.params.threshold}",
        )
    revealed = RevealedShares(
        self_seed={v: s for v, (s, _) in state.held.items() if v in alive},
        mask_key={v: k for v, (_, k) in state.held.items() if v in gone},
    )
    move(state, Stage.DONE)
    return revealed


def _ad(context: keys.RoundContext, sender: str, recipient: str) -> bytes:
    """Associated data of a share ciphertext: ordered (sender → recipient), not sorted."""
    return context.info(keys.SHARE_PURPOSE, sender, recipient) + b"\x00" + sender.encode()
