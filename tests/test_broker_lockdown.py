"""Broker lockdown (agent.lockdown): generated configs, and real mosquitto / nats-server
running them with TLS client certificates, per-identity ACLs and revocation.

How a refusal surfaces differs by broker, so each test asserts what a subscriber receives
(nothing: the next message it gets is a later, allowed one) and, where there is one, the
error: mosquitto answers a refused QoS 1 publish with PUBACK 0x87 "Not authorized" (our
MqttBus does not surface PUBACK reason codes, so a raw aiomqtt probe reads it) and grants
every subscription but drops unauthorized messages at delivery; nats-server sends
``-ERR 'Permissions Violation'`` for a refused publish or subscription, which the bus logs
as ``bus_transport_error``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from click.testing import CliRunner
from cryptography import x509
from structlog.testing import capture_logs

from agent.brokers import BrokerKind, EmbeddedBroker, free_port
from agent.bus import Bus, BusMessage, BusSettings
from agent.bus.url import TlsFiles, bus_from_url
from agent.cli.broker_config import broker_config
from agent.errors import (
    BrokerRefusedError,
    BusTimeoutError,
    ConfigError,
    IdentityError,
    PublishRefusedError,
)
from agent.identity.ca import CertificateAuthority, init_ca, issue, save_ca
from agent.identity.certificates import identity_of
from agent.identity.pem import load_certificate, write_pem, write_private_key
from agent.identity.registry import REGISTRY_FILE, Registry
from agent.lockdown import (
    BrokerFiles,
    Members,
    embedded_broker,
    local_mosquitto_user,
    regenerate,
    write_broker_config,
)
from agent.lockdown.access import ENROLL_TOPICS, Access, Rule, trainer_rules
from agent.lockdown.mosquitto import render_acl
from agent.lockdown.nats import render_users
from agent.lockdown.templates import render_templates
from agent.messages import topics
from agent.role import Role

WAIT = 10.0  # bound for what should happen promptly; never asserted as a duration
REFUSED_WAIT = 1.0  # how long a refused client gets to connect (it never does)
FED = "fed1"
AGG = "agg"
REPO = Path(__file__).resolve().parent.parent


def settings(client_id: str, connect_timeout: float = 2.0) -> BusSettings:
    return BusSettings(
        client_id,
        backoff_initial=0.05,
        backoff_max=0.3,
        connect_timeout=connect_timeout,
        publish_timeout=5.0,
    )


async def receive(messages: AsyncIterator[BusMessage]) -> BusMessage:
    async with asyncio.timeout(WAIT):
        return await anext(messages)


@dataclass
class Federation:
    """A CA, a locked-down broker running its generated config, and client identities."""

    ca: CertificateAuthority
    root: Path
    members: Members
    broker: EmbeddedBroker | None = None
    files: BrokerFiles | None = None
    serials: dict[str, int] = field(default_factory=dict)

    def identity(
        self, agent_id: str, role: Role = Role.TRAINER, ca: CertificateAuthority | None = None
    ) -> TlsFiles:
        """Issue a certificate (by ``ca``, default ours) and return the client's TLS files."""
        key, cert = issue(ca or self.ca, agent_id, role=role)
        where = self.root / "clients" / f"{agent_id}-{cert.serial_number}"
        write_private_key(where / "key.pem", key)
        write_pem(where / "cert.pem", cert)
        self.serials[agent_id] = cert.serial_number
        return TlsFiles(self.root / "broker" / "ca.pem", where / "cert.pem", where / "key.pem")

    def bus(self, name: str, tls: TlsFiles, connect_timeout: float = 2.0) -> Bus:
        assert self.broker is not None
        return bus_from_url(self.broker.url, settings(name, connect_timeout), tls=tls)


def new_federation(root: Path) -> Federation:
    return Federation(init_ca(FED), root, Members(AGG, ("agent-1", "agent-2")))


