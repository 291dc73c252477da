"""Issue 14's leftovers, one test each: private files created private, the demo's agent keys
removed even after a SIGKILL, any certificate-parsing error a plain drop, enrollment redeeming
the token before it signs, and a publish the broker refuses counted and raised."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from agent.bus.base import BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.demo.runner import _work_dir
from agent.errors import IdentityError, ProtocolError, PublishRefusedError
from agent.identity import ca
from agent.identity.registry import Registry
from agent.identity.verifier import Verifier
from agent.logs import open_log_file, private_dir
from agent.messages import topics
from agent.messages.bodies import AgentStatus, EnrollRequest, Liveness
from agent.messages.signing import Signer, unwrap
from agent.role import Role
from agent.runtime import enrollment
from agent.runtime.enrollment import EnrollmentService
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox

FED = "fed"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a file ends up private only if it was created with a private mode."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_registry_and_its_wal_are_created_0600(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "registry.sqlite") as registry:
        registry.create_token("dev1", 60)
        files = sorted(tmp_path.iterdir())
        assert {p.name for p in files} >= {"registry.sqlite", "registry.sqlite-wal"}
        assert all(mode(p) == 0o600 for p in files), [(p.name, oct(mode(p))) for p in files]


@pytest.mark.usefixtures("open_umask")
def test_logs_and_report_dirs_are_created_private(tmp_path: Path) -> None:
    logs = private_dir(tmp_path / "report" / "logs")
    with open_log_file(logs / "aggregator.log") as out:
        out.write("{}\n")
    assert mode(logs) == 0o700
    assert mode(logs / "aggregator.log") == 0o600


@pytest.mark.usefixtures("open_umask")
def test_the_demo_removes_keys_a_killed_demo_left(tmp_path: Path) -> None:
    """A SIGKILLed demo leaves REPORT/agents/*/key.pem; the next demo removes it before it
    starts, works in a fresh 0700 directory, and removes that too when it ends."""
    left = tmp_path / "agents" / "agent-00"
    left.mkdir(parents=True)
    (left / "key.pem").write_text("secret")
    with ExitStack() as stack:
        work = _work_dir(tmp_path, stack)
        assert not left.exists()
        assert mode(work) == 0o700
        (work / "agent-00").mkdir()
    assert not (tmp_path / "agents").exists()


def _signed_status() -> tuple[bytes, Verifier]:
    authority = ca.init_ca(FED)
    key, cert = ca.issue(authority, "a1")
    from agent.messages.codec import encode

    payload = encode(
        AgentStatus(state=Liveness.ONLINE),
        federation=FED,
        round=0,
        sender="a1",
        signer=Signer(key, cert),
    )
    return payload, Verifier(authority.cert)


def test_every_bit_flipped_in_the_certificate_is_a_plain_drop() -> None:
    """Each single-bit flip inside the certificate (some make the parser raise
    InvalidVersion, others ValueError) is refused as unknown_signer or bad_signature: a
    ProtocolError, never another exception."""
    payload, verifier = _signed_status()
    _, signed = unwrap(payload)
    assert signed is not None
    start = payload.index(signed.cert)
    reasons: set[str] = set()
    for bit in range(0, len(signed.cert) * 8, 3):
        flipped = bytearray(payload)
        flipped[start + bit // 8] ^= 1 << (bit % 8)
        _, mutated = unwrap(bytes(flipped))
        assert mutated is not None
        try:
            verifier.verify(
                mutated, sender="a1", timestamp=0.0, publisher=Role.TRAINER, timeless=True
            )
        except ProtocolError as exc:
            reasons.add(exc.reason)
        # any other exception fails the test
    assert reasons <= {"unknown_signer", "bad_signature", "signer_mismatch", "wrong_role"}
    assert "unknown_signer" in reasons


async def test_the_token_is_redeemed_before_anything_is_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request with a token the registry refuses is never signed; a good one is signed
    after its token is used up (in the transaction that records it: identity.batch)."""
    authority = ca.init_ca(FED)
    signed: list[str] = []
    real_sign = enrollment.sign_csr

    def spy(*args: Any, **kw: Any) -> Any:
        unrecorded = registry._db.execute("SELECT 1 FROM agents").fetchone() is None
        signed.append("used" if unrecorded and _token_used(registry) else "?")
        return real_sign(*args, **kw)

    monkeypatch.setattr(enrollment, "sign_csr", spy)
    key = ca.new_key()
    csr = ca.build_csr(key, agent_id="dev1", federation=FED)
    pem = csr.public_bytes(serialization.Encoding.PEM)
    with Registry.open(tmp_path / "registry.sqlite") as registry:
        bus = MemoryBus(MemoryBroker(), BusSettings(client_id="x"))
        service = EnrollmentService(bus, authority, registry, FED)
        with pytest.raises(IdentityError):
            service._enroll(EnrollRequest(agent_id="dev1", csr=pem, token="not-a-token"))
        assert signed == []
        token = registry.create_token("dev1", 60)
        service._enroll(EnrollRequest(agent_id="dev1", csr=pem, token=token))
        assert signed == ["used"]


def _token_used(registry: Registry) -> bool:
    rows = registry._db.execute("SELECT used_at FROM tokens").fetchall()
    return bool(rows) and all(r[0] is not None for r in rows)


class RefusingBus(MemoryBus):
    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        raise PublishRefusedError(topic, "Not authorized")


async def test_a_refused_publish_is_raised_and_counted() -> None:
    metrics = Metrics()
    async with RefusingBus(MemoryBroker(), BusSettings(client_id="a1")) as bus:
        outbox = Outbox(bus, federation=FED, sender="a1", metrics=metrics)
        with pytest.raises(PublishRefusedError):
            await outbox.send(
                topics.STATUS, AgentStatus(state=Liveness.ONLINE), round=0, agent_id="a1"
            )
        assert (
            await outbox.try_send(
                topics.STATUS, AgentStatus(state=Liveness.ONLINE), round=0, agent_id="a1"
            )
            is None
        )
    assert metrics.publishes_refused.labels("status")._value.get() == 2
