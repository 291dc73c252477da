"""Telling systemd how the agent is doing: the ``sd_notify`` protocol, spoken directly.

The protocol (sd_notify(3), NOTES) is one datagram per notification to the ``AF_UNIX``
socket named by ``$NOTIFY_SOCKET`` (a name starting with ``@`` is in Linux's abstract
namespace), its payload newline-separated ``VAR=value`` assignments. The kernel attaches the
sender's credentials itself when the manager asks for them (``SO_PASSCRED``), so a plain
``sendto`` is all a process notifying about itself needs; systemd lists the interface as
"reimplementable independently" (freedesktop.org, Interface Portability and Stability), so
fedbus needs neither libsystemd nor a binding.

What an agent sends (see :func:`serve_role` and ``agent.node``):

==============  ============================================================================
``READY=1``     once the role's broker session is up with its subscriptions acknowledged
                (``Type=notify`` waits for it)
``STATUS=…``    the role's ``status`` whenever it changes ("idle", "round 3: training", …):
                pushed by the role (``status_changed``), never polled, so an idle agent's
                loop sleeps until something happens
``WATCHDOG=1``  every half of ``$WATCHDOG_USEC``, from an asyncio task on the agent's event
                loop (sd_watchdog_enabled(3) recommends half the interval); a blocked loop
                stops the pings and, with ``WatchdogSec=`` (systemd.service(5)), the
                manager kills the service (``WatchdogSignal=``, SIGABRT by default) and
                ``Restart=on-failure`` starts it again
``STOPPING=1``  when SIGTERM or SIGINT arrives, or the role ended by itself
``STATUS=``,    when the agent fails: ``STATUS=failed: …``, and ``ERRNO=`` when the failure
``ERRNO=``      carries an errno (an ``OSError``)
==============  ============================================================================

The watchdog is armed when ``$WATCHDOG_USEC`` is set and ``$WATCHDOG_PID`` is unset or our
pid (sd_watchdog_enabled(3)). :func:`process_notifier` reads the three variables once per
process and then unsets them, as ``sd_notify(unset_environment=1)`` and
``sd_watchdog_enabled(unset_environment=1)`` do, so that child processes (the ``command``
plugin's program, the demo's agents) do not inherit them and notify on our behalf
(``NotifyAccess=main`` refuses them anyway, with a warning in the journal).

Sending never blocks the event loop (a non-blocking datagram socket; a full manager queue
drops the notification) and never raises into the agent: the first failure is logged
(``sd_notify_failed``), the next success says so (``sd_notify_recovered``). Not supported:
non-``AF_UNIX`` addresses (newer systemd's ``vsock:`` for VMs: logged, notifier off),
file-descriptor store, ``MAINPID=``, ``RELOADING=1`` (fedbus has no reload).

Log events: ``sd_notify_enabled``, ``sd_notify_failed``, ``sd_notify_recovered``,
``sd_notify_unsupported``, ``sd_notify_ready``, ``sd_notify_watchdog_disabled``,
``sd_notify_task_failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, Protocol, Self, TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"
#: STATUS= is "a single-line status string" (sd_notify(3)); longer ones are cut here.
MAX_STATUS = 400


class ServiceRole(Protocol):
    """What :func:`serve_role` reads from a role (``Trainer``, ``Aggregator``)."""

    @property
    def ready(self) -> asyncio.Event:
        """Set once the broker session is up with the role's subscriptions."""
        ...

    @property
    def status(self) -> str:
        """What the role is doing, for humans."""
        ...

    @property
    def status_changed(self) -> asyncio.Event:
        """Set by the role whenever ``status`` may have changed; :func:`serve_role` clears it
        (a set without a change costs one string compare)."""
        ...


