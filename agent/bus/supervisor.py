"""Connection supervision shared by every adapter: the ``Bus`` behaviour minus the wire.

An adapter only knows how to open one :class:`~agent.bus.session.Session` (one broker
connection that never reconnects by itself). :class:`SupervisedBus` owns everything else:

- a supervisor task, started by ``__aenter__`` and cancelled and awaited by ``__aexit__``,
  that connects, replays every subscription, marks the bus connected, runs the on_connect
  callbacks (concurrently with delivery), waits until the session ends, and reconnects after
  a capped, jittered exponential backoff (reset after every successful connect);
- ``publish`` waiting up to ``publish_timeout`` for a session, retried on the next if lost
  mid-publish (at least once); the bounded inbox drops oversized messages and overflow (logged);
- for an adapter whose broker keeps nothing for us (``replay_window`` > 0: NATS), our
  publishes of the last seconds re-published after each reconnect (``agent.bus.replay``).

Log events: ``bus_connected``, ``bus_disconnected`` (reason), ``bus_reconnecting`` (attempt,
delay), ``bus_connect_failed``, ``bus_closed``, ``bus_message_dropped``, ``bus_queue_full``.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import ClassVar, Self

import structlog

from agent.bus.admission import admitted
from agent.bus.backoff import Backoff
from agent.bus.base import BusMessage, BusSettings, ConnectCallback
from agent.bus.inbox import Inbox
from agent.bus.refusal import RefusalWatch
from agent.bus.replay import ReplayLog, republish
from agent.bus.session import (
    Deliver,
    LiveSession,
    Session,
    SessionEndedError,
    SessionLostError,
    race,
)
from agent.bus.topics import validate_filter, validate_topic
from agent.errors import (
    BrokerRefusedError,
    BusTimeoutError,
    ConfigError,
    ConnectRefusedError,
    NotConnectedError,
    OversizedError,
    TransportError,
)

log = structlog.get_logger(__name__)
#: Seconds ``__aexit__`` waits for the cancelled supervisor before cancelling it again.
CANCEL_AGAIN = 1.0


class SupervisedBus(abc.ABC):
    """Implements ``agent.bus.base.Bus`` on top of :meth:`_open_session`."""

    #: Adapter name bound into every log line.
    transport: ClassVar[str] = "bus"
    #: Seconds of our publishes re-published after a reconnect (0: the broker keeps sessions).
    replay_window: ClassVar[float] = 0.0

    def __init__(self, settings: BusSettings) -> None:
        if settings.max_payload < 1 or settings.queue_size < 1:
            raise ConfigError("max_payload and queue_size must be positive")
        self.settings = settings
        self._backoff = Backoff.from_settings(settings)
        self._log = log.bind(transport=self.transport, client_id=settings.client_id)
        self._subscriptions: dict[str, None] = {}  # an insertion-ordered set
        self._callbacks: list[ConnectCallback] = []
        self._inbox = Inbox(settings.queue_size)
        self._connected = asyncio.Event()  # set exactly while self._live is not None
        self._live: LiveSession | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._replay_log = (
            ReplayLog(self.replay_window)
            if self.replay_window > 0 and settings.session_expiry > 0
            else None
        )
        self._broker_limit: int | None = None
        #: set when the broker cannot carry what this agent sends; the bus stops connecting
        self._unusable: ConfigError | BrokerRefusedError | None = None
        self._failed = asyncio.Event()
        self._refusals = RefusalWatch(settings.refusal_grace)

    @abc.abstractmethod
    async def _open_session(self, deliver: Deliver) -> Session:
        """Connect once or raise ``TransportError``; clean up if cancelled (timeout)."""

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._supervisor is not None:
            raise RuntimeError("a bus is reusable but not re-entrant")
        self._closing = False
        self._inbox.reopen()
        name = f"bus-supervisor-{self.transport}-{self.settings.client_id}"
        self._supervisor = asyncio.create_task(self._supervise(), name=name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._supervisor = self._supervisor, None
        if task is None:
            return
        self._closing = True
        # nats-py swallows a CancelledError that lands in some of its awaits (its close()
        # among them), and the supervisor would then go on reconnecting: cancel again until
        # it ends (it also stops by itself at its next turn once ``_closing`` is set).
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_AGAIN)  # never raises into us
        self._inbox.close()
        if not task.cancelled() and task.exception() is not None:
            self._log.error("bus_supervisor_crashed", exc_info=task.exception())

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    @property
    def broker_limit(self) -> int | None:
        return self._broker_limit

    # -- the Bus protocol --------------------------------------------------------------

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if self._supervisor is None:
            raise NotConnectedError("the bus is not open; use `async with bus:`")
        try:
            async with asyncio.timeout(timeout):
                connected = asyncio.ensure_future(self._connected.wait())
                failed = asyncio.ensure_future(self._failed.wait())
                try:
                    await asyncio.wait({connected, failed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    connected.cancel()
                    failed.cancel()
        except TimeoutError as exc:
            raise BusTimeoutError(f"no broker session within {timeout} s") from exc
        if self._unusable is not None and not self._connected.is_set():
            raise self._unusable

    def on_connect(self, callback: ConnectCallback) -> None:
        self._callbacks.append(callback)

    async def subscribe(self, topic_filter: str) -> None:
        validate_filter(topic_filter)
        if topic_filter in self._subscriptions:
            return
        self._subscriptions[topic_filter] = None
        live = self._live
        if live is None:
            return  # the supervisor replays it before the bus counts as connected
        try:
            await race(live, live.session.subscribe(topic_filter))
        except (SessionEndedError, SessionLostError):
            return  # replayed on the next connect
        except TransportError:
            del self._subscriptions[topic_filter]
            raise

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        validate_topic(topic)
        if len(payload) > self.settings.max_payload:
            raise OversizedError(len(payload), self.settings.max_payload)
        if self._broker_limit is not None and len(payload) > self._broker_limit:
            # mosquitto would cut the connection over it: refuse before sending
            raise OversizedError(len(payload), self._broker_limit)
        if self._supervisor is None or isinstance(self._unusable, BrokerRefusedError):
            raise NotConnectedError(f"no bus: {self._unusable or 'use `async with bus:`'}")
        timeout = self.settings.publish_timeout
        try:
            async with asyncio.timeout(timeout):
                while True:
                    while (live := self._live) is None:
                        await self._connected.wait()
                    try:
                        await race(live, live.session.publish(topic, payload, retain=retain))
                    except SessionEndedError:
                        continue
                    except SessionLostError as exc:
                        self._end(live, f"publish failed: {exc}")
                        continue
                    if self._replay_log is not None:
                        self._replay_log.record(topic, payload, retain=retain)
                    return
        except TimeoutError as exc:
            raise NotConnectedError(
                f"publish to {topic!r} not acknowledged by a broker within {timeout} s"
                f" (connected now: {self.is_connected})"
            ) from exc

    async def messages(self) -> AsyncIterator[BusMessage]:
        """Raises BrokerRefusedError once the broker refused us for good (agent.bus.refusal)."""
        while (message := await self._inbox.get()) is not None:
            yield message
        if isinstance(self._unusable, BrokerRefusedError):
            raise self._unusable

    # -- supervision -------------------------------------------------------------------

    def _deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        size, limit = len(payload), self.settings.max_payload
        if size > limit:
            self._log.warning(
                "bus_message_dropped", reason="oversized", topic=topic, size=size, limit=limit
            )
        elif not self._inbox.put(BusMessage(topic, payload, retained)):
            self._log.warning("bus_queue_full", topic=topic, size=size, queue_size=len(self._inbox))

    def _end(self, live: LiveSession, reason: str) -> None:
        live.end(reason)
        if self._live is live:
            self._live = None
            self._connected.clear()

    async def _supervise(self) -> None:
        attempt = 0  # reconnect attempts since the last successful connect
        reconnect = False
        while not self._closing:  # a swallowed cancellation must not keep us reconnecting
            if attempt:
                delay = self._backoff.delay(attempt)
                self._log.info("bus_reconnecting", attempt=attempt, delay=round(delay, 3))
                await asyncio.sleep(delay)
            try:
                async with admitted(), asyncio.timeout(self.settings.connect_timeout):
                    session = await self._open_session(self._deliver)
            except (TransportError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                self._log.warning("bus_connect_failed", attempt=attempt, reason=reason)
                if isinstance(exc, ConnectRefusedError) and self._stop_refused(exc):
                    return
                attempt += 1
                continue
            except Exception:  # noqa: BLE001 - an adapter bug must not end reconnecting
                self._log.exception("bus_connect_failed", attempt=attempt, reason="bug")
                attempt += 1
                continue
            if self._refuse(session):
                await self._close(session, reason="broker limit too low", connected=False)
                return
            try:
                connected = await self._serve(session, reconnect=reconnect)
            except Exception:  # noqa: BLE001 - a bug in one session must not end reconnecting
                self._log.exception("bus_session_failed")
                connected = False
            if connected:
                self._refusals.connected()
                reconnect, attempt = True, 1
            else:
                attempt += 1

    def _refuse(self, session: Session) -> bool:
        """Learn the broker's limit; True (and the bus fails) when it is below what we send."""
        limit = self._broker_limit = session.max_payload
        need = self.settings.required_payload
        if limit is None or need <= limit:
            return False
        self._unusable = ConfigError(
            f"the broker at {self.where} accepts payloads of at most {limit} bytes, but "
            f"{self.settings.required_by} needs {need}: lower that setting or raise the "
            "broker's limit (NATS max_payload, mosquitto max_packet_size)"
        )
        self._log.error("bus_broker_limit_too_low", limit=limit, needed=need)
        self._failed.set()
        return True

    def _stop_refused(self, exc: ConnectRefusedError) -> bool:
        """True (the bus fails, its messages() raises) when the broker refuses us for good."""
        stop = self._refusals.refused(exc, self.where)
        if stop is not None:
            self._log.error("bus_refused_by_broker", reason=stop.reason, consequence="stopping")
            self._unusable = stop
            self._failed.set()
            self._inbox.close()
        return stop is not None

    @property
    def where(self) -> str:
        """Where the broker is, for messages (adapters say host:port)."""
        return self.transport

    async def _serve(self, session: Session, *, reconnect: bool) -> bool:
        """Run one session to its end; True if it got as far as connected."""
        live = LiveSession(session)
        connected = False
        callbacks: asyncio.Task[None] | None = None
        try:
            replayed = 0
            while replayed < len(self._subscriptions):  # subscribe() may add some meanwhile
                replayed = await race(live, self._replay(session, replayed))
            self._live = live  # no await since the check: no subscription can slip through
            self._connected.set()
            connected = True
            self._log.info(
                "bus_connected", reconnect=reconnect, subscriptions=len(self._subscriptions)
            )
            callbacks = asyncio.create_task(
                self._run_callbacks(reconnect, live), name="bus-on-connect"
            )
            self._end(live, await race(live, session.run()))
        except SessionEndedError:
            pass
        except TransportError as exc:
            self._end(live, str(exc) or type(exc).__name__)
        finally:
            self._end(live, "bus closing" if self._closing else "session failed")
            if callbacks is not None and not callbacks.done():
                callbacks.cancel()
                await asyncio.wait({callbacks})
            await self._close(session, reason=live.reason, connected=connected)
        return connected

    async def _close(self, session: Session, *, reason: str, connected: bool) -> None:
        clean = self._closing
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await session.close(clean=clean)
        except (TransportError, TimeoutError) as exc:
            self._log.warning("bus_close_failed", reason=str(exc) or type(exc).__name__)
        if clean:
            self._log.info("bus_closed")
        else:
            self._log.warning("bus_disconnected", reason=reason, was_connected=connected)

    async def _replay(self, session: Session, done: int) -> int:
        """Subscribe every filter from index ``done`` on; return how many are done."""
        while done < len(self._subscriptions):
            topic_filter = list(self._subscriptions)[done]
            try:
                await session.subscribe(topic_filter)
            except SessionLostError:
                raise
            except TransportError as exc:
                self._log.error("bus_subscribe_refused", topic_filter=topic_filter, reason=str(exc))
            done += 1
        return done

    async def _run_callbacks(self, reconnect: bool, live: LiveSession) -> None:
        for callback in list(self._callbacks):
            try:
                await callback(reconnect)
            except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                self._log.exception("bus_connect_callback_failed", callback=repr(callback))
        if reconnect and self._replay_log is not None:
            await republish(live, self._replay_log, self._log)
