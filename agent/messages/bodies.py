"""Message bodies, one type per ``Kind`` (``BODY_TYPES``).

All are msgspec Structs decoded with strict types and value constraints, so a body that
decodes is well-formed: names match ``NAME_PATTERN``, counts are non-negative, digests are
64 hex characters. Semantic checks (the round is current, shapes match the global model)
belong to the role that handles the message.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from agent.messages.base import NAME_PATTERN as NAME_PATTERN

# Re-exported: bodies is where every body type is found.
from agent.messages.base import Body as Body
from agent.messages.base import Key32 as Key32
from agent.messages.base import Name as Name
from agent.messages.base import Sha256 as Sha256
from agent.messages.base import Text as Text
from agent.messages.chunk_bodies import MAX_CHUNKS as MAX_CHUNKS
from agent.messages.chunk_bodies import ChunkAck as ChunkAck
from agent.messages.chunk_bodies import Manifest as Manifest
from agent.messages.enroll_bodies import EnrollReply as EnrollReply
from agent.messages.enroll_bodies import EnrollRequest as EnrollRequest
from agent.messages.enroll_bodies import RenewReply as RenewReply
from agent.messages.enroll_bodies import RenewRequest as RenewRequest
from agent.messages.kinds import Kind
from agent.messages.ledger_bodies import LedgerRecords as LedgerRecords
from agent.messages.ledger_bodies import LedgerRequest as LedgerRequest
from agent.messages.peer_bodies import PeerHello as PeerHello
from agent.messages.peer_bodies import PeerModel as PeerModel
from agent.messages.peer_bodies import Revocations as Revocations
from agent.messages.secagg_bodies import MAX_COHORT as MAX_COHORT
from agent.messages.secagg_bodies import AdvertiseKeys as AdvertiseKeys
from agent.messages.secagg_bodies import PeerKeys as PeerKeys
from agent.messages.secagg_bodies import RelayKeys as RelayKeys
from agent.messages.secagg_bodies import RelayShares as RelayShares
from agent.messages.secagg_bodies import ShareKeys as ShareKeys
from agent.messages.secagg_bodies import Unmask as Unmask
from agent.messages.secagg_bodies import UnmaskRequest as UnmaskRequest
from agent.messages.tensors import Tensor

Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Version = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Scalar = bool | int | float | str
Params = Annotated[dict[str, Scalar], msgspec.Meta(max_length=256)]
#: An aggregator incarnation or run id (empty: not said).
Incarnation = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,64}$")]


class JoinRequest(Body, frozen=True):
    """agent → aggregator on ``join``: who I am, what I train, how much data I hold."""

    agent_id: Name
    plugin: Name
    num_examples: Count
    capabilities: Annotated[list[Name], msgspec.Meta(max_length=64)] = []
    #: this join's attempt: drawn anew for each join (a new process, a reconnect, a new run
    #: or aggregator), kept by its retries, so a retry is answered without the model again
    attempt: Incarnation = ""
    #: the global model the agent holds (version and digest; None: none)
    held_version: Version | None = None
    held_sha256: Sha256 | None = None


class JoinAccepted(Body, frozen=True):
    """aggregator → agent inbox: admitted; ``round`` is the aggregator's current round.

    ``seal_key``: the aggregator's X25519 public key for this run; with identities on, the
    agent seals its updates to it (HPKE, RFC 9180).
    """

    agent_id: Name
    round: Count
    seal_key: Key32 | None = None
    #: the aggregator process that admitted the agent (``FederationStatus.incarnation``)
    incarnation: Incarnation = ""
    run_id: Incarnation = ""
    #: the ``JoinRequest.attempt`` answered
    attempt: Incarnation = ""
    #: the model in force when answered: an agent holding it keeps it (and no copy follows)
    version: Version | None = None
    sha256: Sha256 | None = None


class RejectCode(StrEnum):
    """Why a join was refused, for the agent's control flow (``JoinRejected.code``)."""

    PLUGIN_MISMATCH = "plugin_mismatch"  #: the federation trains another plugin
    REVOKED = "revoked"  #: the agent's certificate is revoked: it must stop retrying


class JoinRejected(Body, frozen=True):
    """aggregator → agent inbox: not admitted, and why (``reason`` for humans)."""

    agent_id: Name
    reason: Text
    code: RejectCode | None = None


class GlobalModel(Body, frozen=True):
    """aggregator → all (and a new agent's inbox): model ``version`` (rounds aggregated),
    with its signed, hash-chained round-ledger records (``ledger``)."""

    version: Version
    sha256: Sha256
    tensors: Annotated[list[Tensor], msgspec.Meta(max_length=4096)]
    #: its round-ledger records, oldest first (``agent.ledger``; empty: identities off)
    ledger: Annotated[list[bytes], msgspec.Meta(max_length=64)] = []


