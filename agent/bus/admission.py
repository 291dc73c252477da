"""Connection admission: how many broker connects one process runs at once.

A device opens one connection and never waits here. A fleet process (``agent.fleet``) opens
hundreds: all at once, every TLS handshake shares one event loop (and the broker's CPU), and
each must finish within the broker's handshake timeout (nats-server ``tls { timeout }``),
before the broker's listen backlog overflows (mosquitto's is fixed at 100) and within our
``connect_timeout``. Measured at 1,000 members in two processes (issue 15): 963 of 1,000
NATS connects failed their TLS handshake, and mosquitto timed out most of them.

:class:`ConnectGate` bounds the connects in flight: each connect attempt of the supervisor
(``SupervisedBus._supervise``) waits for a slot, after a small random delay so that the
processes of one fleet do not arrive in lock step, and the attempt's own ``connect_timeout``
starts only once it holds the slot. The gate is carried by a context variable that
``use_gate`` sets: the tasks created afterwards (a fleet's members, and their buses'
supervisors) inherit it; without one (a device) a connect is not gated at all, so a device and
a fleet member run the same code. A failed attempt releases its slot and retries after the
supervisor's backoff, as always.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

#: Connects in flight per fleet process (measured: see ARCHITECTURE.md §13).
DEFAULT_CONCURRENT_CONNECTS = 16
#: Seconds of random delay (uniform in [0, jitter]) before a gated connect queues for a slot.
DEFAULT_JITTER = 0.25


@dataclass(eq=False)
class ConnectGate:
    """At most ``limit`` connects in flight at once (in the tasks that inherit this gate).

    Attributes:
        limit: slots (>= 1).
        jitter: seconds; each ``slot()`` first sleeps uniformly in ``[0, jitter]``.
        waiting, active: connects queued for a slot, and holding one (for logs and tests).
    """

    limit: int = DEFAULT_CONCURRENT_CONNECTS
    jitter: float = DEFAULT_JITTER
    rng: random.Random = field(default_factory=random.Random)
    waiting: int = 0
    active: int = 0

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a connect gate needs limit >= 1, not {self.limit}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0 seconds, not {self.jitter}")
        self._slots = asyncio.Semaphore(self.limit)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block (one connect attempt); released however it ends."""
        if self.jitter:
            await asyncio.sleep(self.rng.uniform(0.0, self.jitter))
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()


_GATE: contextvars.ContextVar[ConnectGate | None] = contextvars.ContextVar(
    "fedbus_connect_gate", default=None
)


@contextmanager
def use_gate(gate: ConnectGate) -> Iterator[ConnectGate]:
    """Gate the connects of every task created inside the block (and of their children)."""
    token = _GATE.set(gate)
    try:
        yield gate
    finally:
        _GATE.reset(token)


@asynccontextmanager
async def admitted() -> AsyncIterator[None]:
    """One connect attempt: through the current gate's ``slot()``, or at once without one."""
    gate = _GATE.get()
    if gate is None:
        yield
        return
    async with gate.slot():
        yield
