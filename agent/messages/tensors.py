"""Tensors on the wire: dtype + shape + little-endian raw bytes. Never pickle.

A ``Tensor`` is validated when it is turned back into an array: the dtype must be in
``ALLOWED_DTYPES`` and ``len(data)`` must equal ``prod(shape) * itemsize``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

from agent.errors import DecodeError

#: numpy dtype strings accepted on the wire (little-endian or byte-order free).
ALLOWED_DTYPES = frozenset(
    {"<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|b1"}
)
MAX_NDIM = 8

Dim = Annotated[int, msgspec.Meta(ge=0, le=2**40)]


class Tensor(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One array: ``dtype`` (numpy dtype string, e.g. ``"<f4"``), ``shape``, raw ``data``."""

    dtype: Annotated[str, msgspec.Meta(max_length=4)]
    shape: Annotated[list[Dim], msgspec.Meta(max_length=MAX_NDIM)]
    data: bytes


def to_tensor(array: npt.NDArray[Any]) -> Tensor:
    """Encode ``array`` (any shape, a dtype in ``ALLOWED_DTYPES`` after conversion to
    little-endian) as a ``Tensor``.

    Raises:
        ValueError: the dtype cannot travel (object, string, complex, ...).
    """
    le = np.asarray(array, dtype=array.dtype.newbyteorder("<"))  # keeps 0-d arrays 0-d
    if le.dtype.str not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {array.dtype} cannot travel; allowed: {sorted(ALLOWED_DTYPES)}")
    return Tensor(dtype=le.dtype.str, shape=list(le.shape), data=le.tobytes(order="C"))


def as_tensor(array: npt.NDArray[Any]) -> Tensor:
    """``to_tensor`` without the copy when ``array`` is C-contiguous and little-endian:
    ``data`` is then a read-only memoryview of the array's bytes (the array must not change
    until the Tensor has been sent). Anything else is copied as by ``to_tensor``.

    Raises:
        ValueError: as ``to_tensor``.
    """
    le = array.dtype.newbyteorder("<")
    if array.dtype != le or not array.flags.c_contiguous or le.str not in ALLOWED_DTYPES:
        return to_tensor(array)
    view: Any = memoryview(array.reshape(-1).data).cast("B").toreadonly()
    return Tensor(dtype=le.str, shape=list(array.shape), data=view)


def to_array(tensor: Tensor) -> npt.NDArray[Any]:
    """Decode a ``Tensor`` into a read-only array (zero-copy view of ``tensor.data``).

    Raises:
        DecodeError: unknown dtype, a byte length that does not match dtype and shape, or a
            shape numpy cannot build.
    """
    if tensor.dtype not in ALLOWED_DTYPES:
        raise DecodeError(f"tensor dtype {tensor.dtype!r} is not allowed")
    dtype = np.dtype(tensor.dtype)
    expected = math.prod(tensor.shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise DecodeError(
            f"tensor of dtype {tensor.dtype} and shape {tuple(tensor.shape)} needs "
            f"{expected} bytes, got {len(tensor.data)}"
        )
    try:  # an empty tensor can still name dimensions numpy refuses (e.g. [0, 2**40, 2**40])
        return np.frombuffer(tensor.data, dtype=dtype).reshape(tensor.shape)
    except ValueError as exc:
        raise DecodeError(f"tensor shape {tuple(tensor.shape)} cannot be built: {exc}") from None


def to_tensors(arrays: Sequence[npt.NDArray[Any]]) -> list[Tensor]:
    """``to_tensor`` over a list of arrays (model weights)."""
    return [to_tensor(a) for a in arrays]


def to_arrays(tensors: Sequence[Tensor]) -> list[npt.NDArray[Any]]:
    """``to_array`` over a list of tensors. Raises ``DecodeError`` like ``to_array``."""
    return [to_array(t) for t in tensors]


def digest(tensors: Sequence[Tensor]) -> str:
    """SHA-256 (hex, 64 chars) over every tensor's dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.dtype.encode())
        h.update(np.asarray(t.shape, dtype="<u8").tobytes())
        h.update(len(t.data).to_bytes(8, "little"))
        h.update(t.data)
    return h.hexdigest()
