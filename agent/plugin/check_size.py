"""What a model costs on the bus: the ``model size`` line of ``fedbus plugin check``.

For the weights a plugin's ``get_weights`` returns (d values in all, of which d_avg are
floating-point and averaged; integer arrays are carried, ``agent.strategy.update``), per round
and per agent:

- **received**: the global model (``model_para``), once: its encoded message size, measured by
  encoding it (envelope and msgpack framing included; a signature and certificate add about
  a kilobyte with identities on);
- **sent**: in the clear, a ``model_update`` with the trained weights (the same tensors); under
  SecAgg+, a ``masked_input`` of d_avg + 1 ring words (uint32 for cohorts whose default
  parameters fit a 32-bit ring, else uint64; ``agent.secagg.params``) instead, plus the key
  stages' few kilobytes. Evaluation sends only scalars.

A message above the transport's per-message limit needs chunking; ``transport_plan`` is the
one function that says how it would travel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from agent.config import AgentConfig, SecAggConfig
from agent.messages import GlobalModel, encode
from agent.messages.bodies import MaskedInput
from agent.messages.tensors import digest, to_tensor, to_tensors
from agent.plugin.api import Weights, is_averaged

#: The per-message limit a default config gives (``AgentConfig.max_payload``).
DEFAULT_MAX_PAYLOAD: int = next(
    f.default for f in msgspec.structs.fields(AgentConfig) if f.name == "max_payload"
)
#: The cohort size the SecAgg+ estimate assumes (the demo's).
COHORT = 10


@dataclass(frozen=True, slots=True)
class TransportPlan:
    """How one message of ``nbytes`` travels: ``chunks`` pieces (1: whole); ``fits`` is
    False when it cannot travel with this build and config."""

    nbytes: int
    chunks: int
    fits: bool


def transport_plan(nbytes: int, max_payload: int) -> TransportPlan:
    """The one seam with the transport: a message of ``nbytes`` against ``max_payload``.

    This build has no chunked messages, so a message above ``max_payload`` cannot travel
    (``fits`` False, ``chunks`` how many pieces of ``max_payload`` it would take).
    """
    chunks = max(1, math.ceil(nbytes / max_payload))
    return TransportPlan(nbytes, chunks, chunks == 1)


@dataclass(frozen=True, slots=True)
class ModelSize:
    """A model's size and its traffic per round per agent (bytes).

    Attributes:
        parameters: d, values in all arrays; ``averaged``: d_avg, those averaged (float).
        tensor_bytes: the arrays' raw bytes.
        model_message: an encoded ``model_para`` (= a plain ``model_update``, metrics aside).
        masked_message: an encoded ``masked_input`` for a cohort of ``COHORT``.
        plain, secure: the plans of the plain round's largest message and the secure one's.
    """

    parameters: int
    averaged: int
    arrays: int
    tensor_bytes: int
    model_message: int
    masked_message: int
    plain: TransportPlan
    secure: TransportPlan

    def render(self) -> str:
        """One line for the report."""
        carried = self.parameters - self.averaged
        kept = f" ({carried:,} in integer arrays, carried)" if carried else ""

        def plan(p: TransportPlan) -> str:
            if p.chunks == 1:
                return "one message each"
            return f"needs {p.chunks} chunks: above max_payload" + ("" if p.fits else ", FAILS")

        return (
            f"{self.parameters:,} values{kept} in {self.arrays} arrays, "
            f"{self.tensor_bytes:,} bytes; per round per agent: plain "
            f"{self.model_message:,} in + {self.model_message:,} out ({plan(self.plain)}), "
            f"SecAgg+ {self.model_message:,} in + {self.masked_message:,} out "
            f"({plan(self.secure)})"
        )


def model_size(weights: Weights, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> ModelSize:
    """Measure ``weights`` (see the module docstring).

    Raises:
        ValueError: an array whose dtype cannot travel.
    """
    tensors = to_tensors(weights)
    body = GlobalModel(version=1, sha256=digest(tensors), tensors=tensors)
    model_message = len(encode(body, federation="check", round=1, sender="check"))
    d_avg = sum(int(a.size) for a in weights if is_averaged(a))
    word = SecAggConfig().params(COHORT).dtype
    one = MaskedInput(model_version=1, vector=to_tensor(np.zeros(1, word)))
    header: Any = len(encode(one, federation="check", round=1, sender="check"))
    masked_message = int(header) + d_avg * word.itemsize
    return ModelSize(
        parameters=sum(int(a.size) for a in weights),
        averaged=d_avg,
        arrays=len(weights),
        tensor_bytes=sum(len(t.data) for t in tensors),
        model_message=model_message,
        masked_message=masked_message,
        plain=transport_plan(model_message, max_payload),
        secure=transport_plan(max(model_message, masked_message), max_payload),
    )
