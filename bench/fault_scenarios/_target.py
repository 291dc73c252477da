"""The target of ``mutation.py`` (not a scenario module): a real ``Aggregator`` (identities
on: a CA, the aggregator's and two agents' certificates) on an in-memory bus, with a plain
round and an evaluation open, and the valid seed messages of ``agent-1``."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent.bus.base import BusMessage, BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.config import AgentConfig, AggregatorConfig, IdentityConfig, PluginConfig
from agent.identity import ca, pem
from agent.messages import topics
from agent.messages.bodies import (
    KIND_OF,
    AdvertiseKeys,
    AgentStatus,
    Body,
    EvaluateRes,
    JoinRequest,
    Liveness,
    MaskedInput,
    ModelUpdate,
    ShareKeys,
    Unmask,
)
from agent.messages.codec import decode, encode_envelope
from agent.messages.envelope import Envelope
from agent.messages.kinds import Kind
from agent.messages.sealing import SEALED_KINDS, seal, seal_info
from agent.messages.signing import Signer
from agent.messages.tensors import to_tensor, to_tensors
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.plain_round import PlainRound
from agent.roles.aggregator.secure_round import SecureRound
from agent.secagg import server
from agent.secagg.keys import RoundContext
from agent.secagg.params import resolve
from agent.secagg.state import PublicKeys, Setup, Stage

FED, AGENT, OTHER = "fed", "agent-1", "agent-2"
#: The SecAgg+ cohort of the secure rounds the target opens (sorted).
COHORT = (AGENT, OTHER, "agent-3")
SECURE_STAGES = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.COLLECT_MASKED_INPUT,
    Stage.UNMASK,
)
MODEL = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
MSGPACK = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class Seed:
    """A valid message: its topic, body and kind."""

    topic: str
    body: Body

    @property
    def kind(self) -> Kind:
        return KIND_OF[type(self.body)]


def _identity(authority: ca.CertificateAuthority, agent_id: str, role: Role, where: Path) -> Any:
    key, cert = ca.issue(authority, agent_id, role=role)
    pem.write_private_key(where / f"{agent_id}.key", key)
    pem.write_pem(where / f"{agent_id}.pem", cert)
    pem.write_pem(where / "ca.pem", authority.cert)
    config = IdentityConfig(
        cert_file=where / f"{agent_id}.pem",
        key_file=where / f"{agent_id}.key",
        ca_file=where / "ca.pem",
    )
    return config, Signer(key, cert)


class Target:
    """The aggregator under test and what it takes to write valid messages to it."""

    def __init__(
        self, aggregator: Aggregator, signers: dict[str, Signer], seal_to: X25519PublicKey
    ):
        self.aggregator = aggregator
        self.signers = signers
        self.seal_to = seal_to

    @classmethod
    @contextlib.asynccontextmanager
    async def create(cls, where: Path) -> AsyncIterator[Target]:
        authority = ca.init_ca(FED)
        agg_identity, _ = _identity(authority, "aggregator", Role.AGGREGATOR, where)
        signers = {a: _identity(authority, a, Role.TRAINER, where)[1] for a in (AGENT, OTHER)}
        config = AgentConfig(
            role=Role.AGGREGATOR,
            agent_id="aggregator",
            federation=FED,
            bus_url="mem://",
            state_dir=where / "aggregator",
            plugin=PluginConfig(name="toy"),
            identity=agg_identity,
            aggregator=AggregatorConfig(min_fit_clients=1, min_available_clients=1),
        )
        broker = MemoryBroker()
        async with (
            MemoryBus(broker, BusSettings(client_id="aggregator")) as bus,
            MemoryBus(broker, BusSettings(client_id=AGENT)) as inbox,
        ):
            aggregator = Aggregator(
                config=config, bus=bus, plugin_name="toy", initial_weights=MODEL
            )
            await inbox.subscribe(topics.INBOX.format(FED, AGENT))
            target = cls(aggregator, signers, X25519PublicKey.from_public_bytes(bytes(32)))
            join = JoinRequest(agent_id=AGENT, plugin="toy", num_examples=10)
            await target.dispatch(topics.JOIN.format(FED), target.build(join))
            async for raw in inbox.messages():  # join_accepted carries the run's seal key
                reply = decode(raw.payload)
                if reply.kind is Kind.JOIN_ACCEPTED:
                    target.seal_to = X25519PublicKey.from_public_bytes(reply.body.seal_key)
                    break
            target.reopen()
            yield target

    def reopen(self, rng: random.Random | None = None) -> None:
        """Open a round 0 and an evaluation of model 0 (as a round would): a plain round, or
        (half the time with ``rng``) a SecAgg+ round collecting a random stage."""
        fit, evaluation = self.aggregator.fit, self.aggregator._evaluation
        fit._secure = None
        if rng is not None and rng.random() < 0.5:
            fit._secure = self._secure_round(rng.choice(SECURE_STAGES))
        model = self.aggregator.global_state
        fit._plain = PlainRound(
            cohort=frozenset({AGENT, OTHER}),
            model=model,
            alive=lambda _: True,
            declared=self.aggregator.admission.declared,
        )
        evaluation._version = model.version
        evaluation._evaluators = frozenset({AGENT, OTHER})
        evaluation._results.clear()

    def _secure_round(self, stage: Stage) -> SecureRound:
        """A SecAgg+ round of ``COHORT`` (k = 2, t = 2, d = 8) whose server state was walked
        to ``stage`` with placeholder keys, ciphertexts and inputs."""
        setup = Setup(RoundContext(FED, 0), resolve(len(COHORT)), COHORT, os.urandom(32), 8)
        secure = SecureRound(
            outbox=self.aggregator._outbox,
            setup=setup,
            stage_timeout=1.0,
            input_deadline=time.monotonic() + 1.0,
            model_version=0,
            metrics=self.aggregator.metrics,
        )
        state, order = secure.state, SECURE_STAGES.index(stage)
        if order >= 1:
            for a in COHORT:
                server.receive_keys(state, a, PublicKeys(os.urandom(32), os.urandom(32)))
            server.close_advertise(state)
        if order >= 2:
            for a in COHORT:
                peers = state.graph[a] & state.keys.keys()
                server.receive_shares(state, a, {v: os.urandom(156) for v in peers})
            server.close_share_keys(state)
        if order >= 3:
            for a in COHORT:
                server.receive_masked_input(state, a, state.setup.params.zeros(9))
            server.close_collect(state)
        return secure

    async def dispatch(self, topic: str, payload: bytes) -> bool:
        return await self.aggregator.dispatcher.dispatch(BusMessage(topic, payload))

    def seeds(self) -> list[Seed]:
        update = topics.UPDATE.format(FED, AGENT)
        return [
            Seed(
                topics.JOIN.format(FED), JoinRequest(agent_id=AGENT, plugin="toy", num_examples=10)
            ),
            Seed(
                topics.STATUS.format(FED, AGENT), AgentStatus(state=Liveness.ONLINE, detail="idle")
            ),
            Seed(
                update,
                ModelUpdate(
                    model_version=0,
                    num_examples=10,
                    tensors=to_tensors([a + 0.1 for a in MODEL]),
                    metrics={"train_loss": 0.5},
                ),
            ),
            Seed(
                topics.METRICS.format(FED, AGENT),
                EvaluateRes(model_version=0, loss=0.3, num_examples=5, metrics={"accuracy": 0.9}),
            ),
            Seed(
                topics.SECAGG_ADVERTISE.format(FED, AGENT),
                AdvertiseKeys(enc_key=os.urandom(32), mask_key=os.urandom(32)),
            ),
            Seed(
                topics.SECAGG_SHARE.format(FED, AGENT),
                ShareKeys(ciphertexts={OTHER: os.urandom(156), "agent-3": os.urandom(156)}),
            ),
            Seed(update, MaskedInput(model_version=0, vector=to_tensor(np.zeros(9, np.uint32)))),
            Seed(
                topics.SECAGG_UNMASK.format(FED, AGENT),
                Unmask(self_seed={OTHER: os.urandom(64)}, mask_key={}),
            ),
        ]

    def envelope(self, message: Body, /, **fields: Any) -> Envelope:
        """A fresh envelope of ``body`` from agent-1 (sealed where its kind is), ``fields``
        overriding any envelope field (``data=`` the body bytes before sealing)."""
        kind = fields.pop("kind", KIND_OF[type(message)])
        data = fields.pop("data", None)
        data = MSGPACK.encode(message) if data is None else data
        base: dict[str, Any] = {
            "kind": kind,
            "federation": FED,
            "round": 0,
            "sender": AGENT,
            "message_id": os.urandom(16),
            "timestamp": time.time(),
            "body": data,
        }
        base.update(fields)
        if kind in SEALED_KINDS and fields.get("sealed") is not False and "body" not in fields:
            info = seal_info(
                federation=base["federation"], round=base["round"], sender=base["sender"], kind=kind
            )
            base["body"], base["sealed"] = seal(data, self.seal_to, info), True
        return Envelope(**base)

    def build(self, message: Body, /, *, signer: str = AGENT, **fields: Any) -> bytes:
        return self.signers[signer].sign(encode_envelope(self.envelope(message, **fields)))
