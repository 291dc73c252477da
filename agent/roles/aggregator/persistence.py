"""What the aggregator keeps on disk, under ``state_dir``, each file written atomically
(``agent.atomic``: a reader or a restart after SIGKILL sees the old file or the new one):

=============================  ===============================================
``rounds/NNNN/model.npz``      the global model after round NNNN (0000: initial)
``rounds/NNNN/metrics.json``   that round's ``RoundRecord`` (rounds ≥ 1)
``rounds/NNNN/strategy.npz``   the strategy's state after round NNNN (rounds ≥ 1;
                               named plain arrays, ``Strategy.state()``)
``global_model.npz``           the model in force (the newest of the above)
``metrics.json``               every round's record so far, a JSON list
=============================  ===============================================
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from agent.atomic import write_json
from agent.roles.aggregator.records import GlobalState, RoundRecord
from agent.state import read_arrays, write_arrays, write_weights


class RunStore:
    """The files of one run under ``state_dir``. Every write happens in a worker thread
    (a model is megabytes) and raises ``OSError`` when the disk refuses it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def round_dir(self, r: int) -> Path:
        return self.state_dir / "rounds" / f"{r:04d}"

    async def save_model(self, r: int, state: GlobalState) -> None:
        """``state`` as round ``r``'s model and as the model in force."""
        await asyncio.to_thread(write_weights, self.round_dir(r) / "model.npz", state.weights)
        await asyncio.to_thread(write_weights, self.state_dir / "global_model.npz", state.weights)

    async def save_round(self, record: RoundRecord, state: GlobalState) -> None:
        """Round ``record.round``: the model after it and its record."""
        await self.save_model(record.round, state)
        path = self.round_dir(record.round) / "metrics.json"
        await asyncio.to_thread(write_json, path, record.to_dict())

    async def save_strategy(self, r: int, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """The strategy's state after round ``r`` (``rounds/NNNN/strategy.npz``)."""
        await asyncio.to_thread(write_arrays, self.round_dir(r) / "strategy.npz", state)

    def load_strategy(self, r: int) -> dict[str, npt.NDArray[Any]]:
        """What ``save_strategy(r, ...)`` wrote, for ``Strategy.load_state``.

        Raises:
            OSError: no such file.
        """
        return read_arrays(self.round_dir(r) / "strategy.npz")

    async def save_run(self, records: Sequence[RoundRecord]) -> None:
        """``metrics.json``: every round so far."""
        data = [x.to_dict() for x in records]
        await asyncio.to_thread(write_json, self.state_dir / "metrics.json", data)
