"""``[transfer]``: the settings of chunked messages, a leaf that ``agent.config`` imports
(``agent.messages.chunks``, ``agent.runtime.reassembly``, ``agent.runtime.credits``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec


class TransferConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """``[transfer]``: chunked messages (``agent.messages.chunks``,
    ``agent.runtime.reassembly``).

    Attributes:
        chunk_size: a body of more bulk bytes than this travels as a signed manifest and
            chunks of this size. It must leave room for an envelope under both ``max_payload``
            and the broker's own limit (checked at connect, ``BusSettings.required_payload``).
            The default fits NATS's default 1 MiB ``max_payload``.
        max_message: the largest message (bulk bytes) this agent reassembles.
        budget: bytes all unfinished incoming transfers together may announce; they are
            spooled to disk, so this bounds disk, not memory.
        timeout: seconds from a manifest to its last chunk; then the transfer is dropped.
        in_flight: bytes of chunks all senders together may have on their way to the
            aggregator (granted by its ``chunk_ack``s and not yet spooled,
            ``agent.runtime.credit_pool``): its queue memory whatever the cohort size. At
            least one chunk is always granted, so a value below ``chunk_size`` only slows
            uploads down.
        spool_dir: where the spool files go (default: the system's temporary directory).
    """

    chunk_size: Annotated[int, msgspec.Meta(ge=64 * 1024, le=2**31)] = 1_000_000
    max_message: Annotated[int, msgspec.Meta(ge=1)] = 4 << 30
    budget: Annotated[int, msgspec.Meta(ge=1)] = 8 << 30
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    in_flight: Annotated[int, msgspec.Meta(ge=1)] = 32 << 20
    spool_dir: Path | None = None
