"""What a role registers with its ``Dispatcher`` (``agent.runtime.listeners``): one handler
per kind, the rounds it accepts (``RoundPolicy``), and what the receive loop enforces when
identities are on (``Security``, ``verify_sender``). Re-exported by
``agent.runtime.listeners``."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import UnexpectedKindError
from agent.messages.envelope import Envelope, Message
from agent.messages.kinds import TIMELESS_KINDS, Kind
from agent.messages.signing import Signed
from agent.messages.topics import TopicSpec
from agent.role import Identity, Role
from agent.runtime.assembly import ChunkSink, Transfer

if TYPE_CHECKING:  # X.509 only with identities on (issue 15)
    from agent.identity.verifier import Verifier

log = structlog.get_logger(__name__)

Handler = Callable[[Message[Any]], Awaitable[None]]
#: Called with a chunked transfer its manifest just opened (every check passed): the sink
#: its chunks go to as they are kept (streaming aggregation), or None.
StreamHook = Callable[[Transfer], ChunkSink | None]


class RoundPolicy(StrEnum):
    """Which rounds a listener accepts, relative to the role's current round."""

    ANY = "any"  # e.g. join: not tied to a round
    CURRENT = "current"  # exactly the current round (updates, metrics)
    NOT_STALE = "not_stale"  # the current round or a later one (instructions from above)


@dataclass(frozen=True, slots=True)
class Listener:
    kind: Kind
    handler: Handler
    rounds: RoundPolicy
    stream: StreamHook | None = None

    def sink(self, transfer: Transfer) -> ChunkSink | None:
        """What ``stream`` returns for ``transfer``; None without a hook, or when it raised
        (logged: the message is then handled whole once complete)."""
        if self.stream is None:
            return None
        try:
            return self.stream(transfer)
        except Exception:
            log.exception("stream_hook_failed", topic=transfer.topic)
            return None


@dataclass(frozen=True, slots=True)
class Security:
    """What the receive loop enforces when identities are on (``agent.identity.verifier``,
    ``agent.messages.sealing``).

    Attributes:
        verifier: checks every message's signature, certificate, timestamp and role.
        unseal_key: the aggregator's per-run key; with it, bodies of ``SEALED_KINDS`` must
            arrive sealed to it.
    """

    verifier: Verifier
    unseal_key: X25519PrivateKey | None = None


class ListenerRegistry:
    """One handler per kind. Registering a kind twice is a programming error."""

    def __init__(self) -> None:
        self._listeners: dict[Kind, Listener] = {}

    def register(self, kind: Kind, handler: Handler, *, rounds: RoundPolicy) -> None:
        """Add the handler for ``kind``.

        Raises:
            ValueError: ``kind`` already has a handler.
        """
        if kind in self._listeners:
            raise ValueError(f"a listener for {kind!s} is already registered")
        self._listeners[kind] = Listener(kind, handler, rounds)

    def stream(self, kind: Kind, hook: StreamHook) -> None:
        """Give ``kind``'s listener (registered already) the hook that may take a chunked
        message's chunks as they arrive (``StreamHook``).

        Raises:
            UnexpectedKindError: nothing is registered for ``kind``.
        """
        self._listeners[kind] = dataclasses.replace(self.get(kind), stream=hook)

    def get(self, kind: Kind) -> Listener:
        """The listener for ``kind``.

        Raises:
            UnexpectedKindError: nothing is registered for ``kind``.
        """
        try:
            return self._listeners[kind]
        except KeyError:
            raise UnexpectedKindError(f"no listener for {kind!s}") from None

    @property
    def kinds(self) -> frozenset[Kind]:
        return frozenset(self._listeners)


def verify_sender(
    verifier: Verifier, signed: Signed | None, envelope: Envelope, spec: TopicSpec | None
) -> Identity:
    """Check ``envelope``'s signature for the topic it came on: its publisher's role (a
    trainer for agent topics and unknown ones), the timestamp window unless the kind is
    timeless. Raises the ``ProtocolError`` of ``Verifier.verify``."""
    aggregator = spec is not None and spec.publisher is Role.AGGREGATOR
    return verifier.verify(
        signed,
        sender=envelope.sender,
        timestamp=envelope.timestamp,
        publisher=Role.AGGREGATOR if aggregator else Role.TRAINER,
        timeless=envelope.kind in TIMELESS_KINDS,
    )