class Notifier:
    """Notifications to the service manager at ``address`` (``$NOTIFY_SOCKET`` syntax).

    A notifier with no address does nothing, so callers never need to ask whether the agent
    runs under systemd. ``watchdog_usec`` (``$WATCHDOG_USEC``) arms :meth:`watchdog`.

    Args:
        address: a socket path, or ``@name`` for an abstract socket; None: disabled.
        watchdog_usec: the manager's watchdog timeout in µs; None or 0: no pings.
        sleep: how the watchdog waits (a test drives it with a fake clock).
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._address: str | None = None
        self._socket: socket.socket | None = None
        self._failing = False
        self._stopping = False
        self._sleep = sleep
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        if not address:
            return
        if address.startswith("@"):
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        else:
            log.warning(
                "sd_notify_unsupported",
                address=address,
                reason="not an AF_UNIX path or @abstract name",
            )
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        self._socket = sock

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """The notifier ``environ`` (default ``os.environ``) asks for; ``unset`` removes
        ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from it afterwards."""
        env = os.environ if environ is None else environ
        address = env.get(ENV_SOCKET)
        usec = _watchdog_usec(env.get(ENV_WATCHDOG_USEC), env.get(ENV_WATCHDOG_PID))
        if unset:
            for name in (ENV_SOCKET, ENV_WATCHDOG_USEC, ENV_WATCHDOG_PID):
                env.pop(name, None)
        notifier = cls(address, watchdog_usec=usec if address else None)
        if notifier.enabled:
            log.info("sd_notify_enabled", watchdog_usec=notifier.watchdog_usec)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of ``WATCHDOG_USEC`` (None: no watchdog)."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def send(self, *assignments: str) -> bool:
        """Send ``VAR=value`` assignments as one datagram; True if it left.

        Never raises and never blocks: a failure is logged once (until a send succeeds)."""
        sock, address = self._socket, self._address
        if sock is None or address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            sock.sendto(payload, address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "sd_notify_failed", error=str(exc) or type(exc).__name__, message=assignments[0]
                )
            return False
        if self._failing:
            self._failing = False
            log.info("sd_notify_recovered")
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``, with the current ``STATUS=`` in the same datagram."""
        extra = () if status is None else (_status(status),)
        return self.send("READY=1", *extra)

    def status(self, text: str) -> bool:
        """``STATUS=text`` (one line, at most :data:`MAX_STATUS` characters)."""
        return self.send(_status(text))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the service is beginning its shutdown. Sent once."""
        if self._stopping:
            return False
        self._stopping = True
        extra = () if status is None else (_status(status),)
        return self.send("STOPPING=1", *extra)

    @property
    def is_stopping(self) -> bool:
        return self._stopping

    def failed(self, exc: BaseException) -> bool:
        """``STATUS=failed: …`` and, for an ``OSError`` with one, ``ERRNO=``."""
        lines = [_status(f"failed: {exc}" if str(exc) else f"failed: {type(exc).__name__}")]
        if isinstance(exc, OSError) and exc.errno:
            lines.append(f"ERRNO={exc.errno}")
        return self.send(*lines)

    async def ping_forever(self) -> None:
        """``WATCHDOG=1`` now and every :attr:`watchdog_interval` s, until cancelled.

        It runs on the caller's event loop: while the loop is blocked no ping goes out."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await self._sleep(interval)

    @contextlib.asynccontextmanager
    async def watchdog(self) -> AsyncIterator[None]:
        """Keep the watchdog fed from this event loop for the duration of the block."""
        if self.watchdog_interval is None:
            yield
            return
        async with _alongside(self.ping_forever(), name="sd-notify-watchdog"):
            yield

    def close(self) -> None:
        """Close the socket; the notifier does nothing afterwards."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def serve_role(
    role: ServiceRole,
    work: Awaitable[T],
    *,
    notifier: Notifier | None = None,
) -> T:
    """Await ``work`` (the role's ``run()``) while reporting ``role`` to the manager:
    ``READY=1`` once ``role.ready`` is set, then ``STATUS=`` whenever ``role.status_changed``
    is set and ``role.status`` differs from the last one sent (a state that lasts until the
    loop's next turn is seen; quicker ones coalesce into the newest), and the last status
    when ``work`` returns. Nothing wakes up in between: no poll."""
    notifier = notifier if notifier is not None else process_notifier()
    if not notifier.enabled:
        return await work
    async with _alongside(_report(role, notifier), name="sd-notify-status"):
        result = await work
    notifier.status(role.status)  # how it ended, e.g. "finished after 5 rounds"
    return result


async def _report(role: ServiceRole, notifier: Notifier) -> None:
    await role.ready.wait()
    changed = role.status_changed
    changed.clear()
    sent = role.status
    notifier.ready(sent)
    log.info("sd_notify_ready", status=sent)
    while not notifier.is_stopping:
        await changed.wait()
        changed.clear()
        if (now := role.status) != sent and not notifier.is_stopping:
            notifier.status(now)
            sent = now


@contextlib.asynccontextmanager
async def _alongside(helper: Coroutine[Any, Any, None], *, name: str) -> AsyncIterator[None]:
    """Run ``helper`` as a task for the duration of the block, then cancel and await it.

    Unlike a TaskGroup this never wraps the block's own exception, and a failing helper
    (a bug) is logged instead of cancelling the agent: reporting must not stop the work."""
    task = asyncio.create_task(helper, name=name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("sd_notify_task_failed", task=name, exc_info=exc)


_process: Notifier | None = None


def process_notifier() -> Notifier:
    """This process's notifier, built from (and then removed from) ``os.environ`` on the
    first call; later calls return the same one."""
    global _process  # noqa: PLW0603 - the environment it comes from is process-wide too
    if _process is None:
        _process = Notifier.from_environ()
    return _process


def _status(text: str) -> str:
    line = " ".join(text.split())
    return "STATUS=" + (line if len(line) <= MAX_STATUS else line[: MAX_STATUS - 1] + "…")


def _watchdog_usec(usec: str | None, pid: str | None) -> int | None:
    """``WATCHDOG_USEC`` when it is meant for this process (sd_watchdog_enabled(3))."""
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        log.info("sd_notify_watchdog_disabled", reason="for another process", watchdog_pid=pid)
        return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("sd_notify_watchdog_disabled", reason="invalid WATCHDOG_USEC", value=usec)
        return None
    return value
