"""Signed and sealed messages through the receive loop: every way a message can fail the
identity checks is dropped with its reason, and a correct one passes."""

from __future__ import annotations

import time

import msgspec
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.bus.base import BusMessage
from agent.errors import ProtocolError
from agent.identity import ca
from agent.identity.verifier import Verifier
from agent.messages import FitIns, JoinRequest, Kind, ModelUpdate, encode
from agent.messages.codec import encode_envelope
from agent.messages.envelope import Message, new_envelope
from agent.messages.signing import Signed, Signer, is_signed
from agent.messages.tensors import to_tensors
from agent.role import Role
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security

pytestmark = pytest.mark.timeout(30)
FED = "fed"
CA = ca.init_ca(FED)


def signer(
    agent_id: str, role: Role = Role.TRAINER, authority: ca.CertificateAuthority = CA
) -> Signer:
    key, cert = ca.issue(authority, agent_id, role=role)
    return Signer(key, cert)


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.seen.append(message)


SEAL = X25519PrivateKey.generate()


def aggregator_side(revoked: frozenset[str] = frozenset()) -> tuple[Dispatcher, Recorder]:
    registry = ListenerRegistry()
    rec = Recorder()
    registry.register(Kind.JOIN, rec, rounds=RoundPolicy.ANY)
    registry.register(Kind.MODEL_UPDATE, rec, rounds=RoundPolicy.ANY)
    verifier = Verifier(CA.cert, revoked=lambda ident: ident.agent_id in revoked)
    security = Security(verifier, unseal_key=SEAL)
    dispatcher = Dispatcher(
        federation=FED,
        registry=registry,
        current_round=lambda: 1,
        max_payload=100_000,
        security=security,
    )
    return dispatcher, rec


def trainer_side() -> tuple[Dispatcher, Recorder]:
    registry = ListenerRegistry()
    rec = Recorder()
    registry.register(Kind.FIT_INS, rec, rounds=RoundPolicy.ANY)
    dispatcher = Dispatcher(
        federation=FED,
        registry=registry,
        current_round=lambda: 1,
        max_payload=100_000,
        security=Security(Verifier(CA.cert)),
    )
    return dispatcher, rec


def join(sender: str = "a1", **kw: object) -> bytes:
    body = JoinRequest(agent_id=sender, plugin="toy", num_examples=1)
    return encode(body, federation=FED, round=1, sender=sender, **kw)  # type: ignore[arg-type]


def update(sender: str = "a1", **kw: object) -> bytes:
    body = ModelUpdate(
        model_version=0, num_examples=3, tensors=to_tensors([np.arange(4, dtype=np.float32)])
    )
    return encode(body, federation=FED, round=1, sender=sender, **kw)  # type: ignore[arg-type]


def reason(dispatcher: Dispatcher, topic: str, payload: bytes) -> str | None:
    try:
        dispatcher.accept(BusMessage(topic, payload))
    except ProtocolError as exc:
        return exc.reason
    return None


def test_a_signed_message_passes_and_names_its_signer() -> None:
    """A join signed by an enrolled trainer is accepted, and the message carries the
    verified identity."""
    dispatcher, _ = aggregator_side()
    payload = join(signer=signer("a1"))
    assert is_signed(payload)
    _, message = dispatcher.accept(BusMessage("fl/fed/join", payload))
    assert message.identity is not None
    assert message.identity.agent_id == "a1"


