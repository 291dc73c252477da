"""A module's ``state_dict`` as the plugin API's weights, and back.

The weights of a torch plugin are every entry of ``module.state_dict()`` (parameters *and*
buffers), in the state_dict's order, which is the order the module registered them in and
so the same on every agent built by the same factory. ``StateLayout`` records each entry's
name, shape and dtype once; it is how names travel beside the arrays (the wire carries only
the ordered list).

Dtypes are kept: a float32 parameter is a float32 array, BatchNorm's ``num_batches_tracked``
an int64 0-d array. fedbus averages only floating-point arrays and carries integer ones from
the model in force (``agent.strategy.update``), so a counter is never averaged as a float
nor masked under SecAgg+. In the clear the aggregate's counter is the round's survivors'
median (``agent.strategy.carried``: with 3 batches a round on every agent, 3, 6, 9, ...);
under SecAgg+, which hides every agent's arrays, it stays the initial model's. bfloat16,
which numpy lacks, travels as float32 and is cast back.

Copies: ``to_weights`` returns arrays that own their memory (a state_dict's tensors alias
the live parameters, and training would change arrays already handed out). ``load``
accepts read-only arrays, as they come off the wire, and copies them into the module's own
tensors; it never keeps a reference to the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from agent.errors import PluginError

#: torch dtypes numpy cannot hold, and the numpy dtype they travel as.
_WIRE_AS = {torch.bfloat16: np.dtype(np.float32)}


@dataclass(frozen=True, slots=True)
class Entry:
    """One state_dict entry: its name, shape, torch dtype and the numpy dtype it travels as."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    wire: np.dtype[Any]


class StateLayout:
    """The names, shapes and dtypes of a module's state_dict, in order.

    Raises (constructor):
        PluginError: an entry whose dtype cannot travel (complex, quantized, ...).
    """

    def __init__(self, module: torch.nn.Module) -> None:
        entries = []
        for name, tensor in module.state_dict().items():
            wire = _WIRE_AS.get(tensor.dtype)
            if wire is None:
                try:
                    wire = np.dtype(torch.empty(0, dtype=tensor.dtype).numpy().dtype)
                except TypeError as exc:
                    raise PluginError(
                        f"state_dict entry {name!r}: {tensor.dtype} cannot travel"
                    ) from exc
            if wire.kind not in "biuf":
                raise PluginError(f"state_dict entry {name!r}: {tensor.dtype} cannot travel")
            entries.append(Entry(name, tuple(tensor.shape), tensor.dtype, wire))
        self.entries: tuple[Entry, ...] = tuple(entries)

    @property
    def names(self) -> list[str]:
        """The state_dict's keys, in the weights' order."""
        return [e.name for e in self.entries]

    def num_parameters(self) -> int:
        """Values in the state_dict (parameters and buffers)."""
        return sum(int(np.prod(e.shape, dtype=np.int64)) for e in self.entries)

    def to_weights(self, module: torch.nn.Module) -> list[npt.NDArray[Any]]:
        """``module``'s state as fresh numpy arrays (CPU, C order, owning their memory).

        Raises:
            PluginError: the module's state_dict no longer has this layout.
        """
        state = module.state_dict()
        if list(state) != self.names:
            raise PluginError("the module's state_dict keys changed since it was built")
        out = []
        for entry, tensor in zip(self.entries, state.values(), strict=True):
            t = tensor.detach().to("cpu")
            if entry.dtype in _WIRE_AS:
                t = t.to(torch.float32)
            out.append(np.array(t.numpy(), dtype=entry.wire, order="C", copy=True))
        return out

    def load(self, module: torch.nn.Module, weights: Sequence[npt.NDArray[Any]]) -> None:
        """Copy ``weights`` (read-only arrays are fine) into ``module``'s own tensors.

        Raises:
            PluginError: the wrong count, a shape or dtype that differs from the layout, or
                NaN/infinity in a float array.
        """
        if len(weights) != len(self.entries):
            raise PluginError(f"expected {len(self.entries)} arrays, got {len(weights)}")
        state = {}
        for entry, array in zip(self.entries, weights, strict=True):
            a = np.asarray(array)
            if a.shape != entry.shape or a.dtype.newbyteorder("=") != entry.wire:
                raise PluginError(
                    f"{entry.name}: expected {entry.wire} {entry.shape}, got {a.dtype} {a.shape}"
                )
            if a.dtype.kind == "f" and not bool(np.isfinite(a).all()):
                raise PluginError(f"{entry.name}: NaN or infinity")
            # A writable, native-order copy: torch must not alias a read-only wire buffer.
            tensor = torch.from_numpy(np.array(a, dtype=entry.wire, copy=True))
            state[entry.name] = tensor.to(entry.dtype)
        module.load_state_dict(state, strict=True)
