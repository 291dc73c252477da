"""The global model a trainer holds: the newest verified one, and waiting for a given one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agent.errors import LedgerBehindError, LedgerError
from agent.messages.bodies import GlobalModel
from agent.messages.envelope import Message
from agent.messages.tensors import digest, to_arrays
from agent.plugin.api import Weights
from agent.roles.trainer.status import Progress
from agent.runtime.tasks import finish_in_thread
from agent.state import write_weights

if TYPE_CHECKING:  # the ledger (and X.509) only with identities on (issue 15)
    from agent.ledger.head import LedgerHead

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HeldModel:
    """The newest global model this agent accepted (``weights``: the plugin's arrays)."""

    version: int
    sha256: str
    weights: Weights


class ModelStore:
    """The newest global model whose sha256 matched, kept in memory and in ``path`` (npz).

    With ``ledger`` (identities on) a model is kept only if its round-ledger records verify
    and chain to the head held (``agent.ledger.head``); the head then moves to its record.

    A model follows the round it came in (``progress.round`` never goes back).
    """

    def __init__(
        self, *, progress: Progress, wait: float, path: Path, ledger: LedgerHead | None = None
    ) -> None:
        self.held: HeldModel | None = None
        self._ledger = ledger
        self._progress = progress
        self._wait = wait
        self._path = path
        self._arrived = asyncio.Condition()
        #: called with a model whose records begin after the head held (the trainer fetches
        #: the records between and offers it again, ``on_model(message, before=…)``)
        self.on_behind: Callable[[Message[GlobalModel]], None] | None = None

    def forget(self) -> None:
        """Drop the held model (a new admission may belong to a new run)."""
        self.held = None

    @property
    def ledger_head(self) -> int | None:
        """The index of the ledger record held (None: none, or no ledger)."""
        head = None if self._ledger is None else self._ledger.head
        return None if head is None else head.index

    async def on_model(self, message: Message[GlobalModel], before: Sequence[bytes] = ()) -> None:
        """``model_para``: keep it if newer than the held one and its digest matches;
        ``before``: ledger records fetched to bridge the head held and the model's tail."""
        body = message.body
        if self.held is not None and body.version <= self.held.version:
            return
        # Hashing and copying a large model would stall the event loop: do it in a thread.
        weights = await asyncio.to_thread(_verified_copy, body)
        if weights is None:
            log.warning("model_rejected", reason="digest_mismatch", version=body.version)
            return
        if self.held is not None and body.version <= self.held.version:
            return  # a newer one arrived while this one was checked
        record = None
        if self._ledger is not None:
            try:  # before it is held, so before anything trains on it
                record = await asyncio.to_thread(
                    partial(self._ledger.check, before=before),
                    body.ledger,
                    version=body.version,
                    sha256=body.sha256,
                )
            except LedgerBehindError as exc:
                if self.on_behind is None or before:
                    log.warning("model_rejected", reason=exc.reason, detail=str(exc))
                    return
                log.info("ledger_behind", version=body.version, detail=str(exc))
                self.on_behind(message)
                return
            except LedgerError as exc:
                log.warning(
                    "model_rejected", reason=exc.reason, version=body.version, detail=str(exc)
                )
                return
        self.held = HeldModel(body.version, body.sha256, weights)
        self._progress.round = max(self._progress.round, message.round)
        log.info("model_accepted", version=body.version, sha256=body.sha256[:12])
        async with self._arrived:
            self._arrived.notify_all()
        await finish_in_thread(write_weights, self._path, weights)  # a stop waits for both
        if self._ledger is not None and record is not None:
            await finish_in_thread(self._ledger.advance, record)

    async def wait_for(self, version: int, sha256: str) -> HeldModel | None:
        """The model ``version`` with ``sha256``, waiting up to ``wait`` s; None if it did not
        come or a different one is held."""
        try:
            async with asyncio.timeout(self._wait), self._arrived:
                await self._arrived.wait_for(
                    lambda: self.held is not None and self.held.version >= version
                )
        except TimeoutError:
            log.warning("model_missing", version=version)
            return None
        model = self.held
        if model is None or model.version != version or model.sha256 != sha256:
            log.warning("model_superseded", wanted=version)
            return None
        return model


def _verified_copy(model: GlobalModel) -> Weights | None:
    """Writable copies of the model's arrays, or None when its sha256 does not match."""
    if digest(model.tensors) != model.sha256:
        return None
    return [a.copy() for a in to_arrays(model.tensors)]
