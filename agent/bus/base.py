"""The ``Bus`` seam: one small protocol that every transport implements.

Topics are canonical ``/``-separated names with MQTT wildcards (``+`` one level, ``#`` the
rest); adapters map them for their broker (NATS: ``/``→``.``, ``+``→``*``, ``#``→``>``).

A bus is an async context manager. Entering it starts a supervisor that connects, and
reconnects with capped, jittered exponential backoff, replaying every subscription after each
reconnect. Incoming messages from all subscriptions arrive on one bounded queue, read with
``async for message in bus.messages()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

#: Called after every successful (re)connect, once subscriptions are replayed.
#: The argument is True on a reconnect, False on the first connect.
ConnectCallback = Callable[[bool], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One message as received: canonical ``topic`` and raw ``payload`` bytes."""

    topic: str
    payload: bytes
    retained: bool = False


@dataclass(frozen=True, slots=True)
class LastWill:
    """A message the broker publishes for us when our session dies (MQTT will).

    On NATS, which has no will, the adapter publishes it on a clean close only.
    """

    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True, slots=True)
class BusSettings:
    """Transport settings shared by every adapter.

    Attributes:
        client_id: broker client identifier (MQTT client id, NATS connection name).
        max_payload: largest payload in bytes we publish or accept; larger incoming
            messages are dropped and logged by the adapter.
        queue_size: bound of the incoming message queue; when full the adapter drops the
            newest message and logs ``bus_queue_full``.
        connect_timeout: seconds for one connection attempt.
        publish_timeout: seconds a publish may take, waiting for a broker session and
            its acknowledgement included, before ``NotConnectedError``.
        backoff_initial, backoff_max: reconnect delay bounds in seconds; the delay doubles
            per failed attempt and is jittered uniformly in [delay/2, delay].
        keepalive: seconds between liveness pings (MQTT keepalive, NATS ping interval);
            a silently dead connection is noticed after about two of them.
        will: optional last will, or a function returning it, called for each new
            connection (so a signed will carries a fresh message id and timestamp).
        session_expiry: MQTT 5 Session Expiry Interval in seconds, with Clean Start off:
            the broker keeps our subscriptions and queues QoS 1 messages for us while we are
            away (and, with broker persistence, across its restart); 0: a clean session per
            connection. NATS: seconds of our own publishes replayed after a reconnect
            (``agent.bus.nats_bus``); 0: none.
        required_payload: the largest payload this agent will publish (its chunk size plus
            framing, ``agent.messages.chunks``); a broker that announces a lower limit at
            connect (NATS ``max_payload`` in INFO, MQTT 5 Maximum Packet Size in CONNACK)
            fails the bus with a ``ConfigError`` naming ``required_by``, the setting to change.
        required_by: the setting that decides ``required_payload`` (for that message).
        refusal_grace: seconds the bus keeps retrying a broker that refuses us as not
            authorized (NATS ``Authorization Violation``, MQTT CONNACK 0x86/0x87), which
            may be an enrollment the broker does not know yet, before it stops with
            ``BrokerRefusedError`` (``agent.bus.refusal``); a revoked certificate (TLS alert)
            stops it at once.
    """

    client_id: str
    max_payload: int = 8 * 1024 * 1024
    queue_size: int = 1024
    connect_timeout: float = 5.0
    publish_timeout: float = 10.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    keepalive: int = 30
    will: LastWill | Callable[[], LastWill] | None = None
    session_expiry: int = 300
    required_payload: int = 0
    required_by: str = "max_payload"
    refusal_grace: float = 600.0

    def current_will(self) -> LastWill | None:
        """The will for a connection being opened now."""
        return self.will() if callable(self.will) else self.will


class Bus(Protocol):
    """A publish/subscribe transport. Not re-entrant; reusable after exit."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once a broker session is up and subscriptions are acknowledged.

        Raises:
            BusTimeoutError: not connected within ``timeout`` seconds.
            ConfigError: the broker's limit is below ``BusSettings.required_payload``.
        """
        ...

    @property
    def broker_limit(self) -> int | None:
        """The largest payload the broker said it accepts on the last connect (None: not
        connected yet, or the broker announces none)."""
        ...

    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe (QoS 1 where the broker has QoS) now and after every reconnect."""
        ...

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish ``payload`` at least once (QoS 1). ``retain`` keeps it for late
        subscribers on MQTT; NATS core has no retained messages and ignores it.

        Raises:
            NotConnectedError: no broker session came up within ``publish_timeout``.
            OversizedError: ``payload`` is larger than ``max_payload``.
        """
        ...

    def messages(self) -> AsyncIterator[BusMessage]:
        """All incoming messages of all subscriptions, in arrival order, until exit."""
        ...

    def on_connect(self, callback: ConnectCallback) -> None:
        """Register ``callback`` to run after each (re)connect."""
        ...
