"""The mask PRG: AES-256 in counter mode, keyed by a full 256-bit seed, read as ring words.

PRG(seed) is the AES-256-CTR keystream under key ``seed`` with an all-zero initial counter
block (NIST SP 800-38A §6.5), taken as little-endian uint32 or uint64 words. Every seed is
used for one stream only: seeds are fresh per round (HKDF outputs of fresh X25519 agreements,
or a fresh random self-mask seed), so a counter never repeats under one key. The keystream
of AES-CTR is computationally indistinguishable from uniform, so each word is uniform on
Z_2^m (Bonawitz et al., CCS 2017, §4: masks from a secure PRG).

Masks are added and removed in place on a ring vector; numpy's unsigned arithmetic wraps
modulo 2^m, which is exactly the ring's addition.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_ZERO_COUNTER = bytes(16)

RingVector = npt.NDArray[np.unsignedinteger[Any]]


class MaskStream:
    """Expands seeds to masks of one length and word size, reusing its buffers.

    Not thread-safe: give each thread its own.
    """

    def __init__(self, length: int, dtype: np.dtype[Any]) -> None:
        self.length = length
        self.dtype = np.dtype(dtype)
        nbytes = length * self.dtype.itemsize
        self._zeros = bytes(nbytes)
        # update_into needs len(out) ≥ len(data) + block size − 1.
        self._out = bytearray(nbytes + 15)
        self._words = np.frombuffer(self._out, dtype=self.dtype, count=length)

    def expand(self, seed: bytes) -> RingVector:
        """PRG(seed): shape (length,), ``dtype``. The array is a view of an internal buffer,
        valid until the next call.

        Raises:
            ValueError: ``seed`` is not 32 bytes.
        """
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a PRG seed is {SEED_BYTES} bytes, got {len(seed)}")
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
        encryptor.update_into(self._zeros, self._out)
        return self._words

    def add(self, target: RingVector, seed: bytes) -> None:
        """target += PRG(seed) in Z_2^m, in place."""
        np.add(target, self.expand(seed), out=target)

    def subtract(self, target: RingVector, seed: bytes) -> None:
        """target −= PRG(seed) in Z_2^m, in place."""
        np.subtract(target, self.expand(seed), out=target)


def expand(seed: bytes, length: int, dtype: np.dtype[Any]) -> RingVector:
    """PRG(seed) as a fresh array of ``length`` words (see ``MaskStream.expand``)."""
    return MaskStream(length, dtype).expand(seed).copy()
