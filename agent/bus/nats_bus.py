"""The NATS adapter, on nats-py 2.x (core NATS, no JetStream).

nats-py's own reconnect is switched off (``allow_reconnect=False``): one ``nats.aio.client
.Client`` is one connection, and the shared supervisor (see :mod:`agent.bus.supervisor`)
reconnects with our capped, jittered backoff and re-creates every subscription, exactly as
for MQTT. Differences from MQTT, by necessity:

- Subjects are the canonical topics mapped by :mod:`agent.bus.topics`; a filter ``a/#`` is
  subscribed as ``a.>`` *and* ``a`` so that it matches what MQTT's ``a/#`` matches.
- Core NATS is at-most-once and has no acknowledgements. ``publish`` and ``subscribe``
  flush (a PING/PONG round trip), so when they return the server has processed them;
  that is our stand-in for QoS 1's PUBACK and SUBACK.
- ``retain`` is ignored: core NATS keeps no messages. Late joiners need a request or a
  re-publish (or a JetStream KV later).
- NATS has no last will. On a clean ``__aexit__`` the adapter publishes the will itself
  before closing; after a crash nobody does, so consumers also need a liveness timeout.
- No sessions survive a reconnect or a server restart: what a peer published before we
  resubscribed is lost. The supervisor re-publishes our own last ``replay_window`` seconds of
  publishes after each reconnect (``agent.bus.replay``; off with ``session_expiry = 0``).
- Several servers (the nodes of a cluster, ``bus_url = "tls://a:4222,tls://b:4222"``): every
  connection hands nats-py all of them, starting with the one after the server the previous
  attempt started with (the first one first), in that order (``dont_randomize``); nats-py
  falls through to the next one when a TCP connect fails. So a reconnect after a node died
  lands on another node, and clients spread over the list by where it starts.
- A connect the server's authorization refuses (``Authorization Violation``) raises
  ``ConnectRefusedError`` (``agent.bus.refusal``: not final, nats-server does not say why).
- A publish the server's authorization refuses (``-ERR 'Permissions Violation for Publish
  to …'``, which arrives before the flush's PONG) raises ``PublishRefusedError``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
from collections.abc import Sequence

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agent.bus.base import BusSettings, LastWill
from agent.bus.refusal import Refusal
from agent.bus.replay import republish
from agent.bus.session import Deliver, Session, SessionLostError
from agent.bus.supervisor import SupervisedBus
from agent.bus.topics import (
    TopicError,
    from_nats_subject,
    nats_subjects_for_filter,
    to_nats_subject,
)
from agent.errors import ConnectRefusedError, PublishRefusedError, TransportError

log = structlog.get_logger(__name__)


def _not_eof_noise(record: logging.LogRecord) -> bool:
    """nats-py's protocol returns True from eof_received(); over TLS asyncio logs a harmless
    warning about it on every close. Drop that one line, nothing else."""
    return "eof_received() has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_not_eof_noise)


def _seconds(value: float) -> int:
    """nats-py takes whole seconds; round up so a short timeout never becomes zero."""
    return max(1, math.ceil(value))


class NatsSession:
    """One nats-py connection, as a ``Session``."""

    def __init__(
        self,
        nc: NatsClient,
        deliver: Deliver,
        *,
        ended: asyncio.Event,
        will: LastWill | None,
        flush_timeout: float,
        refused: dict[str, int] | None = None,
    ) -> None:
        self._nc = nc
        #: permission violations reported by the server, by lower-case subject
        self._refused = {} if refused is None else refused
        self._deliver = deliver
        self._ended = ended
        self._will = will
        self._flush_timeout = _seconds(flush_timeout)
        self._background: set[asyncio.Future[None]] = set()
        #: the server's max_payload from its INFO at connect
        self.max_payload: int | None = nc.max_payload or None

    async def subscribe(self, topic_filter: str) -> None:
        try:
            for subject in nats_subjects_for_filter(topic_filter):
                await self._nc.subscribe(subject, cb=self._on_message)
        except nats.errors.Error as exc:
            raise SessionLostError(f"subscribe to {topic_filter!r} failed: {exc!r}") from exc
        await self._flush()

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        del retain  # core NATS has no retained messages
        subject = to_nats_subject(topic)
        refusals = self._refused.get(subject.lower(), 0)
        try:
            await self._nc.publish(subject, payload)
        except nats.errors.MaxPayloadError as exc:
            limit = self._nc.max_payload
            raise TransportError(f"server max_payload {limit} refuses {len(payload)} B") from exc
        except nats.errors.Error as exc:
            raise SessionLostError(f"publish failed: {exc!r}") from exc
        await self._flush()
        if self._refused.get(subject.lower(), 0) > refusals:
            raise PublishRefusedError(topic, "permissions violation")

    async def run(self) -> str:
        await self._ended.wait()
        error = self._nc.last_error
        return repr(error) if error is not None else "connection closed"

    async def close(self, *, clean: bool) -> None:
        try:
            if clean and self._will is not None and self._nc.is_connected:
                await self.publish(self._will.topic, self._will.payload, retain=False)
        except TransportError as exc:
            log.warning("bus_will_not_sent", transport="nats", reason=str(exc))
        finally:
            await close_client(self._nc)

    async def _flush(self) -> None:
        try:
            # nats-py's flush() writes its PING straight to the socket, ahead of the commands
            # still queued for its flusher task, so the PONG can return before our SUB/PUB
            # reached the server (a lost message, ~2% of round trips here). Wait until the
            # flusher has written them first; there is no public API for that.
            task = asyncio.current_task()
            cancels = task.cancelling() if task is not None else 0
            await self._nc._flush_pending(force_flush=True)
            if task is not None and task.cancelling() > cancels:
                raise asyncio.CancelledError  # _flush_pending swallowed a cancellation
            # Never cancel nats-py's flush: a cancelled flush leaves its PONG future in the
            # client's queue, the next PONG's set_result() raises InvalidStateError, and
            # nats-py's read loop exits on it, leaving the connection open but deaf. So the
            # flush is shielded; if we are cancelled it finishes (or times out) on its own.
            flush = asyncio.ensure_future(self._nc.flush(timeout=self._flush_timeout))
            try:
                await asyncio.shield(flush)
            except asyncio.CancelledError:
                self._background.add(flush)
                flush.add_done_callback(self._forget)
                raise
        except (TimeoutError, nats.errors.Error) as exc:
            raise SessionLostError(f"flush failed: {exc!r}") from exc

    def _forget(self, flush: asyncio.Future[None]) -> None:
        self._background.discard(flush)
        if not flush.cancelled():
            flush.exception()  # retrieved: a late timeout needs no report, the op was cancelled

    async def _on_message(self, msg: Msg) -> None:
        try:
            topic = from_nats_subject(msg.subject)
        except TopicError:
            log.warning("bus_message_dropped", reason="non_canonical_subject", subject=msg.subject)
            return
        self._deliver(topic, msg.data, False)


class NatsBus(SupervisedBus):
    """``Bus`` over NATS (``nats://`` plain, ``tls://`` with ``tls``)."""

    transport = "nats"
    replay_window = 30.0

    def __init__(
        self,
        host: str,
        port: int,
        settings: BusSettings,
        *,
        tls: ssl.SSLContext | None = None,
        fallbacks: Sequence[tuple[str, int]] = (),
    ) -> None:
        super().__init__(settings)
        self.host = host
        self.port = port
        self._tls = tls
        scheme = "tls" if tls is not None else "nats"
        self.server_urls = [_url(scheme, h, p) for h, p in [(host, port), *fallbacks]]
        self.server_url = self.server_urls[0]
        self._start = 0  # where in server_urls the next connection starts

    @property
    def where(self) -> str:
        return ",".join(self.server_urls)

    def recent_publishes(self, topic: str) -> list[bytes]:
        """Our distinct payloads on ``topic`` within ``replay_window``, oldest first: what a
        peer whose node died may have missed (``roles.aggregator.rejoin``); none with replay
        off."""
        recent = self._replay_log.recent() if self._replay_log is not None else ()
        return list(dict.fromkeys(sent.payload for sent in recent if sent.topic == topic))

    async def replay_recent(self) -> bool:
        """Re-publish our recent publishes now, as after a reconnect (``agent.bus.replay``):
        a peer lost them though we stayed connected (the aggregator's node died:
        ``roles.trainer.resend``). False with replay off or no session now."""
        live, replay_log = self._live, self._replay_log
        if live is None or replay_log is None:
            return False
        await republish(live, replay_log, self._log)
        return True

    def _rotation(self) -> list[str]:
        """The servers for the next connection: from ``_start`` on, wrapping around."""
        start, self._start = self._start, (self._start + 1) % len(self.server_urls)
        return self.server_urls[start:] + self.server_urls[:start]

    async def _open_session(self, deliver: Deliver) -> Session:
        settings = self.settings
        nc = NatsClient()
        ended = asyncio.Event()

        async def on_closed() -> None:
            ended.set()

        connect_errors: list[Exception] = []  # nats-py reports why only through error_cb
        refused: dict[str, int] = {}

        async def on_error(exc: Exception) -> None:
            # Connect failures and lost connections are logged by the supervisor; what is
            # left (slow consumer, permissions violation, …) arrives only here.
            if not nc.is_connected:
                connect_errors.append(exc)
            elif (subject := _refused_subject(exc)) is not None:
                refused[subject] = refused.get(subject, 0) + 1
                log.warning("bus_publish_refused", transport="nats", reason=repr(exc))
            elif not isinstance(exc, OSError | nats.errors.StaleConnectionError):
                log.warning("bus_transport_error", transport="nats", reason=repr(exc))

        servers = self._rotation()
        # nats-py bounds the TCP open by connect_timeout but not always the TLS handshake and
        # the CONNECT/PING exchange after it: one attempt per server (and its one retry), whole.
        attempt = _seconds(settings.connect_timeout)
        try:
            async with asyncio.timeout(attempt * (2 * len(servers) + 1)):
                await nc.connect(
                    servers=servers,
                    dont_randomize=True,
                    name=settings.client_id,
                    # One connection per Client: the supervisor reconnects. With reconnect off,
                    # nats-py still loops over its server pool inside connect(); one retry with no
                    # wait (max_reconnect_attempts=1) is the smallest bound it offers.
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    connect_timeout=attempt,
                    ping_interval=settings.keepalive,
                    max_outstanding_pings=2,
                    tls=self._tls,
                    error_cb=on_error,
                    disconnected_cb=on_closed,
                    closed_cb=on_closed,
                )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            await _close(nc, attempt)
            cause = connect_errors[-1] if connect_errors else exc
            detail = f"cannot connect to {','.join(servers)}: {cause!r}"
            if any(map(_authorization_refused, (*connect_errors, exc))):
                # revoked, superseded or not enrolled yet: nats-server does not say which
                raise ConnectRefusedError(str(Refusal.NOT_AUTHORIZED), detail) from exc
            raise TransportError(detail) from exc
        except asyncio.CancelledError:
            await _close(nc, attempt)
            raise
        return NatsSession(
            nc,
            deliver,
            ended=ended,
            will=settings.current_will(),
            flush_timeout=settings.publish_timeout,
            refused=refused,
        )


async def close_client(nc: NatsClient) -> None:
    """``nc.close()``, then re-raise a cancellation it swallowed: nats-py catches the
    CancelledError that lands while it waits for its own tasks, and the cancelled caller would
    go on (the bus supervisor went on reconnecting, and closing the bus hung)."""
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0
    await nc.close()
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError


async def _close(nc: NatsClient, seconds: float) -> None:
    """Close a client whose connect failed, bounded: a half-open TLS session must not hang us."""
    try:
        async with asyncio.timeout(seconds):
            await close_client(nc)
    except (TimeoutError, OSError, nats.errors.Error):
        log.debug("bus_close_abandoned", transport="nats")


def _url(scheme: str, host: str, port: int) -> str:
    netloc = f"[{host}]" if ":" in host else host
    return f"{scheme}://{netloc}:{port}"


def _authorization_refused(exc: BaseException) -> bool:
    """nats-py reports the server's ``-ERR 'Authorization Violation'`` at connect as a plain
    ``nats.errors.Error`` naming it (an ``AuthorizationError`` elsewhere)."""
    return isinstance(exc, nats.errors.AuthorizationError) or (
        "authorization violation" in str(exc).lower()
    )


_REFUSED = re.compile(r'permissions violation for publish to "?([^"\s]+)"?')


def _refused_subject(exc: Exception) -> str | None:
    """The subject of a publish permissions violation (nats-py lower-cases the -ERR text)."""
    match = _REFUSED.search(str(exc).lower())
    return match.group(1) if match else None
