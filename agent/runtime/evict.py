"""Closing a revoked agent's open broker connection (ARCHITECTURE.md §6).

A revocation refuses the agent's *next* connection (mosquitto's CRL after its reload,
nats-server's auth callout at once), but neither broker re-checks a connection already
open: without this a revoked agent's session would last until it reconnects (mosquitto) or
its user JWT expires (NATS, up to the callout's ``ttl``, an hour). The aggregator therefore
closes it when it sees the revocation (``roles.aggregator.service.watch_revocations``):

- **mosquitto**: session takeover (MQTT 5 §3.1.4: a CONNECT with a Client Identifier that
  is already connected makes the server close the old connection, DISCONNECT 0x8E). The
  aggregator connects with the agent's client id (``{federation}-{agent_id}``, what
  ``node.bus_settings`` gives every agent), Clean Start on and a Session Expiry of 0, so
  the revoked agent's persistent session and its queued messages go too, then disconnects.
  mosquitto lets any authenticated identity take a client id over; an agent that connected
  under another client id (a modified program) is not found this way (mosquitto 2.0 has
  no kick by user name outside its dynamic-security plugin, which fedbus does not use).
- **nats-server** (auth-callout mode, whose config gives the system account one NKey user,
  ``lockdown.nats_jwt.SYSTEM_SEED``): ``$SYS.REQ.SERVER.PING.CONNZ`` (with ``auth``) lists
  every server's connections with the client certificate each presented; every connection
  whose certificate subject is the agent's trainer DN is closed with
  ``$SYS.REQ.SERVER.<server id>.KICK`` ``{"cid": …}`` (nats-server >= 2.10). The subject
  comes from the verified certificate, not from anything the client chose.

The agent's reconnect is then refused and it stops (``agent.bus.refusal``).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import ssl
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
import nats
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.bus.nats_bus import close_client
from agent.bus.url import parse_broker_url
from agent.config import AgentConfig
from agent.lockdown.nats import subject_name
from agent.lockdown.nats_jwt import SYSTEM_SEED
from agent.role import Role

log = structlog.get_logger(__name__)

#: Seconds one eviction may take (connect, list, kick).
TIMEOUT = 10.0
#: Seconds between a broker reload (SIGHUP) and the eviction.
SETTLE = 1.0
#: Seconds the servers' CONNZ answers are collected (one per server of a cluster).
GATHER = 1.0


class Evictor(Protocol):
    """Closes the open connections of ``agent_ids``; returns how many it closed (None:
    cannot tell, MQTT). Raises nothing: a failure is logged (the revocation stands)."""

    async def evict(self, agent_ids: Sequence[str]) -> int | None: ...


class MqttEvictor:
    """Session takeover on mosquitto (see the module docstring)."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext, federation: str) -> None:
        self._host, self._port, self._tls, self._federation = host, port, tls, federation

    async def evict(self, agent_ids: Sequence[str]) -> int | None:
        for agent_id in agent_ids:
            await self._take_over(agent_id)
        return None

    async def _take_over(self, agent_id: str) -> None:
        client_id = f"{self._federation}-{agent_id}"
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,
            properties=properties,
            tls_context=self._tls,
            timeout=TIMEOUT,
        )
        try:
            async with asyncio.timeout(TIMEOUT):
                async with client:
                    pass  # connected: the broker closed the agent's connection and session
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            log.warning("eviction_failed", agent_id=agent_id, detail=str(exc)[:200])
            return
        log.info("agent_evicted", agent_id=agent_id, broker="mqtt", client_id=client_id)


class NatsEvictor:
    """CONNZ and KICK through nats-server's system account (see the module docstring)."""

    def __init__(self, url: str, *, tls: ssl.SSLContext, seed: Path, federation: str) -> None:
        self._url, self._tls, self._seed, self._federation = url, tls, seed, federation

    async def evict(self, agent_ids: Sequence[str]) -> int | None:
        subjects = {subject_name(a, self._federation, Role.TRAINER): a for a in agent_ids}
        host = parse_broker_url(self._url).host
        try:
            async with asyncio.timeout(TIMEOUT):
                nc = await nats.connect(
                    self._url,
                    tls=self._tls,
                    tls_hostname=host,
                    nkeys_seed=str(self._seed),
                    name="fedbus-evict",
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                )
                try:
                    kicked = await _kick(nc, subjects)
                finally:
                    await close_client(nc)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.warning("eviction_failed", agents=sorted(agent_ids), detail=repr(exc)[:200])
            return None
        return len(kicked)


async def _kick(nc: Any, subjects: dict[str, str]) -> list[str]:
    """Close every connection whose client certificate's subject is a key of ``subjects``;
    the agents (its values) of the connections closed."""
    answers: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        try:
            answers.append(json.loads(msg.data))
        except ValueError:
            return

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    query = json.dumps({"auth": True, "limit": 100_000}).encode()
    await nc.publish("$SYS.REQ.SERVER.PING.CONNZ", query, reply=inbox)
    await nc.flush()
    await asyncio.sleep(GATHER)
    await sub.unsubscribe()
    kicked: list[str] = []
    for answer in answers:
        server = str(answer.get("server", {}).get("id", ""))
        for connection in answer.get("data", {}).get("connections", []) or []:
            certs = connection.get("tls_peer_certs") or []
            agent_id = subjects.get(str(certs[0].get("subject"))) if certs else None
            if server and agent_id is not None:
                kick = json.dumps({"cid": connection["cid"]}).encode()
                await nc.request(f"$SYS.REQ.SERVER.{server}.KICK", kick, timeout=TIMEOUT)
                log.info("agent_evicted", agent_id=agent_id, broker="nats", server=server)
                kicked.append(agent_id)
    return kicked


def evictor_for(config: AgentConfig, tls: ssl.SSLContext | None) -> Evictor | None:
    """The aggregator's evictor: MQTT over TLS; NATS over TLS when the CA directory holds
    the system account's seed (``SYSTEM_SEED``, written by ``fedbus broker-config nats
    --auth-callout``); None otherwise (plaintext brokers have no identities to refuse)."""
    address = parse_broker_url(config.bus_url)
    if tls is None or not address.tls:
        return None
    if address.transport == "mqtt":
        return MqttEvictor(address.host, address.port, tls=tls, federation=config.federation)
    ca_dir = config.identity.ca_dir
    if ca_dir is None or not (ca_dir / SYSTEM_SEED).is_file():
        return None
    return NatsEvictor(
        config.bus_url, tls=tls, seed=ca_dir / SYSTEM_SEED, federation=config.federation
    )


def on_revoked(
    evictor: Evictor | None, refresh_crl: Callable[[], object] | None = None
) -> Callable[[Sequence[str]], Coroutine[Any, Any, None]]:
    """What the aggregator does for agents it sees revoked (``watch_revocations``): the CRL
    re-signed and the broker reloaded at once (``refresh_crl``: ``CrlRefresher.refresh``,
    so that the evicted agent's reconnect meets the new CRL), then their connections
    closed."""

    async def revoked(agent_ids: Sequence[str]) -> None:
        if refresh_crl is not None:
            try:
                await asyncio.to_thread(refresh_crl)
            except (OSError, sqlite3.Error) as exc:
                log.warning("crl_refresh_failed", detail=str(exc))
            await asyncio.sleep(SETTLE)  # mosquitto rereads its files just after the SIGHUP
        if evictor is not None:
            await evictor.evict(agent_ids)

    return revoked
