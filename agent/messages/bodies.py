"""Message bodies, one type per ``Kind`` (``BODY_TYPES``).

All are msgspec Structs decoded with strict types and value constraints, so a body that
decodes is well-formed: names match ``NAME_PATTERN``, counts are non-negative, digests are
64 hex characters. Semantic checks (the round is current, shapes match the global model)
belong to the role that handles the message.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from agent.messages.kinds import Kind
from agent.messages.tensors import Tensor

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
#: An agent id, federation id or plugin name: 1-64 of [A-Za-z0-9_-], starting alphanumeric.
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Version = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Scalar = bool | int | float | str
Params = Annotated[dict[str, Scalar], msgspec.Meta(max_length=256)]
Text = Annotated[str, msgspec.Meta(max_length=1024)]


class Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every body."""


class JoinRequest(Body, frozen=True):
    """agent → aggregator on ``join``: who I am, what I train, how much data I hold."""

    agent_id: Name
    plugin: Name
    num_examples: Count
    capabilities: Annotated[list[Name], msgspec.Meta(max_length=64)] = []


class JoinAccepted(Body, frozen=True):
    """aggregator → agent inbox: admitted; ``round`` is the aggregator's current round."""

    agent_id: Name
    round: Count


class JoinRejected(Body, frozen=True):
    """aggregator → agent inbox: not admitted, and why."""

    agent_id: Name
    reason: Text


class GlobalModel(Body, frozen=True):
    """aggregator → all (and a new agent's inbox): model ``version`` (rounds aggregated)."""

    version: Version
    sha256: Sha256
    tensors: Annotated[list[Tensor], msgspec.Meta(max_length=4096)]


class FitIns(Body, frozen=True):
    """aggregator → a cohort member's inbox: train on model ``model_version`` this round.

    ``deadline`` is seconds from receipt; an update later than that is not counted.
    """

    model_version: Version
    model_sha256: Sha256
    deadline: Annotated[float, msgspec.Meta(gt=0, le=86400)]
    config: Params = {}


class ModelUpdate(Body, frozen=True):
    """agent → aggregator on its update topic: the locally trained weights."""

    model_version: Version
    num_examples: Annotated[int, msgspec.Meta(ge=1, le=2**53)]
    tensors: Annotated[list[Tensor], msgspec.Meta(max_length=4096)]
    metrics: Params = {}


class EvaluateIns(Body, frozen=True):
    """aggregator → all on ``evaluate``: evaluate model ``model_version`` locally."""

    model_version: Version
    model_sha256: Sha256
    config: Params = {}


class EvaluateRes(Body, frozen=True):
    """agent → aggregator on its metrics topic: the result of an ``evaluate``."""

    model_version: Version
    loss: float
    num_examples: Count
    metrics: Params = {}


class Finish(Body, frozen=True):
    """aggregator → all: the federation is done; agents stay up, idle."""

    reason: Text
    final_version: Version
    model_sha256: Sha256


BODY_TYPES: dict[Kind, type[Body]] = {
    Kind.JOIN: JoinRequest,
    Kind.JOIN_ACCEPTED: JoinAccepted,
    Kind.JOIN_REJECTED: JoinRejected,
    Kind.MODEL_PARA: GlobalModel,
    Kind.FIT_INS: FitIns,
    Kind.MODEL_UPDATE: ModelUpdate,
    Kind.EVALUATE: EvaluateIns,
    Kind.METRICS: EvaluateRes,
    Kind.FINISH: Finish,
}
KIND_OF: dict[type[Body], Kind] = {t: k for k, t in BODY_TYPES.items()}
