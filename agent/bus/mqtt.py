"""The MQTT 5 adapter, on aiomqtt 2.x (which wraps paho-mqtt).

aiomqtt has no automatic reconnect: one ``aiomqtt.Client`` is one connection. Every connect
attempt of the supervisor (see :mod:`agent.bus.supervisor`) builds a fresh client, so no
state leaks between connections. Subscriptions and publishes use QoS 1; the last will
(QoS 1) is registered on every connection; a clean exit sends DISCONNECT, so the broker
publishes the will only when the connection dies (crash, SIGKILL, network loss, keepalive
timeout).

Sessions are persistent (MQTT 5 §3.1.2.4 and §3.1.2.11.2): every connection sets Clean Start
off and a Session Expiry Interval of ``BusSettings.session_expiry`` seconds, so the broker
keeps our subscriptions and queues the QoS 1 messages published to us while we reconnect; with
mosquitto's ``persistence true`` (``agent.lockdown.mosquitto``, ``broker_config/``) they also
survive a broker restart. ``session_expiry = 0`` is a clean session, as before.

A publish returns once the broker's PUBACK arrived, and a PUBACK reason code >= 0x80
(MQTT 5 §3.4.2.1: 0x87 Not authorized, 0x97 Quota exceeded, …) raises
``PublishRefusedError``: aiomqtt drops the reason code, so the session reads it in paho's
``on_publish`` callback, by message id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import socket
import ssl
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.bus.base import BusSettings
from agent.bus.mqtt_keepalive import tick_per_keepalive
from agent.bus.refusal import Refusal, TlsAlertWatch
from agent.bus.session import Deliver, Session, SessionLostError
from agent.bus.supervisor import SupervisedBus
from agent.errors import ConnectRefusedError, PublishRefusedError, TransportError

log = structlog.get_logger(__name__)

#: What an MQTT PUBLISH packet adds to its payload, topic included (fedbus topics are short):
#: a broker's Maximum Packet Size less this is the largest payload it takes.
PACKET_OVERHEAD = 1024
#: aiomqtt's per-operation timeout when the bus already bounds the operation itself.
_UNBOUNDED = math.inf
_QOS = 1
#: CONNACK reason codes (MQTT 5 §3.2.2.2) that refuse this identity: bad user name or
#: password, not authorized, banned
_NOT_AUTHORIZED = frozenset({0x86, 0x87, 0x8A})

# A connect that is cancelled (timeout, bus exit) may still complete in aiomqtt's executor
# thread; those clients are disconnected in the background and kept here until then.
_orphans: set[asyncio.Task[None]] = set()


class MqttSession:
    """One aiomqtt connection, as a ``Session``."""

    def __init__(
        self, client: aiomqtt.Client, deliver: Deliver, *, max_packet: int | None = None
    ) -> None:
        self._client = client
        self._deliver = deliver
        # PUBACK reason codes by message id (aiomqtt's own on_publish ignores them).
        self._acks: dict[int, asyncio.Future[ReasonCode | int]] = {}
        paho_client = client._client
        aiomqtt_on_publish = client._on_publish

        def on_publish(
            c: paho.Client, userdata: object, mid: int, code: ReasonCode, props: Properties
        ) -> None:
            ack = self._acks.pop(mid, None)
            if ack is not None and not ack.done():
                ack.set_result(code)
            aiomqtt_on_publish(c, userdata, mid, code, props)

        paho_client.on_publish = on_publish
        self.max_payload = None if max_packet is None else max_packet - PACKET_OVERHEAD

    async def subscribe(self, topic_filter: str) -> None:
        try:
            granted = await self._client.subscribe(topic_filter, qos=_QOS, timeout=_UNBOUNDED)
        except aiomqtt.MqttError as exc:
            raise SessionLostError(f"subscribe to {topic_filter!r} failed: {exc}") from exc
        for code in granted:
            failed = code.is_failure if isinstance(code, ReasonCode) else code >= 0x80
            if failed:
                raise TransportError(f"broker refused the subscription {topic_filter!r}: {code}")

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        # aiomqtt's publish() minus its wait, so the PUBACK's reason code is ours to read; the
        # callback runs on this loop, after this synchronous part, so no ack is missed.
        info = self._client._client.publish(topic, payload, qos=_QOS, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise SessionLostError(f"publish failed: {paho.error_string(info.rc)}")
        ack: asyncio.Future[ReasonCode | int] = asyncio.get_running_loop().create_future()
        self._acks[info.mid] = ack
        try:
            code = await ack
        finally:
            self._acks.pop(info.mid, None)
        failed = code.is_failure if isinstance(code, ReasonCode) else code >= 0x80
        if failed:
            raise PublishRefusedError(topic, str(code))

    async def run(self) -> str:
        try:
            async for message in self._client.messages:
                self._deliver(message.topic.value, message.payload, message.retain)
        except aiomqtt.MqttError as exc:
            return str(exc.__cause__ or exc)
        return "message stream ended"

    async def close(self, *, clean: bool) -> None:
        # aiomqtt sends DISCONNECT if the connection is still up (no will), else returns.
        del clean
        try:
            await self._client.__aexit__(None, None, None)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"disconnect failed: {exc}") from exc


class MqttBus(SupervisedBus):
    """``Bus`` over MQTT 5 (``mqtt://`` plain, ``mqtts://`` with ``tls``)."""

    transport = "mqtt"

    def __init__(
        self,
        host: str,
        port: int,
        settings: BusSettings,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(settings)
        self.host = host
        self.port = port
        self._tls = tls

    def _client(self, logger: logging.Logger | None = None) -> aiomqtt.Client:
        settings = self.settings
        will = None
        last_will = settings.current_will()
        if last_will is not None:
            will = aiomqtt.Will(
                last_will.topic, last_will.payload, qos=_QOS, retain=last_will.retain
            )
        properties = None
        if settings.session_expiry > 0:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.session_expiry
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=settings.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=settings.session_expiry == 0,
            properties=properties,
            will=will,
            tls_context=self._tls,
            timeout=settings.connect_timeout,
            keepalive=settings.keepalive,
            max_queued_incoming_messages=settings.queue_size,
            logger=logger,
        )
        tick_per_keepalive(client, settings.keepalive)  # an idle agent sleeps (issue 15)
        return client

    async def _open_session(self, deliver: Deliver) -> Session:
        alerts = TlsAlertWatch()  # a TLS alert refusing us, which aiomqtt does not report
        client = self._client(alerts.logger)
        connack = _watch_connack(client)
        connecting = asyncio.ensure_future(client.__aenter__())
        try:
            waits: set[asyncio.Future[Any]] = {connecting, alerts.refused}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if alerts.refused.done():
                connecting.cancel()  # aiomqtt would wait for a CONNACK that never comes
                raise alerts.refused.result()
            connecting.result()
        except aiomqtt.MqttError as exc:
            _close_sockets(client)
            raise _connect_error(self.where, exc) from exc
        except (asyncio.CancelledError, ConnectRefusedError):
            connecting.add_done_callback(functools.partial(_disconnect_orphan, client))
            raise
        _no_delay(client)
        return MqttSession(client, deliver, max_packet=connack.get("MaximumPacketSize"))

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def _connect_error(where: str, exc: aiomqtt.MqttError) -> TransportError:
    """``exc`` as ours: a CONNACK refusing this identity is a ``ConnectRefusedError``."""
    detail = f"cannot connect to mqtt broker {where}: {exc}"
    rc = exc.rc if isinstance(exc, MqttConnectError) else None
    code = rc.value if isinstance(rc, ReasonCode) else rc
    if isinstance(code, int) and code in _NOT_AUTHORIZED:
        return ConnectRefusedError(str(Refusal.NOT_AUTHORIZED), detail)
    return TransportError(detail)


def _watch_connack(client: aiomqtt.Client) -> dict[str, int]:
    """The CONNACK properties we need (MQTT 5 §3.2.2.3.6 Maximum Packet Size), filled in when
    it arrives. aiomqtt drops CONNACK's properties, so paho's callback is wrapped (private)."""
    seen: dict[str, int] = {}
    paho = client._client
    inner = paho.on_connect

    def on_connect(*args: Any) -> None:
        properties = args[4] if len(args) > 4 else None
        size = getattr(properties, "MaximumPacketSize", None)
        if isinstance(size, int):
            seen["MaximumPacketSize"] = size
        if inner is not None:
            inner(*args)

    paho.on_connect = on_connect
    return seen


def _no_delay(client: aiomqtt.Client) -> None:
    """Disable Nagle's algorithm on the client socket, which paho leaves on.

    With it on, a burst of small publishes (a cohort's fit instructions) waits for the broker's
    delayed ACK: about 40 ms per burst, measured in bench/demo.py (0.19 s a round on MQTT
    against 0.055 s on NATS, whose client sets TCP_NODELAY).
    """
    sock = client._client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close_sockets(client: aiomqtt.Client) -> None:
    """Close the sockets of a client whose connect failed.

    aiomqtt only resets its futures when CONNACK does not come (timeout, or a broker that
    accepts TCP but never answers); paho's socket stays open and registered with the event
    loop. There is no public API for this, hence the private calls.
    """
    client._client._reset_sockets()


def _disconnect_orphan(client: aiomqtt.Client, connecting: asyncio.Future[object]) -> None:
    """Disconnect a client whose abandoned connect completed after all."""
    if connecting.cancelled() or connecting.exception() is not None:
        _close_sockets(client)
        return
    log.info("bus_orphan_disconnecting", transport="mqtt", client_id=client.identifier)
    task = asyncio.get_running_loop().create_task(_exit_quietly(client))
    _orphans.add(task)
    task.add_done_callback(_orphans.discard)


async def _exit_quietly(client: aiomqtt.Client) -> None:
    try:
        await client.__aexit__(None, None, None)
    except aiomqtt.MqttError as exc:
        log.info("bus_orphan_disconnect_failed", transport="mqtt", reason=str(exc))