@pytest.fixture(params=["mqtt", "nats"])
def fed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Federation]:
    """A federation whose broker (mosquitto, then nats-server) runs the generated config."""
    kind: BrokerKind = request.param
    federation = new_federation(tmp_path)
    files = write_broker_config(
        kind,
        federation.ca,
        tmp_path / "broker",
        federation.members,
        port=free_port(),
        mosquitto_user=local_mosquitto_user(),
    )
    federation.files = files
    with embedded_broker(files) as broker:
        federation.broker = broker
        yield federation


async def mqtt_puback_codes(fed: Federation, tls: TlsFiles, *topic_list: str) -> list[str]:
    """Publish QoS 1 with a raw aiomqtt client; each PUBACK's reason: "ok" for any success
    code (0x00, or 0x10 "No matching subscribers"), else the failure's name."""
    assert fed.broker is not None
    client = aiomqtt.Client(
        "127.0.0.1",
        fed.broker.port,
        identifier="probe",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls.ssl_context(),
    )
    codes: list[str] = []
    inner = client._client.on_publish

    def record(*args: Any) -> None:
        reason = args[3]
        codes.append(str(reason) if reason.is_failure else "ok")
        inner(*args)

    client._client.on_publish = record
    async with client:
        for topic in topic_list:
            await client.publish(topic, b"probe", qos=1)
    return codes


async def logged(logs: list[dict[str, Any]], text: str) -> None:
    """Wait until a captured log line's ``reason`` contains ``text``."""
    async with asyncio.timeout(WAIT):
        while not any(text in str(entry.get("reason", "")) for entry in logs):
            await asyncio.sleep(0.02)


