"""Identity checks end to end on locked-down brokers: a client holding a valid trainer
certificate (so the broker lets it publish on its own topics) injects forged, tampered,
replayed and wrong-federation messages; the aggregator's receive loop refuses each with a log
line naming the reason and hands only the genuine one to its listener."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from agent.brokers import BrokerKind, free_port
from agent.bus.base import BusSettings
from agent.bus.url import TlsFiles, bus_from_url
from agent.identity import ca, pem
from agent.identity.verifier import Verifier
from agent.lockdown import Members, embedded_broker, local_mosquitto_user, write_broker_config
from agent.messages import JoinRequest, Kind, encode
from agent.messages.envelope import Message
from agent.messages.signing import Signed, Signer
from agent.role import Role
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def identity(
    authority: ca.CertificateAuthority, name: str, role: Role, where: Path
) -> tuple[Signer, TlsFiles]:
    key, cert = ca.issue(authority, name, role=role)
    pem.write_private_key(where / f"{name}.key", key)
    pem.write_pem(where / f"{name}.pem", cert)
    pem.write_pem(where / "ca.pem", authority.cert)
    return Signer(key, cert), TlsFiles(
        where / "ca.pem", where / f"{name}.pem", where / f"{name}.key"
    )


@pytest.mark.parametrize("kind", ["mqtt", "nats"])
async def test_forged_tampered_replayed_and_foreign_messages_are_refused(
    kind: BrokerKind, tmp_path: Path
) -> None:
    """Over TLS with the generated config: of five joins sent by an enrolled agent's
    connection, only the genuine one reaches the listener; the others are dropped as
    unknown_signer (signed under another CA), bad_signature (one bit flipped), duplicate
    (the genuine one again) and wrong_federation."""
    authority = ca.init_ca("fed")
    members = Members("aggregator", ("a1",))
    files = write_broker_config(
        kind,
        authority,
        tmp_path / "broker",
        members,
        port=free_port(),
        mosquitto_user=local_mosquitto_user(),
    )
    _, agg_tls = identity(authority, "aggregator", Role.AGGREGATOR, tmp_path / "pki")
    me, a1_tls = identity(authority, "a1", Role.TRAINER, tmp_path / "pki")
    key, cert = ca.issue(ca.init_ca("fed"), "a1")  # a look-alike from another CA
    forger = Signer(key, cert)

    seen: list[Message] = []

    async def record(message: Message) -> None:
        seen.append(message)

    registry = ListenerRegistry()
    registry.register(Kind.JOIN, record, rounds=RoundPolicy.ANY)
    dispatcher = Dispatcher(
        federation="fed",
        registry=registry,
        current_round=lambda: 0,
        max_payload=100_000,
        security=Security(Verifier(authority.cert)),
    )
    body = JoinRequest(agent_id="a1", plugin="toy", num_examples=1)
    genuine = encode(body, federation="fed", round=0, sender="a1", signer=me)
    signed = msgspec.msgpack.decode(genuine, type=Signed)
    flipped = signed.envelope.replace(b"toy", b"tox")  # y→x: one bit, in the body
    assert flipped != signed.envelope
    tampered = msgspec.msgpack.encode(Signed(signed.magic, flipped, signed.cert, signed.signature))
    payloads = [
        genuine,
        encode(body, federation="fed", round=0, sender="a1", signer=forger),
        tampered,
        genuine,
        encode(body, federation="other", round=0, sender="a1", signer=me),
    ]
    with embedded_broker(files) as broker, capture_logs() as logs:
        async with (
            bus_from_url(broker.url, BusSettings(client_id="aggregator"), tls=agg_tls) as agg,
            bus_from_url(broker.url, BusSettings(client_id="a1"), tls=a1_tls) as a1,
        ):
            await agg.subscribe("fl/fed/join")
            await agg.wait_connected(timeout=10)
            await a1.wait_connected(timeout=10)
            receiver = asyncio.create_task(dispatcher.run(agg))
            for payload in payloads:
                await a1.publish("fl/fed/join", payload)
            async with asyncio.timeout(10):
                while sum(dispatcher.dropped.values()) + len(seen) < len(payloads):
                    await asyncio.sleep(0.05)
            receiver.cancel()
    assert len(seen) == 1
    assert seen[0].identity is not None
    assert seen[0].identity.agent_id == "a1"
    reasons = sorted(e["reason"] for e in logs if e["event"] == "message_dropped")
    assert reasons == ["bad_signature", "duplicate", "unknown_signer", "wrong_federation"]
