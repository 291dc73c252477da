"""Model weights ↔ the flat vector SecAgg+ masks.

A model is a list of arrays; SecAgg+ works on one vector of d = Σ sizes values. ``flatten``
concatenates in order (C order within each array); ``unflatten`` cuts a vector back into
arrays shaped and typed like a reference model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Weights = list[npt.NDArray[Any]]


def size_of(weights: Sequence[npt.NDArray[Any]]) -> int:
    """d: the number of values in a model."""
    return sum(int(a.size) for a in weights)


def flatten(weights: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
    """All values, shape (d,), float64."""
    if not weights:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in weights])


def unflatten(flat: npt.NDArray[Any], like: Sequence[npt.NDArray[Any]]) -> Weights:
    """Arrays with the shapes and dtypes of ``like`` holding ``flat``'s values in order.

    Raises:
        ValueError: ``flat`` does not have exactly d values.
    """
    if flat.shape != (size_of(like),):
        raise ValueError(f"a vector of {flat.shape} values cannot fill a model of {size_of(like)}")
    out: Weights = []
    offset = 0
    for ref in like:
        out.append(flat[offset : offset + ref.size].reshape(ref.shape).astype(ref.dtype))
        offset += ref.size
    return out
