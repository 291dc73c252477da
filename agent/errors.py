"""The fedbus exception tree.

::

    FedbusError
    ├── ConfigError                 a config file or value that cannot work
    ├── TransportError              the bus: connection, publish, subscribe
    │   ├── NotConnectedError       publish while no broker session is up
    │   ├── PublishRefusedError     the broker refused a publish (MQTT PUBACK >= 0x80, NATS
    │   │                           permissions violation): it was not sent
    │   ├── ConnectRefusedError     the broker refused our connection on purpose (revoked
    │   │                           certificate, not authorized)
    │   └── BusTimeoutError         also an asyncio.TimeoutError
    ├── ProtocolError               a message that must be dropped
    │   ├── DecodeError             malformed bytes, wrong types, bad tensor
    │   ├── OversizedError          larger than the receiver accepts
    │   ├── WrongFederationError    addressed to another federation
    │   ├── DuplicateMessageError   a message id seen before
    │   ├── StaleRoundError         for a round that is not (or no longer) current
    │   ├── WrongTopicError         a kind that does not travel on that topic
    │   ├── SenderMismatchError     a per-agent topic carrying another agent's message
    │   ├── UnexpectedKindError     a kind this role has no listener for
    │   ├── UnsignedError           no signature where identities are on
    │   ├── UnknownSignerError      a certificate not issued by the federation CA (or expired)
    │   ├── SignerMismatchError     signed by someone else than the envelope's sender
    │   ├── BadSignatureError       a signature that does not verify (a tampered message)
    │   ├── StaleTimestampError     a timestamp outside the clock-skew window (a replay)
    │   ├── WrongRoleError          a sender whose role may not publish on that topic
    │   ├── RevokedSenderError      a revoked agent
    │   ├── SealError               a body that should be sealed and is not, or does not open
    │   ├── ChunkError              a chunked transfer refused (agent.runtime.reassembly)
    │   │   ├── UnknownTransferError    a chunk of no transfer open on its topic
    │   │   ├── ChunkMismatchError      a chunk that does not match its manifest
    │   │   ├── OverBudgetError         a transfer larger than the receiver holds
    │   │   ├── TransferTimeoutError    a transfer whose chunks did not all come in time
    │   │   └── SupersededError         a transfer replaced by a newer one from its sender
    │   ├── RefusedError            a well-formed update or metrics result out of bounds
    │   └── LedgerError             a round-ledger record that does not verify or chain
    │       ├── LedgerRecordError   unreadable, non-canonical, or badly signed
    │       └── LedgerChainError    does not chain to the one before (dropped, reordered)
    │           └── LedgerBehindError   begins after the head held: fetch the records between
    ├── PluginError                 a plugin that cannot be loaded or misbehaves
    ├── AgentRevokedError           the aggregator says this agent is revoked: it stops
    │   └── BrokerRefusedError      the broker refuses this agent for good: the bus stops
    ├── CryptoError                 secure aggregation or identity: a check that failed
    │   ├── StageError              a SecAgg+ stage run out of order
    │   ├── ShareError              a Shamir share or share ciphertext that does not check out
    │   └── IdentityError           a key, certificate, CSR or token that does not check out
    └── RoundError                  a round that cannot complete (e.g. no update arrived)
        ├── SecAggAbortError        SecAgg+ cannot unmask (too few shares or survivors)
        └── ModelRejectedError      a new global model that fails the guard (not published)

Adapters translate third-party exceptions into these at their boundary, always with
``raise ... from exc``. Every ``ProtocolError`` carries a short machine-readable ``reason``
that the receive loop logs when it drops the message.
"""

from __future__ import annotations

import asyncio


class FedbusError(Exception):
    """Root of every error fedbus raises on purpose."""


class ConfigError(FedbusError):
    """A configuration that cannot work; the message says which key and why."""


class TransportError(FedbusError):
    """The bus failed: connecting, publishing or subscribing."""


class NotConnectedError(TransportError):
    """A publish was attempted while no broker session was up (and none came in time)."""


class ConnectRefusedError(TransportError):
    """The broker refused a connection on purpose. ``reason`` (``agent.bus.refusal.Refusal``)
    is ``certificate_revoked`` (mosquitto's CRL lists our certificate: the TLS alert
    ``certificate revoked``; final) or ``not_authorized``
    (NATS ``Authorization Violation``, MQTT CONNACK 0x86 / 0x87: revoked, superseded, or an
    enrollment the broker does not know yet; retried for ``BusSettings.refusal_grace``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class PublishRefusedError(TransportError):
    """The broker refused a publish (its ACL, a quota): the message was not delivered.

    MQTT 5: a PUBACK reason code >= 0x80 (0x87 "Not authorized"); NATS: a ``-ERR
    'Permissions Violation for Publish to …'`` before the flush's PONG.
    """

    def __init__(self, topic: str, code: str) -> None:
        super().__init__(f"the broker refused the publish to {topic!r}: {code}")
        self.topic = topic
        self.code = code


class BusTimeoutError(TransportError, asyncio.TimeoutError):
    """A bus operation did not complete in time."""


class ProtocolError(FedbusError):
    """A message that must be dropped. ``reason`` is the snake_case word that is logged."""

    reason = "protocol_error"


class DecodeError(ProtocolError):
    """Bytes that are not a valid envelope, body or tensor."""

    reason = "malformed"


class OversizedError(ProtocolError):
    """A payload larger than the receiver's limit."""

    reason = "oversized"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class WrongFederationError(ProtocolError):
    """A message whose envelope names another federation."""

    reason = "wrong_federation"


class DuplicateMessageError(ProtocolError):
    """A message id that was already processed (QoS 1 redelivery or a replay)."""

    reason = "duplicate"


