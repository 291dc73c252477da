"""A trainer catching up on the round ledger (ARCHITECTURE.md §6).

A model message carries the last ``ledger.book.TAIL`` records; a trainer that missed more
(offline for a while) cannot chain the model to the head it holds (``LedgerBehindError``).
It then asks the aggregator, over a signed request on ``ledger/{agent_id}`` and a signed
answer on its inbox, for the records after its head, page by page until they reach the
model's tail, and checks the model again with them in front: every record from the head to
the model is verified and chained before the model is kept. Nothing is trusted from the
answer but records that verify against the CA.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import structlog

from agent.errors import LedgerError, TransportError
from agent.ledger.record import decode_entry, decode_record
from agent.messages import topics
from agent.messages.bodies import GlobalModel
from agent.messages.envelope import Message
from agent.messages.ledger_bodies import LedgerRecords, LedgerRequest
from agent.roles.trainer.model import ModelStore
from agent.runtime.outbox import Outbox

log = structlog.get_logger(__name__)

#: pages one catch-up asks for at most (256 records each)
MAX_PAGES = 400


class LedgerCatchUp:
    """Fetches ledger records from the aggregator (see the module docstring).

    Args:
        outbox: the trainer's outbox (requests are signed with its certificate).
        agent_id: the trainer.
        timeout: seconds to wait for each answer.
    """

    def __init__(self, outbox: Outbox, agent_id: str, *, timeout: float = 10.0) -> None:
        self._outbox = outbox
        self._id = agent_id
        self._timeout = timeout
        self._waiting: dict[bytes, asyncio.Future[LedgerRecords]] = {}

    async def on_records(self, message: Message[Any]) -> None:
        """The ``ledger_records`` listener (on the inbox)."""
        body: LedgerRecords = message.body
        waiter = self._waiting.get(body.nonce)
        if waiter is not None and not waiter.done():
            waiter.set_result(body)

    async def fetch(self, after: int, until: int, *, round: int) -> list[bytes]:
        """The records after index ``after`` up to at least index ``until - 1`` (where the
        model's tail begins), or fewer if the aggregator has no more or does not answer.

        Raises:
            LedgerError: an answer whose records are not readable records.
        """
        records: list[bytes] = []
        index = after
        for _ in range(MAX_PAGES):
            page = await self._page(index, round=round)
            if page is None or not page.records:
                break
            records += page.records
            index = decode_entry(decode_record(page.records[-1]).entry).index
            if index >= until - 1 or not page.more:
                break
        log.info("ledger_caught_up", after=after, fetched=len(records), until=until)
        return records

    async def bridge(self, models: ModelStore, message: Message[GlobalModel], round: int) -> None:
        """Fetch the records between the head ``models`` holds and ``message``'s tail, then
        offer the model to ``models`` again with them in front."""
        head, tail = models.ledger_head, message.body.ledger
        if head is None or not tail:
            return
        until = decode_entry(decode_record(tail[0]).entry).index
        before = await self.fetch(head, until, round=round)
        await models.on_model(message, before=before)

    async def _page(self, after: int, *, round: int) -> LedgerRecords | None:
        nonce = os.urandom(16)
        waiter: asyncio.Future[LedgerRecords] = asyncio.get_running_loop().create_future()
        self._waiting[nonce] = waiter
        try:
            body = LedgerRequest(agent_id=self._id, after=after, nonce=nonce)
            await self._outbox.send(topics.LEDGER, body, round=round, agent_id=self._id)
            async with asyncio.timeout(self._timeout):
                return await waiter
        except (TransportError, TimeoutError) as exc:
            log.warning("ledger_catch_up_failed", after=after, detail=str(exc) or "no answer")
            return None
        finally:
            self._waiting.pop(nonce, None)


__all__ = ["LedgerCatchUp", "LedgerError"]
