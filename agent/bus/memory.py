"""An in-process broker and the ``Bus`` adapter for it, for unit tests without a network.

``MemoryBroker`` follows MQTT semantics: retained messages (an empty retained payload clears
the topic), ``+``/``#`` filters, one delivery per client however many of its filters match,
last wills published when a client is dropped uncleanly, and session take-over when a client
id connects twice. Faults are simulated with :meth:`MemoryBroker.drop` (kill one client's
connection), :meth:`MemoryBroker.stop` / :meth:`MemoryBroker.start` (refuse connections)
and ``MemoryBroker.denied`` (filters whose subscription is refused, like an ACL).

``MemoryBus`` is the same supervised bus as the MQTT and NATS adapters, so reconnect,
backoff, resubscribe and on_connect callbacks behave identically.
"""

from __future__ import annotations

import asyncio

import structlog

from agent.bus.base import BusSettings, LastWill
from agent.bus.session import Deliver, Session, SessionLostError
from agent.bus.supervisor import SupervisedBus
from agent.bus.topics import topic_matches, validate_filter, validate_topic
from agent.errors import TransportError

log = structlog.get_logger(__name__)


class MemoryConnection:
    """One client's connection to a :class:`MemoryBroker`; a ``Session`` for MemoryBus."""

    def __init__(
        self, broker: MemoryBroker, client_id: str, deliver: Deliver, will: LastWill | None
    ) -> None:
        self.client_id = client_id
        self._broker = broker
        self._deliver = deliver
        self._will = will
        self._filters: list[str] = []
        self._lost = asyncio.Event()
        self._reason = ""

    @property
    def alive(self) -> bool:
        return not self._lost.is_set()

    @property
    def max_payload(self) -> int | None:
        return self._broker.max_payload

    def wants(self, topic: str) -> bool:
        return any(topic_matches(topic_filter, topic) for topic_filter in self._filters)

    def receive(self, topic: str, payload: bytes, *, retained: bool) -> None:
        if self.alive:
            self._deliver(topic, payload, retained)

    async def subscribe(self, topic_filter: str) -> None:
        self._check()
        validate_filter(topic_filter)
        if topic_filter in self._broker.denied:
            raise TransportError(f"subscription to {topic_filter!r} not authorized")
        if topic_filter not in self._filters:
            self._filters.append(topic_filter)
        for topic, payload in self._broker.retained_matching(topic_filter):
            self.receive(topic, payload, retained=True)

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self._check()
        self._broker.publish(topic, payload, retain=retain)

    async def run(self) -> str:
        await self._lost.wait()
        return self._reason

    async def close(self, *, clean: bool) -> None:
        self._broker.disconnect(self, clean=clean)

    def lose(self, reason: str) -> None:
        """Called by the broker: the connection is gone (the will is the broker's job)."""
        if self.alive:
            self._reason = reason
            self._lost.set()

    @property
    def will(self) -> LastWill | None:
        return self._will

    def _check(self) -> None:
        if not self.alive:
            raise SessionLostError(f"memory connection lost: {self._reason}")


class MemoryBroker:
    """An in-process publish/subscribe hub with retained messages."""

    def __init__(self) -> None:
        self._connections: dict[str, MemoryConnection] = {}
        self._retained: dict[str, bytes] = {}
        self._running = True
        self.published: list[tuple[str, bytes, bool]] = []  # every publish, for assertions
        self.denied: set[str] = set()  # filters whose subscription is refused (an ACL)
        self.max_payload: int | None = None  # the limit it announces at connect, like NATS

    @property
    def running(self) -> bool:
        return self._running

    @property
    def client_ids(self) -> list[str]:
        """Clients connected now."""
        return list(self._connections)

    def connect(
        self, client_id: str, deliver: Deliver, will: LastWill | None = None
    ) -> MemoryConnection:
        if not self._running:
            raise TransportError("memory broker is stopped")
        previous = self._connections.get(client_id)
        if previous is not None:
            self._kill(previous, "session taken over")
        connection = MemoryConnection(self, client_id, deliver, will)
        self._connections[client_id] = connection
        return connection

    def disconnect(self, connection: MemoryConnection, *, clean: bool) -> None:
        """The client leaves; a clean leave does not publish its will."""
        if self._connections.get(connection.client_id) is connection:
            if clean:
                del self._connections[connection.client_id]
                connection.lose("closed by client")
            else:
                self._kill(connection, "closed by client without DISCONNECT")
        else:
            connection.lose("closed by client")

    def drop(self, client_id: str) -> None:
        """Kill ``client_id``'s connection as a network failure would (its will is sent)."""
        connection = self._connections.get(client_id)
        if connection is None:
            raise KeyError(f"no client {client_id!r} is connected")
        self._kill(connection, "dropped by broker")

    def stop(self) -> None:
        """Drop every client and refuse new connections until :meth:`start`."""
        self._running = False
        for connection in list(self._connections.values()):
            self._kill(connection, "broker stopped")
        log.debug("memory_broker_stopped")

    def start(self) -> None:
        self._running = True

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        validate_topic(topic)
        self.published.append((topic, payload, retain))
        if retain:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)
        for connection in list(self._connections.values()):
            if connection.wants(topic):
                connection.receive(topic, payload, retained=False)

    def retained(self, topic: str) -> bytes | None:
        return self._retained.get(topic)

    def retained_matching(self, topic_filter: str) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in self._retained.items() if topic_matches(topic_filter, t)]

    def _kill(self, connection: MemoryConnection, reason: str) -> None:
        if self._connections.get(connection.client_id) is connection:
            del self._connections[connection.client_id]
        if not connection.alive:
            return
        connection.lose(reason)
        will = connection.will
        if will is not None:
            self.publish(will.topic, will.payload, retain=will.retain)


class MemoryBus(SupervisedBus):
    """The supervised ``Bus`` against a :class:`MemoryBroker`."""

    transport = "memory"

    def __init__(self, broker: MemoryBroker, settings: BusSettings) -> None:
        super().__init__(settings)
        self.broker = broker

    async def _open_session(self, deliver: Deliver) -> Session:
        await asyncio.sleep(0)  # a real connect yields; so does this one
        return self.broker.connect(self.settings.client_id, deliver, self.settings.current_will())
