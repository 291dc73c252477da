"""What the members of a fleet process share: a body decoded once per process
(``codec.decode_body``) and a signature verified once (``Verifier``), never a body or a
signature that differs by a byte."""

from __future__ import annotations

import time

import msgspec
import pytest

from agent.errors import BadSignatureError
from agent.identity import ca
from agent.identity.verifier import Verifier
from agent.messages.bodies import AgentStatus, Liveness
from agent.messages.codec import decode_body, encode
from agent.messages.kinds import Kind
from agent.messages.signing import Signer, unwrap
from agent.role import Role


def test_the_same_bytes_decode_to_the_same_body_and_other_bytes_do_not() -> None:
    data = msgspec.msgpack.encode(AgentStatus(state=Liveness.ONLINE, detail="memo-1"))
    first = decode_body(Kind.STATUS, data)
    assert decode_body(Kind.STATUS, bytes(bytearray(data))) is first  # equal bytes
    other = msgspec.msgpack.encode(AgentStatus(state=Liveness.OFFLINE, detail="memo-1"))
    assert decode_body(Kind.STATUS, other) == AgentStatus(state=Liveness.OFFLINE, detail="memo-1")


def test_a_remembered_signature_does_not_vouch_for_another_envelope() -> None:
    authority = ca.init_ca("fed")
    key = ca.new_key()
    csr = ca.build_csr(key, agent_id="a1", federation="fed")
    signer = Signer(key, ca.sign_csr(authority, csr, agent_id="a1", role=Role.TRAINER))
    verifier = Verifier(authority.cert)
    body = AgentStatus(state=Liveness.ONLINE)
    payload = encode(body, federation="fed", round=0, sender="a1", signer=signer)
    _, signed = unwrap(payload)
    assert signed is not None
    for _ in range(2):  # verified, then remembered
        verifier.verify(signed, sender="a1", timestamp=time.time(), publisher=Role.TRAINER)
    forged = msgspec.structs.replace(signed, envelope=signed.envelope[:-1] + b"\x00")
    with pytest.raises(BadSignatureError):
        verifier.verify(forged, sender="a1", timestamp=time.time(), publisher=Role.TRAINER)
