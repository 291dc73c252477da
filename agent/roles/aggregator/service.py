"""The aggregator as a long-lived service: one process (one *incarnation*, a random id said
in every ``federation_status`` and ``join_accepted``) that runs training runs one after the
other (``[aggregator] after_run``), and whose enrollment service, status and revocation
watch live as long as the process, whether or not a run is training.

- ``after_run = "exit"``: one run, then the process ends (its exit status says how it went);
- ``"serve"``: after the run, stay up: enrollment answered, ``federation_status`` published
  (phase ``idle``), revocations watched, until stopped;
- ``"next"``: start the next run at once (``continue_from = "last"`` continues the model).

A revocation (``fedbus revoke`` writes the registry) is seen within ``REVOKE_POLL`` seconds:
the agent leaves the admitted set and any cohort at once and is told (``join_rejected``,
``RejectCode.REVOKED``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import structlog

from agent.config import AfterRun
from agent.identity.registry import AgentStatus, Registry
from agent.roles.aggregator.records import RunSummary
from agent.roles.aggregator.role import Aggregator
from agent.roles.aggregator.schedule import RunFailedError
from agent.runtime.enrollment import EnrollmentService
from agent.runtime.tasks import task_group

log = structlog.get_logger(__name__)

#: Seconds between looks at the registry for revoked agents.
REVOKE_POLL = 1.0


async def watch_revocations(
    registry: Registry,
    current: Callable[[], Aggregator | None],
    *,
    every: float = REVOKE_POLL,
    on_revoked: Callable[[Sequence[str]], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Tell the current run's aggregator of every revoked agent; until cancelled.
    ``on_revoked`` is awaited once with the agents revoked since the last look (at the
    first look: every revoked agent), e.g. to close their broker connections
    (``runtime.evict``)."""
    seen: set[str] = set()
    async with task_group() as tg:  # the hook runs beside the watch (a broker may be slow)
        while True:
            rows = await asyncio.to_thread(registry.agents)
            revoked = [row.agent_id for row in rows if row.status is AgentStatus.REVOKED]
            aggregator = current()
            if aggregator is not None:
                for agent_id in revoked:
                    aggregator.note_revoked(agent_id)
            new = [agent_id for agent_id in revoked if agent_id not in seen]
            seen.update(new)
            if new and on_revoked is not None:
                tg.create_task(on_revoked(new), name="revoked-hook")
            await asyncio.sleep(every)


async def serve(
    build: Callable[[], Aggregator],
    *,
    after_run: AfterRun,
    play: Callable[[Aggregator, Awaitable[RunSummary | None]], Awaitable[RunSummary | None]],
    finished: Callable[[Aggregator], Awaitable[None]],
    registry: Registry | None = None,
    enrollment: EnrollmentService | None = None,
    services: Sequence[Coroutine[Any, Any, None]] = (),
    on_revoked: Callable[[Sequence[str]], Coroutine[Any, Any, None]] | None = None,
) -> RunSummary | None:
    """Run runs as ``after_run`` says, with ``enrollment`` and the revocation watch up for
    the whole process. ``build`` makes each run's ``Aggregator``; ``play`` awaits its work
    (e.g. under systemd notification); ``finished`` is awaited after each completed run
    (e.g. the model export); ``services`` run for the whole process too (CRL re-signing,
    the NATS auth callout); ``on_revoked`` as for ``watch_revocations``. Returns the last
    run's summary (``exit``); otherwise runs until cancelled.

    Raises:
        RunFailedError, RoundError: a run failed; the process exits non-zero.
    """
    holder: list[Aggregator | None] = [None]
    async with task_group() as tg:
        helpers = []
        if enrollment is not None:
            helpers.append(tg.create_task(enrollment.run(), name="enrollment"))
        for service in services:
            helpers.append(tg.create_task(service, name="aggregator-service"))
        if registry is not None:
            watch = watch_revocations(registry, lambda: holder[0], on_revoked=on_revoked)
            helpers.append(tg.create_task(watch, name="revocations"))
        try:
            while True:
                aggregator = holder[0] = build()
                summary = await play(aggregator, aggregator.run())
                if summary is not None and summary.failure is not None:
                    raise RunFailedError(f"{aggregator.opened.run_id}: {summary.failure}")
                await finished(aggregator)
                if after_run is AfterRun.EXIT:
                    return summary
                if after_run is AfterRun.SERVE:
                    log.info("aggregator_idle", reason="run finished; after_run = serve")
                    await play(aggregator, aggregator.idle())
                log.info("next_run", after=aggregator.opened.run_id)
        finally:
            for task in helpers:
                task.cancel()
