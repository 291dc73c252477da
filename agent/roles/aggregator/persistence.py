"""What the aggregator keeps on disk for one run, under ``state_dir/runs/<run_id>/``
(``agent.roles.aggregator.runs`` allocates the directory; ``resume`` reads it back).

=================================  ===========================================================
``rounds/NNNN/model.npz``          the global model after round NNNN (0000: the initial one)
``rounds/NNNN/metrics.json``       that round's ``RoundRecord`` (rounds ≥ 1)
``rounds/NNNN/strategy.npz``       the strategy's state after round NNNN (``Strategy.state()``)
``rounds/NNNN/checkpoint.json``    what a restart needs to go on after NNNN (``Checkpoint``)
``open/NNNN-<incarnation>.json``   a round in progress: its cohort and the SecAgg+ stage it
                                   reached; a restart finds it and aborts that round
``global_model.npz``               the model in force (the newest committed round's)
``metrics.json``                   every committed round's record, a JSON list
=================================  ===========================================================

A round is **committed** when its directory appears: its files are written (each through
``agent.atomic``) into ``rounds/.NNNN.<incarnation>.partial/``, which is then renamed to
``rounds/NNNN`` and the parent fsynced. A SIGKILL at any instant leaves either no
``rounds/NNNN`` (the round is re-run; the partial directory stays, nothing is deleted) or a
whole one. ``state_dir/global_model.npz`` and ``state_dir/metrics.json`` mirror the current
run's, for tools that read the state dir.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy.typing as npt

from agent.atomic import write_json
from agent.roles.aggregator.records import GlobalState, RoundRecord
from agent.runtime.tasks import finish_in_thread
from agent.state import read_arrays, write_arrays, write_weights

#: Awaited after each committed round with the run directory and the record (the round
#: ledger's hook: it appends its record there).
RoundPersisted = Callable[[Path, RoundRecord], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a restarted aggregator needs to continue after ``round``.

    Attributes:
        run_id: the run (``runs/<run_id>``).
        round: the last committed round (0: only the initial model).
        model_version, model_sha256: the model in force after ``round``.
        rng_state: ``random.Random.getstate()`` of the cohort sampler, as JSON lists.
        admitted: agent id → num_examples of the agents admitted when the round ended.
        incarnation: the aggregator process that committed it.
        time: Unix seconds of the commit.
    """

    run_id: str
    round: int
    model_version: int
    model_sha256: str
    rng_state: list[Any]
    admitted: dict[str, int] = field(default_factory=dict)
    incarnation: str = ""
    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Raises ``KeyError``/``TypeError`` on a malformed file."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def rng_state(state: tuple[Any, ...]) -> list[Any]:
    """``random.Random.getstate()`` as JSON (tuples become lists)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_tuple(state: Sequence[Any]) -> tuple[Any, ...]:
    """The inverse of ``rng_state``, for ``random.Random.setstate``."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class RunStore:
    """The files of one run under ``run_dir``. Writes happen in a worker thread (a model is
    megabytes) and raise ``OSError`` when the disk refuses them.

    Args:
        run_dir: ``state_dir/runs/<run_id>``.
        incarnation: this aggregator process (names its partial and open files).
        mirror: the state dir whose ``global_model.npz`` and ``metrics.json`` follow the run.
    """

    def __init__(self, run_dir: Path, *, incarnation: str = "", mirror: Path | None = None):
        self.run_dir = run_dir
        self.incarnation = incarnation or "x"
        self._mirror = mirror
        #: awaited after each committed round (``RoundPersisted``); errors propagate
        self.on_round_persisted: list[RoundPersisted] = []

    def round_dir(self, r: int) -> Path:
        return self.run_dir / "rounds" / f"{r:04d}"

    def committed(self, r: int) -> bool:
        return (self.round_dir(r) / "checkpoint.json").is_file()

    async def commit(
        self,
        checkpoint: Checkpoint,
        state: GlobalState,
        *,
        record: RoundRecord | None = None,
        strategy: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> None:
        """Commit round ``checkpoint.round``: model, record, strategy state, checkpoint in a
        partial directory, then the rename (``rounds/NNNN`` appears whole), then the model in
        force, then the ``on_round_persisted`` hooks."""
        await finish_in_thread(self._commit, checkpoint, state, record, strategy)  # a stop waits
        if record is not None:
            for hook in self.on_round_persisted:
                await hook(self.run_dir, record)

    def _commit(
        self,
        checkpoint: Checkpoint,
        state: GlobalState,
        record: RoundRecord | None,
        strategy: Mapping[str, npt.NDArray[Any]] | None,
    ) -> None:
        final = self.round_dir(checkpoint.round)
        partial = final.parent / f".{final.name}.{self.incarnation}.partial"
        write_weights(partial / "model.npz", state.weights)
        if record is not None:
            write_json(partial / "metrics.json", record.to_dict())
        if strategy is not None:
            write_arrays(partial / "strategy.npz", strategy)
        write_json(partial / "checkpoint.json", checkpoint.to_dict())
        os.rename(partial, final)  # refuses (OSError) if a round NNNN is already there
        _fsync_dir(final.parent)
        for where in (self.run_dir, self._mirror):
            if where is not None:
                write_weights(where / "global_model.npz", state.weights)

    def open_round(self, r: int, **fields: Any) -> None:
        """Round ``r`` is in progress (``fields``: cohort, SecAgg+ stage, ...): a restart
        finds ``open/NNNN-<incarnation>.json`` without ``rounds/NNNN`` and aborts the round."""
        data = {"round": r, "incarnation": self.incarnation, "time": time.time(), **fields}
        write_json(self.run_dir / "open" / f"{r:04d}-{self.incarnation}.json", data)

    def load_strategy(self, r: int) -> dict[str, npt.NDArray[Any]]:
        """What round ``r`` saved as the strategy's state, for ``Strategy.load_state``.

        Raises:
            OSError: no such file.
        """
        return read_arrays(self.round_dir(r) / "strategy.npz")

    async def save_run(self, records: Sequence[RoundRecord]) -> None:
        """``metrics.json``: every round so far (in the run dir and the mirror)."""
        data = [x.to_dict() for x in records]
        for where in (self.run_dir, self._mirror):
            if where is not None:
                await finish_in_thread(write_json, where / "metrics.json", data)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
