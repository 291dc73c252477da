"""The target and the mutation operators of ``mutation.py`` (not a scenario module).

``Target``: a real ``Aggregator`` (identities on: a CA, the aggregator's and two agents'
certificates) on an in-memory bus, with a plain round and an evaluation open, and the valid
seed messages of ``agent-1``. ``mutate``: one mutated (topic, payload) from a random seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Callable
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
from agent.messages.signing import MAGIC, Signed, Signer
from agent.messages.tensors import to_tensor, to_tensors
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.plain_round import PlainRound

FED, AGENT, OTHER = "fed", "agent-1", "agent-2"
MODEL = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
_msgpack = msgspec.msgpack.Encoder()


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

    def reopen(self) -> None:
        """Open a plain round of round 0 and an evaluation of model 0 (as a round would)."""
        fit, evaluation = self.aggregator.fit, self.aggregator._evaluation
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
                ShareKeys(ciphertexts={OTHER: os.urandom(156)}),
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
        data = _msgpack.encode(message) if data is None else data
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


Mutator = Callable[[random.Random, Seed, list[Seed], Target], tuple[str, bytes]]


def _flip(rng: random.Random, data: bytes, bits: int) -> bytes:
    out = bytearray(data)
    for _ in range(bits):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _bytes_level(rng: random.Random, seed: Seed, seeds: list[Seed], t: Target) -> tuple[str, bytes]:
    payload = t.build(seed.body)
    op = rng.randrange(5)
    if op == 0:
        return seed.topic, _flip(rng, payload, rng.choice([1, 1, 2, 8]))
    if op == 1:
        return seed.topic, payload[: rng.randrange(len(payload))]
    if op == 2:
        return seed.topic, payload + rng.randbytes(rng.randrange(1, 64))
    if op == 3:
        i = rng.randrange(len(payload))
        return seed.topic, payload[:i] + rng.randbytes(rng.randrange(1, 16)) + payload[i:]
    other = t.build(rng.choice(seeds).body)
    cut = rng.randrange(min(len(payload), len(other)))
    return seed.topic, payload[:cut] + other[cut:]


def _envelope_level(
    rng: random.Random, seed: Seed, seeds: list[Seed], t: Target
) -> tuple[str, bytes]:
    choices: list[dict[str, Any]] = [
        {"kind": rng.choice(list(Kind))},
        {"round": rng.choice([1, 2, 2**31, 2**31 + 1, 2**53, -1])},
        {"sender": rng.choice([OTHER, "aggregator", "x" * 65, "", "../a"])},
        {"federation": rng.choice(["other", "", "f" * 100])},
        {
            "timestamp": rng.choice(
                [0.0, time.time() - 10_000, time.time() + 10_000, float("nan"), float("inf")]
            )
        },
        {"sealed": False, "body": _msgpack.encode(seed.body)},
        {"sealed": True, "body": rng.randbytes(rng.randrange(0, 200))},
        {"v": rng.choice([0, 2, 255])},
        {"body": rng.randbytes(rng.randrange(0, 300)), "sealed": False},
        {"data": _msgpack.encode(rng.choice(seeds).body)},
        {"data": rng.randbytes(rng.randrange(0, 300))},
    ]
    fields = rng.choice(choices)
    return seed.topic, t.build(seed.body, **fields)


def _tweak(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """``value`` with one leaf or container changed somewhere inside."""
    if isinstance(value, dict) and value and depth < 4 and rng.random() < 0.8:
        key = rng.choice(list(value))
        out = dict(value)
        if rng.random() < 0.15:
            out.pop(key)
        elif rng.random() < 0.1:
            out["extra_" + str(rng.randrange(9))] = 1
        else:
            out[key] = _tweak(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and depth < 4 and rng.random() < 0.8:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        out_list[i] = _tweak(rng, out_list[i], depth + 1)
        return out_list
    return rng.choice(
        [
            None,
            True,
            -1,
            0,
            2**53 + 1,
            2**63,
            1e308,
            float("nan"),
            float("inf"),
            -0.0,
            "",
            "x" * 2000,
            "\u0000",
            b"",
            rng.randbytes(rng.randrange(1, 40)),
            [],
            {},
            [1, 2, 3],
            {"a": 1},
            value if not isinstance(value, bytes) else value[: len(value) // 2],
        ]
    )


def _body_level(rng: random.Random, seed: Seed, seeds: list[Seed], t: Target) -> tuple[str, bytes]:
    tree = msgspec.msgpack.decode(_msgpack.encode(seed.body))
    data = _msgpack.encode(_tweak(rng, tree))
    return seed.topic, t.build(seed.body, data=data)


def _signature_level(
    rng: random.Random, seed: Seed, seeds: list[Seed], t: Target
) -> tuple[str, bytes]:
    envelope = encode_envelope(t.envelope(seed.body))
    mine, theirs = t.signers[AGENT], t.signers[OTHER]
    op = rng.randrange(6)
    if op == 0:
        return seed.topic, theirs.sign(envelope)  # signed by agent-2 as agent-1
    signed = msgspec.msgpack.decode(mine.sign(envelope), type=Signed)
    cert, signature = signed.cert, signed.signature
    if op == 1:
        cert = theirs.der
    elif op == 2:
        cert = _flip(rng, cert, 1)
    elif op == 3:
        signature = rng.randbytes(rng.randrange(0, 160))
    elif op == 4:
        signature = _flip(rng, signature, 1)
    else:
        return seed.topic, envelope  # unsigned
    return seed.topic, _msgpack.encode(Signed(MAGIC, envelope, cert, signature))


def _topic_level(rng: random.Random, seed: Seed, seeds: list[Seed], t: Target) -> tuple[str, bytes]:
    topic = rng.choice(
        [s.topic for s in seeds]
        + [
            topics.UPDATE.format(FED, OTHER),
            topics.INBOX.format(FED, AGENT),
            topics.FINISH.format(FED),
            "fl/other/join",
            "fl/fed",
            "",
            "fl/fed/agent/" + "x" * 300,
        ]
    )
    return topic, t.build(seed.body)


def _semantic(rng: random.Random, seed: Seed, seeds: list[Seed], t: Target) -> tuple[str, bytes]:
    """A well-formed, correctly signed and sealed message with hostile values in range of
    its schema: what an enrolled attacker sends to reach the round's own checks."""
    nan = float("nan")
    weights = [np.full_like(a, rng.choice([nan, 3e38, -3e38, 1e30, np.inf])) for a in MODEL]
    bodies: list[tuple[str, Body]] = [
        (
            topics.UPDATE.format(FED, AGENT),
            ModelUpdate(
                model_version=0, num_examples=rng.choice([1, 2**53]), tensors=to_tensors(weights)
            ),
        ),
        (
            topics.UPDATE.format(FED, AGENT),
            ModelUpdate(model_version=0, num_examples=2**53, tensors=to_tensors(MODEL)),
        ),
        (
            topics.UPDATE.format(FED, AGENT),
            ModelUpdate(
                model_version=rng.choice([1, 2**53]), num_examples=1, tensors=to_tensors(MODEL)
            ),
        ),
        (
            topics.UPDATE.format(FED, AGENT),
            ModelUpdate(
                model_version=0, num_examples=1, tensors=to_tensors([np.zeros(7, np.float32)])
            ),
        ),
        (
            topics.METRICS.format(FED, AGENT),
            EvaluateRes(
                model_version=0,
                loss=rng.choice([nan, 0.1, -np.inf]),
                num_examples=rng.choice([5, 2**53]),
                metrics={"accuracy": rng.choice([1.0, 5.0, nan, -1.0, "high", True])},
            ),
        ),
        (
            topics.UPDATE.format(FED, AGENT),
            MaskedInput(model_version=0, vector=to_tensor(np.full(9, 2**31, np.uint32))),
        ),
        (
            topics.JOIN.format(FED),
            JoinRequest(
                agent_id=rng.choice([AGENT, OTHER]),
                plugin=rng.choice(["toy", "evil"]),
                num_examples=2**53,
            ),
        ),
    ]
    topic, body = rng.choice(bodies)
    return topic, t.build(body)


OPERATORS: dict[str, Mutator] = {
    "semantic": _semantic,
    "bytes": _bytes_level,
    "envelope": _envelope_level,
    "body": _body_level,
    "signature": _signature_level,
    "topic": _topic_level,
}


def mutate(rng: random.Random, seeds: list[Seed], target: Target) -> tuple[str, bytes, str]:
    """One mutated message: (topic, payload, operator name)."""
    name = rng.choice(list(OPERATORS))
    seed = rng.choice(seeds)
    topic, payload = OPERATORS[name](rng, seed, seeds, target)
    return topic, payload, f"{name}/{seed.kind}"