class StaleRoundError(ProtocolError):
    """A message for a round that is not the current one."""

    reason = "stale_round"


class WrongTopicError(ProtocolError):
    """A kind that does not travel on the topic it arrived on."""

    reason = "wrong_topic"


class SenderMismatchError(ProtocolError):
    """A per-agent topic whose agent id differs from the envelope's sender."""

    reason = "sender_mismatch"


class UnexpectedKindError(ProtocolError):
    """A message kind that this role has no listener for."""

    reason = "unexpected_kind"


class UnsignedError(ProtocolError):
    """A message without a signature where every message must be signed."""

    reason = "unsigned"


class UnknownSignerError(ProtocolError):
    """A signature by a certificate the federation CA did not issue, or no longer valid."""

    reason = "unknown_signer"


class SignerMismatchError(ProtocolError):
    """A message signed by one identity but sent in the name of another."""

    reason = "signer_mismatch"


class BadSignatureError(ProtocolError):
    """A signature that does not verify: the message was altered."""

    reason = "bad_signature"


class StaleTimestampError(ProtocolError):
    """A timestamp too far from our clock: a replay, or a badly set clock."""

    reason = "stale_timestamp"


class WrongRoleError(ProtocolError):
    """A sender whose role may not publish on the topic (a trainer posing as aggregator)."""

    reason = "wrong_role"


class RevokedSenderError(ProtocolError):
    """A sender whose enrollment was revoked."""

    reason = "revoked"


class SealError(ProtocolError):
    """A body that must be sealed to the aggregator and is not, or that does not open."""

    reason = "unsealable"


class ChunkError(ProtocolError):
    """A chunk or manifest refused by the reassembly (``agent.runtime.reassembly``)."""

    reason = "bad_chunk"


class UnknownTransferError(ChunkError):
    """A chunk whose transfer id names no transfer open on the topic it came on (its
    manifest never came, was refused, or came on another sender's topic)."""

    reason = "unknown_transfer"


class ChunkMismatchError(ChunkError):
    """A chunk whose index or hash does not match its manifest (tampered or forged)."""

    reason = "chunk_mismatch"


class OverBudgetError(ChunkError):
    """A manifest announcing more bytes than the receiver's reassembly budget has left."""

    reason = "over_budget"


class TransferTimeoutError(ChunkError):
    """A transfer whose chunks did not all arrive before its deadline."""

    reason = "transfer_timeout"


class SupersededError(ChunkError):
    """A transfer dropped because its sender began another on the same topic."""

    reason = "superseded"


class RefusedError(ProtocolError):
    """A well-formed update or evaluation result that the aggregator refuses because it is out
    of the bounds one device may have (``agent.robust``). ``reason`` names the bound
    (``not_finite``, ``weight_above_declared``, ``norm_above_bound``, ...)."""

    reason = "refused"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class LedgerError(ProtocolError):
    """A round-ledger record (``agent.ledger``) that cannot be trusted."""

    reason = "ledger_invalid"


class LedgerRecordError(LedgerError):
    """A record that does not decode canonically, or whose aggregator signature or
    certificate does not verify (a tampered byte)."""

    reason = "ledger_bad_record"


class LedgerChainError(LedgerError):
    """A record whose index or previous-record hash does not follow the record before it
    (a record dropped, reordered or forked), or a model with no record that reaches the
    ledger head this agent holds."""

    reason = "ledger_broken"


class LedgerBehindError(LedgerChainError):
    """A model whose records begin after the ledger head this agent holds: it missed more
    records than a model message carries, and asks the aggregator for the ones between
    (``roles.trainer.catchup``) before it takes the model."""

    reason = "ledger_behind"


class PluginError(FedbusError):
    """A plugin that cannot be found, loaded, or that returned something invalid."""


class RoundError(FedbusError):
    """A round that cannot complete."""


class SecAggAbortError(RoundError):
    """A SecAgg+ round that must abort; the previous global model stays in force.

    ``reason`` is the snake_case word that is logged (``too_few_survivors``,
    ``too_few_shares``, ...).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"secure aggregation aborted ({reason}): {detail}")
        self.reason = reason


class AgentRevokedError(FedbusError):
    """The aggregator says this agent is revoked: it stops (exit status ``exit_code``, which
    systemd units list in ``RestartPreventExitStatus=``)."""

    exit_code = 78  # EX_CONFIG (sysexits.h): retrying cannot help


class BrokerRefusedError(AgentRevokedError):
    """The broker refuses this agent for good (a revoked certificate, or ``not_authorized``
    for longer than ``BusSettings.refusal_grace``): the bus stops reconnecting and its
    ``messages()`` raises this, so the role stops with exit status 78. ``reason`` as
    ``ConnectRefusedError``'s."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ModelRejectedError(RoundError):
    """A new global model that fails the model guard (``agent.robust.guard``): it is never
    published and the model in force stays. ``reason``: ``not_finite`` or
    ``change_above_bound``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"new model rejected ({reason}): {detail}")
        self.reason = reason


class CryptoError(FedbusError):
    """A cryptographic or secure-aggregation check that failed."""


class StageError(CryptoError):
    """A SecAgg+ stage function called in the wrong stage (``stage`` → ``wanted``)."""

    def __init__(self, stage: str, wanted: str) -> None:
        super().__init__(f"SecAgg+ cannot move from stage {stage!r} to {wanted!r}")
        self.stage = stage
        self.wanted = wanted


class ShareError(CryptoError):
    """A share ciphertext that does not decrypt, names the wrong parties, or a Shamir share
    set that does not reconstruct a valid secret."""


class IdentityError(CryptoError):
    """A key, certificate, CSR, token or enrollment that does not check out. ``reason`` is
    a snake_case word (``expired``, ``unknown_issuer``, ``bad_token``, ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
