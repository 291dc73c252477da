"""The aggregator's answer to a ledger catch-up (ARCHITECTURE.md §6): a trainer that missed
more records than a model message carries (``ledger.book.TAIL``) asks on
``ledger/{agent_id}`` for the records after the head it holds; the answer, on its inbox, is
the next page of stored records as they are (each signed: the trainer verifies them and
their chain itself, ``ledger.head``)."""

from __future__ import annotations

import asyncio

import structlog

from agent.ledger.book import RoundLedger
from agent.messages import topics
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.messages.ledger_bodies import PAGE, LedgerRecords, LedgerRequest
from agent.runtime.listeners import ListenerRegistry, RoundPolicy
from agent.runtime.outbox import Outbox

log = structlog.get_logger(__name__)

#: bytes of records one answer carries (about; always at least one record)
PAGE_BYTES = 1024 * 1024


class LedgerReplies:
    """Answers ``ledger_request`` from ``ledger``'s records."""

    def __init__(self, ledger: RoundLedger, outbox: Outbox) -> None:
        self._ledger = ledger
        self._outbox = outbox

    def register(self, registry: ListenerRegistry) -> None:
        """Answer ``ledger_request`` in any round."""
        registry.register(Kind.LEDGER_REQUEST, self.on_request, rounds=RoundPolicy.ANY)

    async def on_request(self, message: Message[LedgerRequest]) -> None:
        body = message.body
        try:
            records, more = await asyncio.to_thread(
                self._ledger.records_after, body.after, limit=PAGE, max_bytes=PAGE_BYTES
            )
        except OSError as exc:
            log.warning("ledger_request_failed", agent=message.sender, detail=str(exc))
            return
        reply = LedgerRecords(nonce=body.nonce, records=records, more=more)
        await self._outbox.try_send(
            topics.INBOX, reply, round=message.round, agent_id=message.sender
        )
        log.info("ledger_records_sent", agent=message.sender, after=body.after, count=len(records))
