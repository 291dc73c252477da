"""The mutation operators of ``mutation.py`` (not a scenario module): one mutated (topic,
payload) from a valid seed message of ``_target.Target``, at the byte, envelope, body,
signature or topic level, or a well-formed message with hostile values."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from agent.messages import topics
from agent.messages.bodies import (
    Body,
    EvaluateRes,
    JoinRequest,
    MaskedInput,
    ModelUpdate,
)
from agent.messages.codec import encode_envelope
from agent.messages.kinds import Kind
from agent.messages.signing import MAGIC, Signed
from agent.messages.tensors import to_tensor, to_tensors
from bench.fault_scenarios._target import AGENT, FED, MODEL, MSGPACK, OTHER, Seed, Target

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
        {"sealed": False, "body": MSGPACK.encode(seed.body)},
        {"sealed": True, "body": rng.randbytes(rng.randrange(0, 200))},
        {"v": rng.choice([0, 2, 255])},
        {"body": rng.randbytes(rng.randrange(0, 300)), "sealed": False},
        {"data": MSGPACK.encode(rng.choice(seeds).body)},
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
    tree = msgspec.msgpack.decode(MSGPACK.encode(seed.body))
    data = MSGPACK.encode(_tweak(rng, tree))
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
    return seed.topic, MSGPACK.encode(Signed(MAGIC, envelope, cert, signature))


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
        (  # integer arrays beside it: a float one (refused), a huge or misshapen counter
            topics.UPDATE.format(FED, AGENT),
            MaskedInput(
                model_version=0,
                vector=to_tensor(np.zeros(9, np.uint32)),
                carried=[
                    to_tensor(
                        rng.choice(
                            [
                                np.array([0.5], np.float32),
                                np.array(2**62, np.int64),
                                np.zeros((2, 3), np.int8),
                            ]
                        )
                    )
                ],
            ),
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
