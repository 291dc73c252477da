"""Shamir secret sharing of 32-byte secrets over GF(p), p = 2^31 − 1, vectorised with numpy.

Shamir, "How to Share a Secret", CACM 22(11), 1979. A secret is cut into 16 chunks of 16 bits;
each chunk is the constant term of its own random polynomial of degree t − 1 over GF(p), and
holder i receives the 16 evaluations at its x-coordinate x_i ∈ [1, p). Any t shares give every
chunk back by Lagrange interpolation at 0; t − 1 shares are uniformly distributed whatever the
secret. p = 2^31 − 1 keeps every product below 2^62, so int64 arithmetic never overflows, and
all secrets, holders and chunks of a batch are processed at once.

A reconstructed chunk outside [0, 2^16) cannot come from honest shares: ``combine`` reports it
as a ``ShareError``. A garbage share is caught this way except with probability 2^-240; a
deliberately crafted one is not (callers that can, verify the result: the aggregator checks a
rebuilt mask key against its advertised public key).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agent.errors import ShareError

PRIME = (1 << 31) - 1
SECRET_BYTES = 32
CHUNKS = SECRET_BYTES // 2
#: Bytes of one share on the wire: 16 little-endian uint32 field elements.
SHARE_BYTES = CHUNKS * 4

IntArray = npt.NDArray[np.int64]


def _random_field(shape: tuple[int, ...]) -> IntArray:
    """Uniform-ish elements of GF(p) from the OS CSPRNG (64-bit draws mod p: bias < 2^-32)."""
    count = int(np.prod(shape))
    raw = np.frombuffer(os.urandom(8 * count), dtype="<u8")
    return (raw % PRIME).astype(np.int64).reshape(shape)


def split(secrets: Sequence[bytes], *, xs: Sequence[int], threshold: int) -> IntArray:
    """Share each secret among the holders at ``xs`` so that any ``threshold`` recover it.

    Args:
        secrets: S secrets of 32 bytes each.
        xs: the holders' distinct x-coordinates, each in [1, p).
        threshold: t, 1 ≤ t ≤ len(xs).

    Returns:
        shape (S, len(xs), 16), int64, values in [0, p): share j of secret s is ``out[s, j]``.

    Raises:
        ValueError: a secret of the wrong length, repeated or out-of-range xs, bad threshold.
    """
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be between 1 and {len(xs)}")
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ValueError("x-coordinates must be distinct and in [1, p)")
    if any(len(s) != SECRET_BYTES for s in secrets):
        raise ValueError(f"every secret must be {SECRET_BYTES} bytes")
    count = len(secrets)
    chunks = np.frombuffer(b"".join(secrets), dtype="<u2").astype(np.int64)
    chunks = chunks.reshape(count, 1, CHUNKS)
    coefficients = _random_field((threshold - 1, count, 1, CHUNKS))
    x = np.asarray(xs, dtype=np.int64).reshape(1, -1, 1)
    # Horner: f(x) = (((a_{t-1} x + a_{t-2}) x + …) x + secret), all mod p.
    acc = np.zeros((count, len(xs), CHUNKS), dtype=np.int64)
    for a in coefficients[::-1]:
        acc = (acc + a) % PRIME * x % PRIME
    return (acc + chunks) % PRIME


def _inverse(values: IntArray) -> IntArray:
    """Elementwise inverse in GF(p) by Fermat: v^(p−2), square-and-multiply over 31 bits."""
    result = np.ones_like(values)
    base = values % PRIME
    exponent = PRIME - 2
    while exponent:
        if exponent & 1:
            result = result * base % PRIME
        base = base * base % PRIME
        exponent >>= 1
    return result


def lagrange_at_zero(xs: IntArray) -> IntArray:
    """Lagrange basis at 0 for each row of x-coordinates: λ_i = Π_{j≠i} x_j / (x_j − x_i).

    Args:
        xs: shape (S, t), int64, each row distinct values in [1, p).

    Returns:
        shape (S, t), int64 in [0, p).
    """
    count, t = xs.shape
    num = np.ones((count, t), dtype=np.int64)
    den = np.ones((count, t), dtype=np.int64)
    for j in range(t):
        xj = xs[:, j : j + 1]
        others = np.arange(t) != j
        num[:, others] = num[:, others] * xj % PRIME
        den[:, others] = den[:, others] * ((xj - xs[:, others]) % PRIME) % PRIME
    return num * _inverse(den) % PRIME


def combine(xs: IntArray, ys: IntArray) -> list[bytes]:
    """Reconstruct S secrets, each from t shares.

    Args:
        xs: shape (S, t), int64: the holders' x-coordinates, distinct per row.
        ys: shape (S, t, 16), int64: their shares.

    Returns:
        S secrets of 32 bytes.

    Raises:
        ShareError: repeated x-coordinates in a row, or a result that no honest set of shares
            produces (a corrupted share, or shares of different secrets).
    """
    xs = np.asarray(xs, dtype=np.int64)
    ys = np.asarray(ys, dtype=np.int64)
    if xs.ndim != 2 or ys.shape != (*xs.shape, CHUNKS):
        raise ShareError(f"share arrays of shapes {xs.shape} and {ys.shape} do not match")
    if xs.shape[0] == 0:
        return []
    ordered = np.sort(xs, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any() or (xs <= 0).any() or (xs >= PRIME).any():
        raise ShareError("x-coordinates must be distinct and in [1, p)")
    weights = lagrange_at_zero(xs)
    acc = np.zeros((xs.shape[0], CHUNKS), dtype=np.int64)
    for i in range(xs.shape[1]):
        acc = (acc + weights[:, i : i + 1] * (ys[:, i] % PRIME)) % PRIME
    if (acc >= 1 << 16).any():
        raise ShareError("the shares do not reconstruct a valid secret")
    data = acc.astype("<u2").tobytes()
    return [data[i * SECRET_BYTES : (i + 1) * SECRET_BYTES] for i in range(xs.shape[0])]


def share_to_bytes(share: IntArray) -> bytes:
    """One share, shape (16,), as 64 bytes (little-endian uint32)."""
    return np.asarray(share, dtype="<u4").tobytes()


def share_from_bytes(data: bytes) -> IntArray:
    """The inverse of ``share_to_bytes``.

    Raises:
        ShareError: not 64 bytes, or an element outside GF(p).
    """
    if len(data) != SHARE_BYTES:
        raise ShareError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    share = np.frombuffer(data, dtype="<u4").astype(np.int64)
    if (share >= PRIME).any():
        raise ShareError("a share element lies outside GF(p)")
    return share