async def refused(
    fed: Federation,
    name: str,
    tls: TlsFiles,
    logs: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> str:
    """A bus with ``tls`` never gets a session. Returns why, as the client saw it: the bus's
    ``bus_connect_failed`` reasons, and what paho logged (aiomqtt reports a handshake the
    broker aborted only as a connect timeout; paho logs the TLS alert, which the bus reads:
    a revoked certificate stops it at once, ``agent.bus.refusal``)."""
    async with fed.bus(name, tls, connect_timeout=0.5) as bus:
        with pytest.raises((BusTimeoutError, BrokerRefusedError)):
            await bus.wait_connected(REFUSED_WAIT)
    failures = [e for e in logs if e["event"] == "bus_connect_failed" and e["client_id"] == name]
    assert failures
    return " ".join([*(str(f["reason"]) for f in failures), caplog.text])


# -- against the real brokers ---------------------------------------------------------------


@pytest.mark.broker
async def test_trainer_publishes_its_update_and_reads_inbox_and_global_model(
    fed: Federation,
) -> None:
    """An issued, enrolled trainer connects with its certificate, publishes its own update
    (the aggregator receives it) and receives its inbox and the global model."""
    async with (
        fed.bus("agg", fed.identity(AGG, Role.AGGREGATOR)) as agg,
        fed.bus("agent-1", fed.identity("agent-1")) as trainer,
    ):
        await agg.subscribe(topics.UPDATE.filter(FED))
        await trainer.subscribe(topics.INBOX.format(FED, "agent-1"))
        await trainer.subscribe(topics.GLOBAL_MODEL.format(FED))
        await agg.wait_connected(WAIT)
        await trainer.wait_connected(WAIT)
        await trainer.publish(topics.UPDATE.format(FED, "agent-1"), b"update")
        assert await receive(agg.messages()) == BusMessage(
            topics.UPDATE.format(FED, "agent-1"), b"update"
        )
        await agg.publish(topics.INBOX.format(FED, "agent-1"), b"inbox")
        await agg.publish(topics.GLOBAL_MODEL.format(FED), b"model")
        got = [await receive(trainer.messages()) for _ in range(2)]
    assert [(m.topic, m.payload) for m in got] == [
        (topics.INBOX.format(FED, "agent-1"), b"inbox"),
        (topics.GLOBAL_MODEL.format(FED), b"model"),
    ]


@pytest.mark.broker
async def test_enroll_identity_reaches_only_the_enroll_topics(fed: Federation) -> None:
    """The shared enroll identity may publish an enrollment request and read the reply, and
    nothing else: its ``join`` never reaches the aggregator, and neither the global model
    nor the inbox named after it (``fl/fed1/agent/enroll``) ever reaches it."""
    enroll_tls = fed.identity("enroll", Role.ENROLL)
    request, reply = topics.ENROLL.format(FED, "dev-9"), topics.ENROLL_REPLY.format(FED, "dev-9")
    with capture_logs() as logs:
        async with (
            fed.bus("agg", fed.identity(AGG, Role.AGGREGATOR)) as agg,
            fed.bus("enroll", enroll_tls) as enroll,
        ):
            await agg.subscribe(f"fl/{FED}/#")
            await enroll.subscribe(topics.ENROLL_REPLY.filter(FED))
            await enroll.subscribe(topics.GLOBAL_MODEL.format(FED))
            await enroll.subscribe(topics.INBOX.format(FED, "enroll"))
            await agg.wait_connected(WAIT)
            await enroll.wait_connected(WAIT)
            with pytest.raises(PublishRefusedError):  # the broker's refusal reaches us
                await enroll.publish(topics.JOIN.format(FED), b"join")
            await enroll.publish(request, b"csr")
            assert await receive(agg.messages()) == BusMessage(request, b"csr")
            await agg.publish(topics.GLOBAL_MODEL.format(FED), b"model")
            await agg.publish(topics.INBOX.format(FED, "enroll"), b"inbox")
            await agg.publish(reply, b"cert")
            assert await receive(enroll.messages()) == BusMessage(reply, b"cert")
            if fed.broker and fed.broker.kind == "nats":
                await logged(logs, 'permissions violation for publish to "fl.fed1.join"')
                await logged(logs, 'subscription to "fl.fed1.model_para.global"')
                await logged(logs, 'subscription to "fl.fed1.agent.enroll"')
    if fed.broker and fed.broker.kind == "mqtt":
        codes = await mqtt_puback_codes(fed, enroll_tls, topics.JOIN.format(FED), request)
        assert codes == ["Not authorized", "ok"]


@pytest.mark.broker
async def test_trainer_cannot_publish_another_agents_update(fed: Federation) -> None:
    """A trainer publishing on another agent's update topic is refused by the broker: the
    aggregator never receives it (its next message is the trainer's own update)."""
    tls = fed.identity("agent-1")
    forged, own = topics.UPDATE.format(FED, "agent-2"), topics.UPDATE.format(FED, "agent-1")
    with capture_logs() as logs:
        async with (
            fed.bus("agg", fed.identity(AGG, Role.AGGREGATOR)) as agg,
            fed.bus("agent-1", tls) as trainer,
        ):
            await agg.subscribe(topics.UPDATE.filter(FED))
            await agg.wait_connected(WAIT)
            await trainer.wait_connected(WAIT)
            with pytest.raises(PublishRefusedError):
                await trainer.publish(forged, b"forged")
            await trainer.publish(own, b"own")
            assert await receive(agg.messages()) == BusMessage(own, b"own")
            if fed.broker and fed.broker.kind == "nats":
                await logged(logs, 'permissions violation for publish to "fl.fed1.model_para.')
    if fed.broker and fed.broker.kind == "mqtt":
        assert await mqtt_puback_codes(fed, tls, forged, own) == ["Not authorized", "ok"]


@pytest.mark.broker
async def test_clients_without_a_certificate_of_our_ca_cannot_connect(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    """A client with no certificate, or with one issued by another CA for a valid-looking
    identity (same federation name, same agent id), never gets a session: the TLS handshake
    fails (certificate required / unknown CA)."""
    no_cert = TlsFiles(fed.root / "broker" / "ca.pem")
    foreign = fed.identity("agent-1", ca=init_ca(FED))
    with capture_logs() as logs:
        why = await refused(fed, "anonymous", no_cert, logs, caplog)
        assert "CERTIFICATE_REQUIRED" in why or "PEER_DID_NOT_RETURN_A_CERTIFICATE" in why
        caplog.clear()
        assert "UNKNOWN_CA" in await refused(fed, "foreign", foreign, logs, caplog)


@pytest.mark.broker
async def test_revoked_agent_is_refused_after_the_reload(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    """After regenerate + reload, a revoked agent can no longer connect (mosquitto: its
    certificate is in the CRL; nats-server: its user is gone), its open session is cut off
    (mosquitto: stripped of every right, nats-server: disconnected), and the other agents
    carry on."""
    assert fed.broker is not None
    revoked_tls, other_tls = fed.identity("agent-2"), fed.identity("agent-1")
    update_2, update_1 = topics.UPDATE.format(FED, "agent-2"), topics.UPDATE.format(FED, "agent-1")
    with capture_logs() as logs:
        async with (
            fed.bus("agg", fed.identity(AGG, Role.AGGREGATOR)) as agg,
            fed.bus("agent-2", revoked_tls) as revoked,
        ):
            await agg.subscribe(topics.UPDATE.filter(FED))
            await agg.wait_connected(WAIT)
            await revoked.wait_connected(WAIT)
            await revoked.publish(update_2, b"before")
            assert await receive(agg.messages()) == BusMessage(update_2, b"before")

            members = fed.members.revoke("agent-2", fed.serials["agent-2"])
            assert fed.files is not None
            regenerate(fed.files, fed.ca, members)
            fed.broker.reload()

            if fed.broker.kind == "mqtt":
                with pytest.raises(PublishRefusedError):  # PUBACK "not authorized"
                    await revoked.publish(update_2, b"after")
            else:
                await _disconnected(revoked)
            why = await refused(fed, "agent-2-again", revoked_tls, logs, caplog)
            expected = "CERTIFICATE_REVOKED" if fed.broker.kind == "mqtt" else "Authorization"
            assert expected in why
            async with fed.bus("agent-1", other_tls) as other:
                await other.publish(update_1, b"still fine")
                assert await receive(agg.messages()) == BusMessage(update_1, b"still fine")


async def _disconnected(bus: Bus) -> None:
    async with asyncio.timeout(WAIT):
        while bus.is_connected:  # type: ignore[attr-defined]
            await asyncio.sleep(0.02)


# -- the generated files, without a broker ----------------------------------------------------


def test_trainer_rights_follow_the_topic_table() -> None:
    """A trainer's rights are derived from the topic table; this list is the review point:
    a topic added to the table changes it (and fails here) until the change is accepted."""
    assert set(trainer_rules()) == {
        Rule(Access.WRITE, "fl/{federation}/join"),
        Rule(Access.WRITE, "fl/{federation}/model_para/update/{agent_id}"),
        Rule(Access.WRITE, "fl/{federation}/secagg/advertise_keys/{agent_id}"),
        Rule(Access.WRITE, "fl/{federation}/secagg/share_keys/{agent_id}"),
        Rule(Access.WRITE, "fl/{federation}/secagg/unmask/{agent_id}"),
        Rule(Access.WRITE, "fl/{federation}/metrics/{agent_id}"),
        Rule(Access.WRITE, "fl/{federation}/status/{agent_id}"),
        Rule(Access.WRITE, "fl/{federation}/renew/{agent_id}"),
        Rule(Access.WRITE, "fl/{federation}/ledger/{agent_id}"),
        Rule(Access.READ, "fl/{federation}/agent/{agent_id}"),
        Rule(Access.READ, "fl/{federation}/model_para/global"),
        Rule(Access.READ, "fl/{federation}/secagg/unmask_request"),
        Rule(Access.READ, "fl/{federation}/evaluate"),
        Rule(Access.READ, "fl/{federation}/finish"),
        Rule(Access.READ, "fl/{federation}/federation_status"),
        Rule(Access.WRITE, "fl/{federation}/peer/+/{agent_id}"),  # P2P: to any neighbour
        Rule(Access.READ, "fl/{federation}/peer/{agent_id}/+"),  # ... what is for us
        Rule(Access.READ, "fl/{federation}/revocations"),  # P2P: the CA host's CRL
    }


def test_every_table_topic_is_in_the_acl_for_its_publisher() -> None:
    """Each topic of the table is writable by its publisher and readable by the other side,
    in both renderings: trainers for agent topics, the enroll identity for the enroll ones,
    the aggregator for everything."""
    acl = render_acl(FED, aggregator=AGG).splitlines()
    users = render_users(FED, aggregator=AGG, agents=["a1"])
    assert "pattern write fl/fed1/peer/+/%u" in acl
    assert "pattern read fl/fed1/peer/%u/+" in acl
    assert '"fl.fed1.peer.*.a1",' in users
    assert '"fl.fed1.peer.a1.*",' in users
    for spec in topics.TOPICS:
        writer = spec.publisher is Role.TRAINER
        if spec is topics.PEER:
            continue  # its two rules, above
        if spec in ENROLL_TOPICS:
            line = f"topic {'write' if writer else 'read'} {spec.filter(FED)}"
            assert acl[acl.index("user enroll") :].count(line) == 1, spec.name
        else:
            mode = "write" if writer else "read"
            assert (
                f"pattern {mode} {spec.format(FED, '%u') if spec.per_agent else spec.format(FED)}"
                in acl
            )
        subject = spec.format(FED, "a1" if spec.per_agent else None).replace("/", ".")
        if spec not in ENROLL_TOPICS:
            assert f'"{subject}",' in users, spec.name
    assert "topic readwrite fl/fed1/#" in acl[acl.index(f"user {AGG}") :]


def test_enroll_identity_is_denied_everything_the_patterns_grant() -> None:
    """mosquitto applies ``pattern`` lines to every user: for each of them the enroll
    identity's block has a deny line (with ``%u`` widened to ``+``), and no allow line of it
    names a federation topic other than the two enroll topics."""
    acl = render_acl(FED, aggregator=AGG).splitlines()
    block = acl[acl.index("user enroll") :]
    for line in acl:
        if line.startswith("pattern "):
            assert f"topic deny {line.split()[2].replace('%u', '+')}" in block
    allows = [line for line in block if line.startswith("topic ") and " deny " not in line]
    assert allows == ["topic write fl/fed1/enroll/+", "topic read fl/fed1/enroll_reply/+"]


def test_shipped_templates_are_the_renderers_output() -> None:
    """broker_config/secure-*.template are generated from the renderers (one source of
    truth; regenerate with ``python -m agent.lockdown.templates``)."""
    for name, text in render_templates().items():
        assert (REPO / "broker_config" / name).read_text(encoding="utf-8") == text, name


def test_templates_render_the_same_config_by_substitution(tmp_path: Path) -> None:
    """Filling the mosquitto templates' placeholders by plain text substitution gives exactly
    what ``write_broker_config`` writes."""
    ca = init_ca(FED)
    files = write_broker_config("mqtt", ca, tmp_path, Members(AGG), port=18883)
    values = {
        "@HOST@": "127.0.0.1",
        "@PORT@": "18883",
        "@DIR@": str(tmp_path.resolve()),
        "@FEDERATION@": FED,
        "@AGGREGATOR@": AGG,
    }
    written_files = {
        "secure-mosquitto.conf.template": files.config,
        "secure-mosquitto.acl.template": tmp_path / "mosquitto.acl",
    }
    for template, written in written_files.items():
        text = (REPO / "broker_config" / template).read_text(encoding="utf-8")
        text = text.split("\n", 1)[1]  # the TEMPLATE line
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        assert text == written.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("members", "why"),
    [
        (lambda: Members(AGG, ("enroll",)), "reserved"),
        (lambda: Members(AGG, (AGG,)), "reserved"),
        (lambda: Members(AGG, ("a1",), revoked=("a1",)), "both enrolled and revoked"),
        (lambda: Members("enroll"), "cannot be the enroll identity"),
        (lambda: Members(AGG, ("a/1",)), "must be 1-64"),
    ],
)
def test_members_refuse_reserved_and_contradictory_names(members: Any, why: str) -> None:
    """mosquitto knows an identity by its CN alone, so no trainer may carry the aggregator's
    or the enroll identity's name; an agent cannot be enrolled and revoked at once; names
    must be valid (they end up in topics and config files)."""
    with pytest.raises(ConfigError, match=why):
        members()


def test_written_files_are_private_where_needed_and_keep_the_broker_certificate(
    tmp_path: Path,
) -> None:
    """The broker key is 0600; the broker certificate is issued by the CA for the listen
    host, 127.0.0.1 and localhost, and survives a regenerate; a revoked serial lands in
    the CRL and the revoked agent in a deny block."""
    ca = init_ca(FED)
    files = write_broker_config(
        "mqtt",
        ca,
        tmp_path / "b",
        Members(AGG, ("a1", "a2")),
        port=18883,
        server_names=["broker.example"],
    )
    assert stat.S_IMODE(os.stat(files.key_file).st_mode) == 0o600
    cert = load_certificate(files.cert_file)
    assert identity_of(cert).role is Role.BROKER
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in san} == {"broker.example", "127.0.0.1", "localhost"}
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    regenerate(files, ca, Members(AGG, ("a1",)).revoke("a2", 1234, when=when))
    assert load_certificate(files.cert_file) == cert
    crl = x509.load_pem_x509_crl((files.directory / "crl.pem").read_bytes())
    assert [r.serial_number for r in crl] == [1234]
    assert "user a2\ntopic deny #" in (files.directory / "mosquitto.acl").read_text()
    other = write_broker_config("nats", init_ca(FED), tmp_path / "b", Members(AGG), port=4222)
    assert load_certificate(other.cert_file) != cert  # another CA: reissued
    with pytest.raises(ConfigError, match="whitespace"):
        write_broker_config("nats", ca, tmp_path / "a b", Members(AGG), port=4222)


def _registry(ca_dir: Path) -> None:
    """A registry with an enrolled aggregator, two enrolled trainers and a revoked one."""
    ca = init_ca(FED)
    save_ca(ca, ca_dir)
    with Registry.open(ca_dir / REGISTRY_FILE) as registry:
        for agent_id, role in [
            (AGG, Role.AGGREGATOR),
            ("t1", Role.TRAINER),
            ("t2", Role.TRAINER),
            ("t3", Role.TRAINER),
        ]:
            _, cert = issue(ca, agent_id, role=role)
            registry.record_enrollment(identity_of(cert), cert)
        registry.revoke("t3")


def test_cli_writes_configs_from_agent_options_and_the_registry(tmp_path: Path) -> None:
    """``fedbus broker-config nats`` lists the registry's enrolled trainers plus ``--agent``
    ones, leaves the revoked out; ``mosquitto`` puts the revoked serial in the CRL."""
    _registry(tmp_path / "ca")
    runner = CliRunner()
    args = ["--ca-dir", str(tmp_path / "ca"), "--port", "14222", "--agent", "t9"]
    result = runner.invoke(broker_config, ["nats", *args, "--out", str(tmp_path / "n")])
    assert result.exit_code == 0, result.output
    assert "3 trainers; 1 revoked" in result.output
    conf = (tmp_path / "n" / "nats-server.conf").read_text()
    for user in ("CN=agg,OU=aggregator", "CN=t1,OU=trainer", "CN=t2,", "CN=t9,", "CN=enroll,"):
        assert user in conf
    assert "CN=t3," not in conf
    result = runner.invoke(broker_config, ["mosquitto", *args, "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    crl = x509.load_pem_x509_crl((tmp_path / "m" / "crl.pem").read_bytes())
    assert len(list(crl)) == 1
    assert "listener 14222 127.0.0.1" in (tmp_path / "m" / "mosquitto.conf").read_text()


def test_cli_without_a_registry_takes_the_agents_given(tmp_path: Path) -> None:
    """Without a registry the trainers are the ``--agent`` ids and the aggregator is
    ``--aggregator``; a CA directory without a CA is an error, not a traceback."""
    save_ca(init_ca(FED), tmp_path / "ca")
    result = CliRunner().invoke(
        broker_config,
        [
            "nats",
            "--ca-dir",
            str(tmp_path / "ca"),
            "--out",
            str(tmp_path / "n"),
            "--agent",
            "a1",
            "--aggregator",
            "boss",
        ],
    )
    assert result.exit_code == 0, result.output
    conf = (tmp_path / "n" / "nats-server.conf").read_text()
    assert "CN=boss,OU=aggregator" in conf
    assert "CN=a1,OU=trainer" in conf
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        broker_config, ["nats", "--ca-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]
    )
    assert isinstance(result.exception, IdentityError)