def test_a_sealed_update_opens_for_the_aggregator_only() -> None:
    """An update sealed to the aggregator's key opens in its receive loop; the bytes on the
    wire do not contain the plaintext tensor, and a plain decoder refuses the sealed body."""
    dispatcher, _ = aggregator_side()
    payload = update(signer=signer("a1"), seal_to=SEAL.public_key())
    _, message = dispatcher.accept(BusMessage("fl/fed/model_para/update/a1", payload))
    assert message.body.num_examples == 3
    assert np.arange(4, dtype=np.float32).tobytes() not in payload


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unsigned", "unsigned"),
        ("other_ca", "unknown_signer"),
        ("tampered", "bad_signature"),
        ("impersonation", "signer_mismatch"),
        ("stale", "stale_timestamp"),
        ("revoked", "revoked"),
        ("not_sealed", "unsealable"),
        ("wrong_federation", "wrong_federation"),
    ],
)
def test_refused_messages_name_their_reason(case: str, expected: str) -> None:
    """Unsigned, forged (another CA), tampered (one bit), impersonating, replayed (old
    timestamp), revoked, unsealed and wrong-federation messages are each refused with the
    reason the receive loop logs."""
    dispatcher, rec = aggregator_side(revoked=frozenset({"bad"}))
    topic = "fl/fed/model_para/update/a1"
    me = signer("a1")
    seal_to = SEAL.public_key()
    if case == "unsigned":
        payload = update(seal_to=seal_to)
    elif case == "other_ca":
        payload = update(signer=signer("a1", authority=ca.init_ca(FED)), seal_to=seal_to)
    elif case == "tampered":
        signed = msgspec.msgpack.decode(update(signer=me, seal_to=seal_to), type=Signed)
        flipped = bytearray(signed.envelope)
        flipped[len(flipped) // 2] ^= 0x01  # inside the sealed body: still well-formed
        payload = msgspec.msgpack.encode(
            Signed(signed.magic, bytes(flipped), signed.cert, signed.signature)
        )
    elif case == "impersonation":
        payload = update(sender="a1", signer=signer("a2"), seal_to=seal_to)
    elif case == "stale":
        body = msgspec.msgpack.encode(JoinRequest(agent_id="a1", plugin="toy", num_examples=1))
        env = new_envelope(kind=Kind.JOIN, federation=FED, round=1, sender="a1", body=body)
        old = msgspec.structs.replace(env, timestamp=time.time() - 3600)
        payload, topic = me.sign(encode_envelope(old)), "fl/fed/join"
    elif case == "revoked":
        payload, topic = join("bad", signer=signer("bad")), "fl/fed/join"
    elif case == "not_sealed":
        payload = update(signer=me)
    else:
        body = JoinRequest(agent_id="a1", plugin="toy", num_examples=1)
        payload = encode(body, federation="other", round=1, sender="a1", signer=me)
        topic = "fl/fed/join"
    assert reason(dispatcher, topic, payload) == expected
    assert rec.seen == []


def test_a_trainer_cannot_pose_as_the_aggregator() -> None:
    """A fit_ins into an agent's inbox signed by a trainer certificate is refused as
    wrong_role; the same from the aggregator's certificate is accepted."""
    dispatcher, _ = trainer_side()
    ins = FitIns(model_version=0, model_sha256="0" * 64, deadline=5.0)
    forged = encode(ins, federation=FED, round=1, sender="a2", signer=signer("a2"))
    assert reason(dispatcher, "fl/fed/agent/a1", forged) == "wrong_role"
    real = encode(
        ins,
        federation=FED,
        round=1,
        sender="aggregator",
        signer=signer("aggregator", Role.AGGREGATOR),
    )
    assert reason(dispatcher, "fl/fed/agent/a1", real) is None


def test_a_replayed_message_is_a_duplicate() -> None:
    """The same signed message twice: the second is dropped as a duplicate."""
    dispatcher, _ = aggregator_side()
    payload = join(signer=signer("a1"))
    assert reason(dispatcher, "fl/fed/join", payload) is None
    assert reason(dispatcher, "fl/fed/join", payload) == "duplicate"


@pytest.mark.parametrize("name", ["aggregator", "enroll"])
def test_a_trainer_cannot_be_issued_a_reserved_name(name: str) -> None:
    """The CA refuses a trainer certificate named like the aggregator or the shared enroll
    identity (mosquitto would give it their rights by CN)."""
    from agent.errors import IdentityError

    csr = ca.build_csr(ca.new_key(), agent_id=name, federation=FED)
    with pytest.raises(IdentityError, match="reserved"):
        ca.sign_csr(CA, csr)
