"""The ledger catch-up bodies (``ledger_request``, ``ledger_records``; ARCHITECTURE.md §6),
re-exported by ``agent.messages.bodies``: a trainer that missed more records than a model
message carries asks the aggregator for the ones after the head it holds."""

from __future__ import annotations

from typing import Annotated

import msgspec

from agent.messages.base import Body, Name

#: records one ``ledger_records`` carries at most (a record is about 1 KB for a cohort of 10)
PAGE = 256
#: one record's bound (the aggregator certificate, the signature and up to 100k agent ids)
Record = Annotated[bytes, msgspec.Meta(max_length=4 * 1024 * 1024)]
Nonce = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]


class LedgerRequest(Body, frozen=True):
    """trainer → aggregator on ``ledger/{agent_id}``, signed: the records after index
    ``after`` (the head the trainer holds), at most ``PAGE``; ``nonce`` comes back."""

    agent_id: Name
    after: Annotated[int, msgspec.Meta(ge=0)]
    nonce: Nonce


class LedgerRecords(Body, frozen=True):
    """aggregator → the trainer's inbox: consecutive records from index ``after + 1`` on,
    as stored (each signed by the aggregator: the trainer checks them and their chain);
    ``more`` when the ledger goes on beyond them."""

    nonce: Nonce
    records: Annotated[list[Record], msgspec.Meta(max_length=PAGE)]
    more: bool = False
