"""The bodies of serverless P2P averaging (``[aggregator] mode = "p2p"``, ARCHITECTURE.md §14).

The first two travel peer to peer on ``fl/{federation}/peer/{peer}/{agent_id}`` (``{peer}`` the
recipient, ``{agent_id}`` the sender), signed like every message; a ``peer_model`` body is
HPKE-sealed to the recipient's ``PeerHello.seal_key`` (``agent.messages.sealing``). The CA
host announces ``revocations`` to every peer on ``fl/{federation}/revocations``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from agent.messages.base import Body, Key32, Name
from agent.messages.tensors import Tensor

Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


class PeerHello(Body, frozen=True):
    """peer → one neighbour: the X25519 key to seal ``peer_model`` bodies to (kept in the
    peer's state directory; None with identities off), the sender's degree and version;
    ``reply``: answer with your own hello (sent on connect); ``done``: the sender took all its
    steps and sends no more models (do not wait for it); ``leaving``: the sender goes offline
    now (a clean stop: a duty cycle's off window, a shutdown), so do not wait for it until it
    sends again."""

    degree: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    version: Count
    seal_key: Key32 | None = None
    reply: bool = False
    done: bool = False
    leaving: bool = False


class PeerModel(Body, frozen=True):
    """peer → one neighbour, after each local step: the sender's model (``tensors``, in the
    plugin's order), its version (gossip steps it has taken), its degree (for the
    Metropolis-Hastings weight 1/(1 + max(d_i, d_j))) and its ``num_examples``."""

    version: Count
    degree: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    num_examples: Count
    tensors: Annotated[list[Tensor], msgspec.Meta(max_length=4096)]


class Revocations(Body, frozen=True):
    """aggregator host → every peer on ``revocations`` (retained; re-sent every heartbeat
    for NATS, and at once after a revocation): the agents revoked now and the federation's
    CRL (RFC 5280 §5, DER, signed by the CA: every revoked or superseded serial). A peer
    refuses any message signed by a certificate the CRL lists and stops waiting for, and
    mixing, the named agents (``agent.roles.peer.revocation``)."""

    crl: Annotated[bytes, msgspec.Meta(max_length=16 * 2**20)]
    agents: Annotated[list[Name], msgspec.Meta(max_length=1_000_000)]
