"""The bodies of serverless P2P averaging (``[aggregator] mode = "p2p"``, ARCHITECTURE.md §14).

Both travel peer to peer on ``fl/{federation}/peer/{peer}/{agent_id}`` (``{peer}`` the
recipient, ``{agent_id}`` the sender), signed like every message; a ``peer_model`` body is
HPKE-sealed to the recipient's ``PeerHello.seal_key`` (``agent.messages.sealing``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from agent.messages.base import Body, Key32
from agent.messages.tensors import Tensor

Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


class PeerHello(Body, frozen=True):
    """peer → one neighbour: the X25519 key to seal ``peer_model`` bodies to (kept in the
    peer's state directory; None with identities off), the sender's degree and version;
    ``reply``: answer with your own hello (sent on connect); ``done``: the sender took all its
    steps and sends no more models (do not wait for it)."""

    degree: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    version: Count
    seal_key: Key32 | None = None
    reply: bool = False
    done: bool = False


class PeerModel(Body, frozen=True):
    """peer → one neighbour, after each local step: the sender's model (``tensors``, in the
    plugin's order), its version (gossip steps it has taken), its degree (for the
    Metropolis-Hastings weight 1/(1 + max(d_i, d_j))) and its ``num_examples``."""

    version: Count
    degree: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    num_examples: Count
    tensors: Annotated[list[Tensor], msgspec.Meta(max_length=4096)]
