"""The SecAgg+ key-exchange and unmask bodies (Bell et al. 2020, §3; Bonawitz et al. 2017,
§4): keys advertised and relayed, share ciphertexts, the unmask request and its shares. The
masked input itself is ``bodies.MaskedInput`` (it rides the update topic)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from agent.messages.base import Body, Key32, Name

#: A share ciphertext: nonce ‖ ChaCha20-Poly1305(two 64-byte Shamir shares) ‖ tag.
Ciphertext = Annotated[bytes, msgspec.Meta(min_length=28, max_length=1024)]
#: One revealed Shamir share (16 field elements, little-endian uint32).
ShareBytes = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
#: The most members a SecAgg+ cohort, and so any relay map, may have.
MAX_COHORT = 100_000


class AdvertiseKeys(Body, frozen=True):
    """SecAgg+ ``advertise_keys``, agent → aggregator: this round's two X25519 public keys."""

    enc_key: Key32
    mask_key: Key32


class PeerKeys(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One neighbour's advertised keys, inside ``RelayKeys``."""

    enc_key: Key32
    mask_key: Key32


class RelayKeys(Body, frozen=True):
    """aggregator → agent inbox: the keys of the agent's neighbours that advertised."""

    keys: Annotated[dict[Name, PeerKeys], msgspec.Meta(max_length=MAX_COHORT)]


class ShareKeys(Body, frozen=True):
    """SecAgg+ ``share_keys``, agent → aggregator: one share ciphertext per neighbour."""

    ciphertexts: Annotated[dict[Name, Ciphertext], msgspec.Meta(max_length=MAX_COHORT)]


class RelayShares(Body, frozen=True):
    """aggregator → agent inbox: the share ciphertexts addressed to the agent, by sender."""

    ciphertexts: Annotated[dict[Name, Ciphertext], msgspec.Meta(max_length=MAX_COHORT)]


class UnmaskRequest(Body, frozen=True):
    """aggregator → the cohort, one broadcast on ``secagg/unmask_request``: who sent a masked
    input (``survivors``) and who shared keys but did not (``dropped``)."""

    survivors: Annotated[list[Name], msgspec.Meta(max_length=MAX_COHORT)]
    dropped: Annotated[list[Name], msgspec.Meta(max_length=MAX_COHORT)]


class Unmask(Body, frozen=True):
    """SecAgg+ ``unmask``, agent → aggregator: shares of survivors' self-mask seeds and of
    dropouts' mask keys, keyed by the secret's owner."""

    self_seed: Annotated[dict[Name, ShareBytes], msgspec.Meta(max_length=MAX_COHORT)]
    mask_key: Annotated[dict[Name, ShareBytes], msgspec.Meta(max_length=MAX_COHORT)]
