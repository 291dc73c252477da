"""Message kinds: the routing key of every envelope (FederatedScope's vocabulary, extended)."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """What a message is. Each kind has exactly one body type (``agent.messages.bodies``)."""

    JOIN = "join"
    JOIN_ACCEPTED = "join_accepted"
    JOIN_REJECTED = "join_rejected"
    MODEL_PARA = "model_para"
    FIT_INS = "fit_ins"
    MODEL_UPDATE = "model_update"
    # Buffered async SecAgg+ (FedBuff): trained, holding the update for a buffer's round
    UPDATE_READY = "update_ready"
    EVALUATE = "evaluate"
    METRICS = "metrics"
    FINISH = "finish"
    # SecAgg+ stages (agent → aggregator, on ``secagg/{stage}/{agent_id}`` or the update topic)
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"
    # ... and the aggregator's relays to one agent's inbox
    RELAY_KEYS = "relay_keys"
    RELAY_SHARES = "relay_shares"
    UNMASK_REQUEST = "unmask_request"
    # Enrollment (unsigned: the device has no identity yet; see agent.identity.enrollment)
    ENROLL = "enroll"
    ENROLL_REPLY = "enroll_reply"
    # Renewal (signed with the certificate being renewed; the answer comes to the inbox)
    RENEW = "renew"
    RENEW_REPLY = "renew_reply"
    # Ledger catch-up (a trainer that missed more records than a model message carries)
    LEDGER_REQUEST = "ledger_request"
    LEDGER_RECORDS = "ledger_records"
    # Liveness: each agent's retained online/offline, and the aggregator's summary
    STATUS = "status"
    FEDERATION_STATUS = "federation_status"
    # A body larger than the chunk size travels as a signed manifest plus unsigned chunks
    # (``agent.messages.chunks``); the manifest names the kind it carries.
    MANIFEST = "manifest"
    # ... and the receiver's flow control: how many chunks of a transfer it has kept
    CHUNK_ACK = "chunk_ack"
    # Serverless P2P averaging (``agent.messages.peer_bodies``): peer → one neighbour
    PEER_HELLO = "peer_hello"
    PEER_MODEL = "peer_model"
    # aggregator host → every peer: the federation's CRL (the peers drop revoked senders)
    REVOCATIONS = "revocations"


#: Kinds exempt from the timestamp window and the duplicate check: idempotent state
#: assertions whose will copy is signed at connect time (``status``).
TIMELESS_KINDS = frozenset({Kind.STATUS})
