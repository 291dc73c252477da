"""The message contract: kinds, bodies, the envelope, the codec (with its signed and sealed
forms: ``signing``, ``sealing``) and the topic table."""

from agent.messages.bodies import (
    BODY_TYPES,
    Body,
    EvaluateIns,
    EvaluateRes,
    Finish,
    FitIns,
    GlobalModel,
    JoinAccepted,
    JoinRejected,
    JoinRequest,
    ModelUpdate,
)
from agent.messages.codec import decode, encode
from agent.messages.envelope import Envelope, Message
from agent.messages.kinds import Kind
from agent.messages.tensors import Tensor

__all__ = [
    "BODY_TYPES",
    "Body",
    "Envelope",
    "EvaluateIns",
    "EvaluateRes",
    "Finish",
    "FitIns",
    "GlobalModel",
    "JoinAccepted",
    "JoinRejected",
    "JoinRequest",
    "Kind",
    "Message",
    "ModelUpdate",
    "Tensor",
    "decode",
    "encode",
]
