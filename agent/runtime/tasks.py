"""Task ownership helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An ``asyncio.TaskGroup`` that re-raises a lone failure as itself.

    A TaskGroup wraps every failure in an ``ExceptionGroup``; when exactly one task failed
    (the common case: the role's main coroutine raised ``RoundError``), callers get that
    exception, so ``except RoundError`` and documented ``Raises:`` sections stay true.
    """
    try:
        async with asyncio.TaskGroup() as tg:
            yield tg
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
