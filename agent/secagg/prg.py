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

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_ZERO_COUNTER = bytes(16)

RingVector = npt.NDArray[np.unsignedinteger[Any]]


#: Words expanded per step by ``MaskStream.add``/``subtract``: the keystream of a segment at
#: word offset o starts at counter block o·itemsize/16 (a multiple of 16 bytes), so masking
#: in segments gives exactly the one-shot stream while holding only one segment.
SEGMENT_WORDS = 1 << 16


class MaskStream:
    """Expands seeds to masks of one length and word size, reusing its buffers.

    ``add`` and ``subtract`` work segment by segment (``SEGMENT_WORDS``), so they need
    O(segment) memory whatever the length; ``expand`` builds the whole mask. With ``offset``
    they mask a slice: ``target`` takes words ``offset … offset + len(target) − 1`` of the
    stream (AES-CTR seeks to any word: counter block ⌊o·itemsize/16⌋, less the bytes before
    it), so a vector masked slice by slice equals the vector masked at once.
    Not thread-safe: give each thread its own.
    """

    def __init__(self, length: int, dtype: np.dtype[Any]) -> None:
        self.length = length
        self.dtype = np.dtype(dtype)
        words = min(length, SEGMENT_WORDS)
        nbytes = words * self.dtype.itemsize + 16  # + the bytes before an unaligned offset
        self._zeros = bytes(nbytes)
        # update_into needs len(out) ≥ len(data) + block size − 1.
        self._out = bytearray(nbytes + 15)

    def expand(self, seed: bytes) -> RingVector:
        """PRG(seed): a fresh array of shape (length,), ``dtype``.

        Raises:
            ValueError: ``seed`` is not 32 bytes.
        """
        _check(seed)
        nbytes = self.length * self.dtype.itemsize
        out = bytearray(nbytes + 15)
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
        encryptor.update_into(bytes(nbytes), out)
        return np.frombuffer(out, dtype=self.dtype, count=self.length)

    def add(self, target: RingVector, seed: bytes, offset: int = 0) -> None:
        """target += PRG(seed)[offset : offset + len(target)] in Z_2^m, in place.

        Raises:
            ValueError: a seed that is not 32 bytes, or a slice beyond ``length``.
        """
        self._apply(target, seed, np.add, offset)

    def subtract(self, target: RingVector, seed: bytes, offset: int = 0) -> None:
        """target −= PRG(seed)[offset : offset + len(target)] in Z_2^m, in place."""
        self._apply(target, seed, np.subtract, offset)

    def apply(
        self, target: RingVector, masks: Sequence[tuple[bytes, int]], offset: int = 0
    ) -> None:
        """target += Σ sign · PRG(seed)[offset : offset + len(target)] over ``masks``
        ((seed, sign) pairs, sign ±1), segment by segment: every mask of a segment is applied
        while it is in cache, one pass over ``target`` instead of one per seed.

        Raises:
            ValueError: as ``add``.
        """
        for start in range(0, len(target), SEGMENT_WORDS):
            piece = target[start : start + SEGMENT_WORDS]
            for seed, sign in masks:
                self._apply(piece, seed, np.add if sign > 0 else np.subtract, offset + start)

    def _apply(self, target: RingVector, seed: bytes, op: Any, offset: int) -> None:
        _check(seed)
        count = len(target)
        if offset < 0 or offset + count > self.length:
            raise ValueError(f"words {offset}…{offset + count} of a stream of {self.length}")
        itemsize = self.dtype.itemsize
        for start in range(0, count, SEGMENT_WORDS):
            words = min(SEGMENT_WORDS, count - start)
            block, skip = divmod((offset + start) * itemsize, 16)
            counter = modes.CTR(block.to_bytes(16, "big"))
            encryptor = Cipher(algorithms.AES(seed), counter).encryptor()
            encryptor.update_into(self._zeros[: skip + words * itemsize], self._out)
            stream = np.frombuffer(self._out, dtype=self.dtype, count=words, offset=skip)
            piece = target[start : start + words]
            op(piece, stream, out=piece)


def _check(seed: bytes) -> None:
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a PRG seed is {SEED_BYTES} bytes, got {len(seed)}")


def expand(seed: bytes, length: int, dtype: np.dtype[Any]) -> RingVector:
    """PRG(seed) as a fresh array of ``length`` words (see ``MaskStream.expand``)."""
    return MaskStream(length, dtype).expand(seed)
