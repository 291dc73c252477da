"""The trainer's SecAgg+ input, read block by block from the model arrays (issue 16, item 2).

A trainer masks x = s · (trained - base) ‖ metric words, where the delta covers the averaged
(floating-point) arrays in model order, C order within each, and s ≤ 1 scales it down to the
announced L2 bound and then to distributed DP's clip norm C (Andrew et al. 2021; the same
factors ``robust.bounds.clip_norm`` and ``privacy.clipping.clip`` apply to the whole
delta). ``DeltaSource`` is that x as an ``agent.secagg.client.UpdateSource``: the delta's
norm comes from one pass over the arrays (``robust.bounds.delta_norms``) and each block of
x is computed when the masking reads it, so the trainer never holds a float64 copy of its
update, only the masked ring vector it sends.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.plugin.api import is_averaged
from agent.robust.bounds import delta_norms


def clip_scale(norm: float, *, norm_bound: float, clip_norm: float | None) -> float:
    """s: the factor the delta of L2 norm ``norm`` is scaled by, first to ``norm_bound``
    (0: none; a non-finite norm is left to the quantizer, which clips each coordinate or
    refuses a NaN), then to DP's ``clip_norm`` (None: none).

    Raises:
        ValueError: DP clipping of a delta that is not finite (as ``privacy.clipping.clip``).
    """
    scale = 1.0
    if norm_bound > 0 and math.isfinite(norm) and norm > norm_bound:
        scale = norm_bound / norm
    if clip_norm is not None:
        if not (clip_norm > 0 and math.isfinite(clip_norm)):
            raise ValueError(f"clip norm must be positive and finite, got {clip_norm}")
        clipped = norm * scale
        if not math.isfinite(clipped):
            raise ValueError("cannot clip a delta that is not finite")
        if clipped > 0:
            scale *= min(1.0, clip_norm / clipped)
    return scale


class DeltaSource:
    """x = ``scale`` · (trained - base) over the averaged arrays, then ``tail`` (float64,
    unscaled): ``length`` values, read with ``read(start, out)`` (see the module docstring).

    Raises (constructor):
        ValueError: models of different array counts or shapes.
    """

    def __init__(
        self,
        trained: Sequence[npt.NDArray[Any]],
        base: Sequence[npt.NDArray[Any]],
        *,
        tail: npt.NDArray[np.float64] | None = None,
    ) -> None:
        if len(trained) != len(base):
            raise ValueError(f"{len(trained)} arrays against a model of {len(base)}")
        self._trained: list[npt.NDArray[Any]] = []
        self._base: list[npt.NDArray[Any]] = []
        self._starts: list[int] = []
        size = 0
        for t, b in zip(trained, base, strict=True):
            if np.shape(t) != np.shape(b):
                raise ValueError(f"shape {np.shape(t)} against {np.shape(b)}")
            if is_averaged(b) and b.size:
                self._trained.append(np.asarray(t).reshape(-1))
                self._base.append(np.asarray(b).reshape(-1))
                self._starts.append(size)
                size += b.size
        self.delta_size = size
        self._tail = np.zeros(0, np.float64) if tail is None else tail
        self.length = size + self._tail.shape[0]
        self.scale = 1.0
        self._pairs = (trained, base)

    def norm(self) -> float:
        """‖trained - base‖₂ over the averaged arrays (inf or NaN when not finite)."""
        trained, base = self._pairs
        return delta_norms(base, trained)[1]

    def read(self, start: int, out: npt.NDArray[np.float64]) -> None:
        """out ← x[start : start + len(out)]."""
        end = start + out.shape[0]
        done = start
        i = bisect.bisect_right(self._starts, start) - 1
        while done < min(end, self.delta_size):
            first = self._starts[i]
            t, b = self._trained[i], self._base[i]
            stop = min(end, first + b.size)
            piece = out[done - start : stop - start]
            np.subtract(
                t[done - first : stop - first],
                b[done - first : stop - first],
                out=piece,
                dtype=np.float64,
            )
            done = stop
            i += 1
        if self.scale != 1.0:
            out[: done - start] *= self.scale
        if end > self.delta_size:
            lo = max(start, self.delta_size)
            out[lo - start :] = self._tail[lo - self.delta_size : end - self.delta_size]
