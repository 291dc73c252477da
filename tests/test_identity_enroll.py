"""Enrollment over a real mosquitto and a real nats-server (plain TCP; TLS lockdown is tested
with the broker configs): the EnrollmentService answers, the device checks what it gets."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker, free_port
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.errors import IdentityError
from agent.identity.ca import CertificateAuthority, init_ca, new_key
from agent.identity.certificates import verify_issued
from agent.identity.device import enroll
from agent.identity.registry import AgentStatus, Registry
from agent.messages import decode
from agent.messages.bodies import EnrollReply, EnrollRequest
from agent.role import Identity, Role
from agent.runtime.enrollment import EnrollmentService

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]
FED = "fed"
Hook = Callable[[Identity, list[int]], Awaitable[None]]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return init_ca(FED)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry.open(tmp_path / "registry.sqlite") as reg:
        yield reg


@asynccontextmanager
async def serving(
    url: str, ca: CertificateAuthority, registry: Registry, hook: Hook | None = None
) -> AsyncIterator[None]:
    """An EnrollmentService on its own connection, ready before the body runs."""
    async with bus_from_url(url, BusSettings(client_id="aggregator-enroll")) as bus:
        service = EnrollmentService(bus, ca, registry, FED, on_enrolled=hook)
        task = asyncio.create_task(service.run())
        await asyncio.wait_for(service.ready.wait(), 10)
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def refused(url: str, ca: CertificateAuthority, token: str, agent_id: str = "dev1") -> str:
    with pytest.raises(IdentityError) as excinfo:
        await enroll(
            url,
            federation=FED,
            agent_id=agent_id,
            token=token,
            ca_fingerprint=ca.fingerprint,
            timeout=10,
        )
    return excinfo.value.reason


async def test_a_device_enrolls_end_to_end_and_its_key_never_leaves(
    broker: EmbeddedBroker, ca: CertificateAuthority, registry: Registry
) -> None:
    """With a valid token the device gets a certificate for its own key, issued by the pinned
    CA, naming its id with the trainer role; the registry lists it; the request on the wire
    held only the agent id, a CSR for the device's public key and the token (no private
    key); the aggregator logged agent_enrolled without the token."""
    token = registry.create_token("dev1", 60)
    key = new_key()
    captured: list[bytes] = []
    with capture_logs() as logs:
        async with (
            serving(broker.url, ca, registry),
            bus_from_url(broker.url, BusSettings(client_id="spy")) as spy,
        ):
            await spy.subscribe(f"fl/{FED}/enroll/+")
            await spy.wait_connected(timeout=10)
            result = await enroll(
                broker.url,
                federation=FED,
                agent_id="dev1",
                token=token,
                ca_fingerprint=ca.fingerprint,
                key=key,
                timeout=10,
            )
            async with asyncio.timeout(5):
                async for raw in spy.messages():
                    captured.append(raw.payload)
                    break
    identity = verify_issued(ca.cert, result.cert)
    assert (identity.agent_id, identity.federation, identity.role) == ("dev1", FED, Role.TRAINER)
    assert result.key is key
    assert result.cert.public_key() == key.public_key()
    assert result.ca_cert == ca.cert
    row = registry.agent("dev1")
    assert row is not None
    assert row.status is AgentStatus.ENROLLED
    assert row.serial == result.cert.serial_number

    (payload,) = captured
    request = decode(payload).body
    assert isinstance(request, EnrollRequest)
    assert set(request.__struct_fields__) == {"agent_id", "csr", "token", "ca_fingerprint"}
    csr = x509.load_pem_x509_csr(request.csr)
    assert csr.public_key() == key.public_key()
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert secret not in payload
    assert der not in payload

    assert any(e["event"] == "agent_enrolled" and e["agent_id"] == "dev1" for e in logs)
    assert all(token not in repr(e) for e in logs)


async def test_a_bad_token_is_refused(
    broker: EmbeddedBroker, ca: CertificateAuthority, registry: Registry
) -> None:
    """A token the registry never issued is refused with `bad_token` (and logged as
    enrollment_refused); nothing is enrolled."""
    registry.create_token("dev1", 60)
    with capture_logs() as logs:
        async with serving(broker.url, ca, registry):
            assert await refused(broker.url, ca, "x" * 43) == "bad_token"
    assert [e["reason"] for e in logs if e["event"] == "enrollment_refused"] == ["bad_token"]
    assert registry.agent("dev1") is None


async def test_an_expired_token_is_refused(
    broker: EmbeddedBroker, ca: CertificateAuthority, registry: Registry
) -> None:
    """A token past its expiry is refused with `expired_token`."""
    token = registry.create_token("dev1", 60, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    async with serving(broker.url, ca, registry):
        assert await refused(broker.url, ca, token) == "expired_token"
    assert registry.agent("dev1") is None


async def test_a_token_cannot_be_used_twice(
    broker: EmbeddedBroker, ca: CertificateAuthority, registry: Registry
) -> None:
    """After one successful enrollment, the same token is refused with `used_token`, and a
    token for another id is refused with `wrong_agent`."""
    token = registry.create_token("dev1", 60)
    other = registry.create_token("dev2", 60)
    async with serving(broker.url, ca, registry):
        await enroll(
            broker.url,
            federation=FED,
            agent_id="dev1",
            token=token,
            ca_fingerprint=ca.fingerprint,
            timeout=10,
        )
        assert await refused(broker.url, ca, token) == "used_token"
        assert await refused(broker.url, ca, other) == "wrong_agent"


async def test_a_reply_from_another_ca_fails_the_fingerprint_pin(
    broker: EmbeddedBroker, registry: Registry
) -> None:
    """When the CA answering is not the one whose fingerprint the device pinned (here: the
    aggregator runs another CA), the device refuses the certificate: `fingerprint_mismatch`."""
    pinned = init_ca(FED)
    impostor = init_ca(FED)
    token = registry.create_token("dev1", 60)
    async with serving(broker.url, impostor, registry):
        assert await refused(broker.url, pinned, token) == "fingerprint_mismatch"


async def test_malformed_requests_are_answered_and_never_stop_the_service(
    broker: EmbeddedBroker, ca: CertificateAuthority, registry: Registry
) -> None:
    """Garbage, a request whose agent id differs from its topic, and a junk CSR are each
    answered with an error reply (`malformed`, `sender_mismatch`, `bad_csr`), and a valid
    enrollment right after still succeeds."""
    from agent.messages import encode

    token = registry.create_token("dev1", 60)
    async with (
        serving(broker.url, ca, registry),
        bus_from_url(broker.url, BusSettings(client_id="junk")) as junk,
    ):
        await junk.subscribe(f"fl/{FED}/enroll_reply/+")
        await junk.wait_connected(timeout=10)
        await junk.publish(f"fl/{FED}/enroll/j1", b"\x93not an envelope")
        mismatched = EnrollRequest(agent_id="dev1", csr=b"x", token=token)
        await junk.publish(
            f"fl/{FED}/enroll/j2", encode(mismatched, federation=FED, round=0, sender="j2")
        )
        bad_csr = EnrollRequest(agent_id="j3", csr=b"-----BEGIN junk", token=token)
        await junk.publish(
            f"fl/{FED}/enroll/j3", encode(bad_csr, federation=FED, round=0, sender="j3")
        )
        reasons: dict[str, str] = {}
        async with asyncio.timeout(10):
            async for raw in junk.messages():
                reply = decode(raw.payload).body
                assert isinstance(reply, EnrollReply)
                assert reply.status == "error"
                reasons[reply.agent_id] = reply.reason
                if len(reasons) == 3:
                    break
        assert reasons == {"j1": "malformed", "j2": "sender_mismatch", "j3": "bad_csr"}
        result = await enroll(
            broker.url,
            federation=FED,
            agent_id="dev1",
            token=token,
            ca_fingerprint=ca.fingerprint,
            timeout=10,
        )
    assert result.identity.agent_id == "dev1"


async def test_drops_are_answered_with_the_dispatchers_reason_and_resends_once(
    mosquitto: EmbeddedBroker, ca: CertificateAuthority, registry: Registry
) -> None:
    """The service's requests go through the Dispatcher: an envelope of another federation
    is dropped (logged as message_dropped) and answered `wrong_federation`; a request re-sent
    byte for byte (the device's retry) is answered once, not refused as `used_token`."""
    from agent.identity.ca import build_csr
    from agent.messages import encode

    token = registry.create_token("dev1", 60)
    csr = build_csr(new_key(), agent_id="dev1", federation=FED)
    request = EnrollRequest(
        agent_id="dev1", csr=csr.public_bytes(serialization.Encoding.PEM), token=token
    )
    payload = encode(request, federation=FED, round=0, sender="dev1")
    foreign = encode(
        EnrollRequest(agent_id="j4", csr=b"x", token="t"), federation="other", round=0, sender="j4"
    )
    replies: list[EnrollReply] = []
    with capture_logs() as logs:
        async with (
            serving(mosquitto.url, ca, registry),
            bus_from_url(mosquitto.url, BusSettings(client_id="dev")) as dev,
        ):
            await dev.subscribe(f"fl/{FED}/enroll_reply/+")
            await dev.wait_connected(timeout=10)
            await dev.publish(f"fl/{FED}/enroll/j4", foreign)
            await dev.publish(f"fl/{FED}/enroll/dev1", payload)
            await dev.publish(f"fl/{FED}/enroll/dev1", payload)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    async for raw in dev.messages():
                        reply = decode(raw.payload).body
                        assert isinstance(reply, EnrollReply)
                        replies.append(reply)
    assert sorted((r.agent_id, r.status, r.reason) for r in replies) == [
        ("dev1", "ok", ""),
        ("j4", "error", "wrong_federation"),
    ]
    dropped = sorted(e["reason"] for e in logs if e["event"] == "message_dropped")
    assert dropped == ["duplicate", "wrong_federation"]


async def test_reenrolling_issues_a_new_certificate_and_supersedes_the_old(
    nats_server: EmbeddedBroker, ca: CertificateAuthority, registry: Registry
) -> None:
    """An enrolled device given a fresh token enrolls again with a new key: it gets a new
    certificate, and its previous serial is revoked (superseded) in the registry. The
    on_enrolled hook sees both enrollments, the second with the superseded serial; a hook
    that raises is logged and does not cost the device its certificate."""
    first_token, second_token = (registry.create_token("dev1", 60) for _ in range(2))
    seen: list[tuple[str, list[int]]] = []

    async def hook(identity: Identity, superseded: list[int]) -> None:
        seen.append((identity.agent_id, superseded))
        if len(seen) == 2:
            raise RuntimeError("the hook failed")

    with capture_logs() as logs:
        async with serving(nats_server.url, ca, registry, hook):
            first, second = [
                await enroll(
                    nats_server.url,
                    federation=FED,
                    agent_id="dev1",
                    token=token,
                    ca_fingerprint=ca.fingerprint,
                    timeout=10,
                )
                for token in (first_token, second_token)
            ]
    assert first.cert.serial_number != second.cert.serial_number
    assert registry.is_revoked("dev1", first.cert.serial_number)
    assert not registry.is_revoked("dev1", second.cert.serial_number)
    assert seen == [("dev1", []), ("dev1", [first.cert.serial_number])]
    assert [e["agent_id"] for e in logs if e["event"] == "enrollment_hook_failed"] == ["dev1"]


async def test_no_aggregator_means_no_reply_within_the_timeout(
    mosquitto: EmbeddedBroker, ca: CertificateAuthority
) -> None:
    """With a broker but no enrollment service, enroll gives up after its timeout with
    `no_reply` (it does not loop)."""
    start = time.monotonic()
    with pytest.raises(IdentityError) as excinfo:
        await enroll(
            mosquitto.url,
            federation=FED,
            agent_id="dev1",
            token="t",
            ca_fingerprint=ca.fingerprint,
            timeout=1.5,
        )
    assert excinfo.value.reason == "no_reply"
    assert 1.4 < time.monotonic() - start < 5


@pytest.mark.parametrize("scheme", ["mqtt", "nats"])
async def test_a_closed_port_fails_fast_with_broker_unreachable(
    scheme: str, ca: CertificateAuthority
) -> None:
    """Nothing listening at the broker address: enroll fails at once (well before its 20 s
    timeout) with `broker_unreachable`."""
    url = f"{scheme}://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(IdentityError) as excinfo:
        await enroll(
            url,
            federation=FED,
            agent_id="dev1",
            token="t",
            ca_fingerprint=ca.fingerprint,
            timeout=20,
        )
    assert excinfo.value.reason == "broker_unreachable"
    assert "refused" in str(excinfo.value).lower()
    assert time.monotonic() - start < 2


def test_the_cli_exits_non_zero_with_one_line_when_the_broker_is_unreachable(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """`fedbus enroll` against a closed port exits non-zero at once, printing exactly one line
    `fedbus: error: ...` that says the broker cannot be reached, and writes no files."""
    state = tmp_path / "state"
    start = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "enroll",
            "--federation",
            FED,
            "--agent-id",
            "dev1",
            "--token",
            "t",
            "--ca-fingerprint",
            ca.fingerprint,
            "--bus-url",
            f"mqtt://127.0.0.1:{free_port()}",
            "--state-dir",
            str(state),
            "--config",
            str(tmp_path / "dev1.toml"),
            "--plugin",
            "toy",
            "--timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("fedbus: error: ")
    assert "cannot reach the broker" in lines[0]
    assert time.monotonic() - start < 10
    assert not state.exists()
    assert not (tmp_path / "dev1.toml").exists()


async def test_junk_on_a_device_s_enroll_topic_cannot_refuse_its_enrollment(
    broker: EmbeddedBroker, ca: CertificateAuthority, registry: Registry
) -> None:
    """While a device enrolls, someone floods its enroll topic with undecodable bytes and with
    requests carrying a bad CSR: the aggregator answers each on the device's reply topic, and
    (made certain by the hook) one such refusal reaches the device before its own answer. The
    device takes only the answer to its own request, and is enrolled."""
    from agent.messages import encode

    token = registry.create_token("dev1", 60)
    forged = encode(
        EnrollRequest(agent_id="dev1", csr=b"not a csr", token="wrong"),
        federation=FED,
        round=0,
        sender="dev1",
    )
    refusals: list[EnrollReply] = []
    reply_topic = f"fl/{FED}/enroll_reply/dev1"
    async with bus_from_url(broker.url, BusSettings(client_id="intruder")) as intruder:
        await intruder.subscribe(reply_topic)
        await intruder.wait_connected(timeout=10)

        async def refusal_first(identity: Identity, superseded: list[int]) -> None:
            """Runs before the device's reply goes out: an answer to someone else's request."""
            other = EnrollReply(
                agent_id="dev1", status="error", reason="bad_csr", request=os.urandom(16)
            )
            await intruder.publish(
                reply_topic, encode(other, federation=FED, round=0, sender="aggregator")
            )
            await asyncio.sleep(0.2)  # it is delivered before the real reply

        async def watch() -> None:
            async for raw in intruder.messages():
                body = decode(raw.payload).body
                if isinstance(body, EnrollReply) and body.status == "error":
                    refusals.append(body)

        async def flood() -> None:
            while True:  # a burst at a time, so refusals keep the reply topic busy
                for _ in range(20):
                    await intruder.publish(f"fl/{FED}/enroll/dev1", b"\x00junk")
                    await intruder.publish(f"fl/{FED}/enroll/dev1", forged)
                await asyncio.sleep(0.01)

        with capture_logs() as logs:
            async with serving(broker.url, ca, registry, refusal_first):
                tasks = [asyncio.create_task(watch()), asyncio.create_task(flood())]
                try:
                    await asyncio.sleep(0.3)  # refusals are already on the reply topic
                    result = await enroll(
                        broker.url,
                        federation=FED,
                        agent_id="dev1",
                        token=token,
                        ca_fingerprint=ca.fingerprint,
                        timeout=10,
                    )
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
    assert verify_issued(ca.cert, result.cert).agent_id == "dev1"
    assert {r.reason for r in refusals} == {"malformed", "bad_csr"}
    dropped = [e for e in logs if e["event"] == "enrollment_reply_dropped"]
    assert any(e["reason"] == "not_our_request" for e in dropped)