class MetricRange(Body, frozen=True):
    """One secure-metric slot of a SecAgg+ round: the fit metric ``name``, clipped to
    [``low``, ``high``] before it is masked (``agent.privacy.secure_metrics``)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    low: float
    high: float


class SecAggSetup(Body, frozen=True):
    """The SecAgg+ parameters of a round (``agent.secagg.params.SecAggParams``), its sorted
    ``cohort``, the 32-byte ``graph_seed`` and ``length`` d of the masked vector (the
    flattened model, then two words per ``metrics`` slot).

    ``metrics``: the secure-metric slots (their weighted means are all the aggregator learns
    of the cohort's fit metrics); ``metric_scale``: the amplitude a each slot's word spans
    in [0, a]; ``noise_stddev``: distributed DP, the standard deviation, in quantization
    steps, of the discrete Gaussian each member adds before masking (0: none);
    ``min_survivors``: distributed DP, a member reveals no share for an unmask with fewer
    survivors (the noise was calibrated for at least that many); ``norm_bound``: the L2
    norm each trainer clips its model delta to before quantizing (0: none), which the
    aggregator checks the unmasked mean against (``agent.robust.secure``).
    """

    cohort: Annotated[list[Name], msgspec.Meta(max_length=MAX_COHORT)]
    num_neighbours: Count
    threshold: Count
    clipping_range: Annotated[float, msgspec.Meta(gt=0)]
    quantization_bits: Annotated[int, msgspec.Meta(ge=1, le=62)]
    ring_bits: Annotated[int, msgspec.Meta(ge=32, le=64)]
    max_weight: Annotated[int, msgspec.Meta(ge=1, le=2**32)]
    graph_seed: Key32
    length: Annotated[int, msgspec.Meta(ge=1, le=2**40)]
    stage_timeout: Annotated[float, msgspec.Meta(gt=0, le=86400)]
    metrics: Annotated[list[MetricRange], msgspec.Meta(max_length=64)] = []
    metric_scale: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    noise_stddev: Annotated[float, msgspec.Meta(ge=0, le=2**40)] = 0.0
    min_survivors: Count = 0
    norm_bound: Annotated[float, msgspec.Meta(ge=0, le=1e30)] = 0.0


class FitIns(Body, frozen=True):
    """aggregator → a cohort member's inbox: train on model ``model_version`` this round.

    ``deadline`` is seconds from receipt; an update later than that is not counted. With
    ``secagg`` set the update goes through SecAgg+ (a ``masked_input``, not a
    ``model_update``).
    """

    model_version: Version
    model_sha256: Sha256
    deadline: Annotated[float, msgspec.Meta(gt=0, le=86400)]
    config: Params = {}
    secagg: SecAggSetup | None = None
    #: async SecAgg+ (FedBuff): train, keep the result and announce ``update_ready`` instead
    #: of sending it; a later ``fit_ins`` with ``secagg`` masks it in its buffer's round
    hold: bool = False


class ModelUpdate(Body, frozen=True):
    """agent → aggregator on its update topic: the locally trained weights, trained from
    model ``model_version`` (in async mode an older version than the one in force: its
    staleness τ is the difference)."""

    model_version: Version
    num_examples: Annotated[int, msgspec.Meta(ge=1, le=2**53)]
    tensors: Annotated[list[Tensor], msgspec.Meta(max_length=4096)]
    metrics: Params = {}


class UpdateReady(Body, frozen=True):
    """agent → aggregator on its update topic (async SecAgg+, FedBuff): trained from model
    ``base_version`` on ``num_examples`` examples, the update held for the secure round of the
    buffer it fills (the aggregator learns no more than this about it)."""

    base_version: Version
    num_examples: Annotated[int, msgspec.Meta(ge=1, le=2**53)]


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


class MaskedInput(Body, frozen=True):
    """SecAgg+ ``collect_masked_input``, agent → aggregator on its update topic: the masked
    vector (1-D, uint32 or uint64, d + 1 words) trained from ``model_version``.

    ``carried``: the trained model's integer arrays (a BatchNorm's ``num_batches_tracked``),
    in model order, beside the masked vector and in the clear to the aggregator (the body is
    sealed to it); never a float array (``codec.validate_body``); empty when the trainer
    reveals none (``agent.strategy.carried``)."""

    model_version: Version
    vector: Tensor
    carried: Annotated[list[Tensor], msgspec.Meta(max_length=4096)] = []


class Liveness(StrEnum):
    """What an agent says of itself on ``status/{agent_id}``."""

    ONLINE = "online"  # on every connect, then as a heartbeat
    OFFLINE = "offline"  # the last will (MQTT), or a clean stop


class RoundPhase(StrEnum):
    """What the aggregator is doing, in ``FederationStatus.phase``."""

    STARTING = "starting"
    WAITING_FOR_AGENTS = "waiting_for_agents"  # before round 1: fewer than wanted admitted
    TRAINING = "training"  # the cohort trains (plain or SecAgg+ fit)
    EVALUATING = "evaluating"  # federated evaluation of the new model
    FINISHED = "finished"  # the schedule ran out; ``finish`` was sent
    IDLE = "idle"  # a long-lived aggregator between runs: enrollment and status only


class AgentStatus(Body, frozen=True):
    """agent → all on ``status/{agent_id}`` (retained): ``online`` on every connect and as a
    heartbeat, ``offline`` as the last will (MQTT) or on a clean stop; ``detail`` is what
    the agent is doing (``idle``, ...); ``cert_expires``: its certificate's notAfter (s)."""

    state: Liveness
    detail: Text = ""
    model_version: Version | None = None
    cert_expires: float | None = None
    #: P2P: a random projection of the model (``agent.roles.peer.sketch``) and its accuracy
    sketch: Annotated[list[float], msgspec.Meta(max_length=64)] = []
    accuracy: float | None = None
    #: P2P: the peer stopped training (its steps taken, or every neighbour done)
    done: bool = False


class AgentSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One agent as the aggregator sees it, inside ``FederationStatus``: ``state`` is None
    while it never sent a status (it is then judged by its answers)."""

    state: Liveness | None
    detail: Text = ""
    last_seen: float | None = None
    admitted: bool = False
    revoked: bool = False
    cert_expires: float | None = None


class RoundSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The last finished round, inside ``FederationStatus``."""

    round: Count
    survivors: Annotated[list[Name], msgspec.Meta(max_length=MAX_COHORT)]
    dropouts: Annotated[list[Name], msgspec.Meta(max_length=MAX_COHORT)]
    accuracy: float | None = None
    loss: float | None = None
    seconds: float = 0.0


class FederationStatus(Body, frozen=True):
    """aggregator → all on ``federation_status`` (retained; re-sent periodically for NATS):
    the round, what the aggregator is doing (``phase``, and ``detail`` for humans, e.g.
    ``waiting for 3 agents``), every known agent, and the last round."""

    round: Count
    phase: RoundPhase
    detail: Text
    agents: Annotated[dict[Name, AgentSummary], msgspec.Meta(max_length=MAX_COHORT)]
    last_round: RoundSummary | None = None
    #: this aggregator process (new on every start): agents admitted by another rejoin
    incarnation: Incarnation = ""
    run_id: Incarnation = ""
    #: how often this incarnation's bus reconnected: a rise tells the trainers that what
    #: they published meanwhile may be lost (its node died), so they publish it again
    reconnects: Count = 0


BODY_TYPES: dict[Kind, type[Body]] = {
    Kind.JOIN: JoinRequest,
    Kind.JOIN_ACCEPTED: JoinAccepted,
    Kind.JOIN_REJECTED: JoinRejected,
    Kind.MODEL_PARA: GlobalModel,
    Kind.FIT_INS: FitIns,
    Kind.MODEL_UPDATE: ModelUpdate,
    Kind.UPDATE_READY: UpdateReady,
    Kind.EVALUATE: EvaluateIns,
    Kind.METRICS: EvaluateRes,
    Kind.FINISH: Finish,
    Kind.ADVERTISE_KEYS: AdvertiseKeys,
    Kind.SHARE_KEYS: ShareKeys,
    Kind.MASKED_INPUT: MaskedInput,
    Kind.UNMASK: Unmask,
    Kind.RELAY_KEYS: RelayKeys,
    Kind.RELAY_SHARES: RelayShares,
    Kind.UNMASK_REQUEST: UnmaskRequest,
    Kind.ENROLL: EnrollRequest,
    Kind.ENROLL_REPLY: EnrollReply,
    Kind.RENEW: RenewRequest,
    Kind.RENEW_REPLY: RenewReply,
    Kind.LEDGER_REQUEST: LedgerRequest,
    Kind.LEDGER_RECORDS: LedgerRecords,
    Kind.STATUS: AgentStatus,
    Kind.FEDERATION_STATUS: FederationStatus,
    Kind.MANIFEST: Manifest,
    Kind.CHUNK_ACK: ChunkAck,
    Kind.PEER_HELLO: PeerHello,
    Kind.PEER_MODEL: PeerModel,
    Kind.REVOCATIONS: Revocations,
}
KIND_OF: dict[type[Body], Kind] = {t: k for k, t in BODY_TYPES.items()}
