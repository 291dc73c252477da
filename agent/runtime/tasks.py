"""Task ownership helpers: every task has a TaskGroup that awaits it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog

log = structlog.get_logger(__name__)


@asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An ``asyncio.TaskGroup`` that re-raises a lone failure as itself.

    A TaskGroup wraps every failure in an ``ExceptionGroup``; when exactly one failure
    happened (the common case: the role's main coroutine raised ``RoundError``), callers get
    that exception, so ``except RoundError`` and documented ``Raises:`` sections stay true.
    One failure seen by several tasks counts once: a bus that stopped
    (``BrokerRefusedError``) raises its one error object in every task that waits on it
    (the receive loop, ``wait_connected``), and which of them notice before the group
    cancels the rest is a matter of scheduling.
    """
    try:
        async with asyncio.TaskGroup() as tg:
            yield tg
    except BaseExceptionGroup as group:
        distinct = list({id(exc): exc for exc in group.exceptions}.values())
        if len(distinct) == 1:
            raise distinct[0] from None
        raise


Work = Callable[[], Awaitable[None]]
"""A piece of work: called (once) when its task starts, so work never started is never a
coroutine left un-awaited."""


class Worker:
    """At most one task per key (a role's current fit, its current evaluation), all in the
    worker's own TaskGroup.

    ``start(key, work)`` runs ``work`` as the task of ``key``; the older task of that key, if
    still running, is cancelled and awaited before ``work`` begins (it belonged to a round that
    went on). A task copies the caller's context, so its log lines carry the context of the
    message that started it. A task that raises is logged as ``work_failed`` and ends alone:
    neither the worker nor the other tasks stop.

    Use within ``async with worker.running():``; leaving it cancels every task and awaits them.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Worker]:
        """Open the worker's TaskGroup for the duration of the block."""
        async with task_group() as group:
            self._group = group
            try:
                yield self
            finally:
                self._group = None
                for task in self._tasks.values():
                    task.cancel()
                self._tasks.clear()

    def start(self, key: str, work: Work) -> None:
        """Run ``work`` as the one task of ``key``, superseding an older one.

        Raises:
            RuntimeError: the worker is not running (outside ``running()``).
        """
        if self._group is None:
            raise RuntimeError(f"worker {self._name!r} is not running")
        old = self._tasks.get(key)
        if old is not None and not old.done():
            old.cancel()
            log.info("work_superseded", kind=key)
        name = f"{self._name}-{key}"
        self._tasks[key] = self._group.create_task(self._run(name, work, after=old), name=name)

    @staticmethod
    async def _run(name: str, work: Work, *, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await asyncio.wait([after])  # let the superseded task unwind first
        try:
            await work()
        except Exception:
            # A bug in one piece of work must not end the role: log it, with its traceback.
            log.error("work_failed", task=name, exc_info=True)


async def finish_in_thread(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` in a worker thread and wait for it even if we are cancelled meanwhile (the
    cancellation is raised once it is done): a write a stop interrupts would otherwise go on in
    its thread, and a restarted process could read the state from before it."""
    done = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        await asyncio.wait({done})
        raise
