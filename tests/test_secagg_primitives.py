"""SecAgg+ building blocks: params, quantization, PRG, Shamir, key agreement, graph."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError, CryptoError, ShareError
from agent.secagg import keys, shamir
from agent.secagg.graph import neighbours
from agent.secagg.params import (
    SecAggParams,
    abort_bound,
    default_neighbours,
    default_threshold,
    resolve,
)
from agent.secagg.prg import MaskStream, expand
from agent.secagg.quantize import dequantize_sum, error_bound, quantize

#: χ²(255) at p = 10⁻⁶ (Wilson-Hilferty): a uniform sample exceeds it once in a million.
CHI2_CRITICAL = 377.2

# -- params ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 5, 10, 17, 50, 100, 101, 1000])
def test_default_neighbours_meet_the_design_bound(n: int) -> None:
    """The default k is at least ⌈2·log2 n⌉ (or n−1), meets the abort bound unless capped at
    n−1, and gives a valid graph."""
    k = default_neighbours(n)
    assert k <= n - 1
    assert k >= min(n - 1, math.ceil(2 * math.log2(n)))
    assert (n * k) % 2 == 0
    if k < n - 1:
        assert abort_bound(n, k, default_threshold(k)) < 1e-3
    resolve(n)  # valid parameters


def test_default_for_a_hundred_clients() -> None:
    """n = 100 gets k = 19, t = 10, 24-bit values in a 32-bit ring."""
    p = resolve(100)
    assert (p.num_neighbours, p.threshold, p.quantization_bits, p.ring_bits) == (19, 10, 24, 32)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"num_neighbours": 9, "threshold": 10}, "nothing could be unmasked"),
        ({"num_neighbours": 8, "threshold": 4}, "must exceed num_neighbours/2"),
        ({"num_neighbours": 1}, "between 2 and"),
        ({"clipping_range": 0.0}, "clipping_range"),
        ({"max_weight": 0}, "max_weight"),
    ],
)
def test_insecure_or_unreconstructable_params_are_refused(kwargs: dict, words: str) -> None:
    """Parameters that cannot be secure or cannot reconstruct raise ConfigError saying why."""
    with pytest.raises(ConfigError, match=words):
        resolve(10, **kwargs)


def test_tiny_cohort_is_refused() -> None:
    """Fewer than 3 clients cannot hide an update from each other."""
    with pytest.raises(ConfigError, match="cannot hide"):
        resolve(2)


def test_wide_values_move_to_a_64_bit_ring() -> None:
    """Explicit 30-bit values for 100 clients do not fit 32 bits: the ring becomes 64-bit."""
    p = resolve(100, quantization_bits=30)
    assert p.ring_bits == 64
    assert p.dtype == np.uint64


def test_params_that_can_wrap_are_refused() -> None:
    """A ring too narrow for n·(2^b − 1) is refused rather than silently wrapping."""
    with pytest.raises(ConfigError, match="wrap"):
        SecAggParams(
            num_clients=100,
            num_neighbours=19,
            threshold=10,
            clipping_range=1.0,
            quantization_bits=30,
            ring_bits=32,
            max_weight=1,
        )


# -- quantization -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(3, 40),
    d=st.integers(1, 300),
    bits=st.integers(4, 24),
    clip=st.floats(0.1, 100),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantized_sum_is_within_the_bound(
    n: int, d: int, bits: int, clip: float, seed: int
) -> None:
    """Σ dequantized = Σ w·clip(x)/W within one step per client, for any n, d, b, c."""
    params = resolve(n, quantization_bits=bits, clipping_range=clip, max_weight=50)
    rng = np.random.default_rng(seed)
    xs = rng.normal(0, clip, (n, d))
    ws = rng.integers(1, 80, n)
    total = params.zeros(d)
    for x, w in zip(xs, ws, strict=True):
        total += quantize(x, weight=int(w), params=params, rng=rng)
    got = dequantize_sum(total, survivors=n, params=params)
    want = sum(np.clip(x, -clip, clip) * min(int(w), 50) / 50 for x, w in zip(xs, ws, strict=True))
    assert np.abs(got - want).max() <= error_bound(n, params) * (1 + 1e-9) + 1e-9


def test_stochastic_rounding_is_unbiased() -> None:
    """The mean of many quantizations of one value is that value (to well within a step)."""
    params = resolve(10, quantization_bits=4, clipping_range=1.0)
    x = np.full(200_000, 0.123)
    q = quantize(x, weight=params.max_weight, params=params)
    mean = float(dequantize_sum(q, survivors=1, params=params).mean())
    assert abs(mean - 0.123) < params.step / 50


def test_quantize_refuses_nan_and_bad_weight() -> None:
    """NaN and a weight below 1 are errors, not garbage in the sum."""
    params = resolve(10)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([np.nan]), weight=1, params=params)
    with pytest.raises(ValueError, match="weight"):
        quantize(np.zeros(3), weight=0, params=params)


# -- PRG --------------------------------------------------------------------------------------


def test_prg_is_deterministic_and_seed_sensitive() -> None:
    """Same seed, same mask; one flipped bit of the seed, an unrelated mask."""
    seed = os.urandom(32)
    a = expand(seed, 1000, np.dtype(np.uint32))
    assert np.array_equal(a, expand(seed, 1000, np.dtype(np.uint32)))
    other = bytes([seed[0] ^ 1]) + seed[1:]
    assert (a != expand(other, 1000, np.dtype(np.uint32))).mean() > 0.99


def test_prg_add_then_subtract_is_identity() -> None:
    """Masks added and removed in Z_2^m leave the vector unchanged, in both word sizes."""
    for dtype in (np.uint32, np.uint64):
        stream = MaskStream(777, np.dtype(dtype))
        v = np.arange(777, dtype=dtype)
        seed = os.urandom(32)
        stream.add(v, seed)
        assert not np.array_equal(v, np.arange(777, dtype=dtype))
        stream.subtract(v, seed)
        assert np.array_equal(v, np.arange(777, dtype=dtype))


def test_prg_refuses_short_seeds() -> None:
    """Only a full 256-bit seed keys the PRG."""
    with pytest.raises(ValueError, match="32 bytes"):
        expand(b"\x00" * 4, 10, np.dtype(np.uint32))


# -- Shamir -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    holders=st.integers(2, 40),
    data=st.data(),
    count=st.integers(1, 5),
)
def test_any_t_shares_rebuild_every_secret(holders: int, data: st.DataObject, count: int) -> None:
    """For random n, t and secrets, any t of the n shares rebuild each secret exactly."""
    t = data.draw(st.integers(1, holders))
    secrets = [data.draw(st.binary(min_size=32, max_size=32)) for _ in range(count)]
    xs = data.draw(
        st.lists(st.integers(1, shamir.PRIME - 1), min_size=holders, max_size=holders, unique=True)
    )
    shares = shamir.split(secrets, xs=xs, threshold=t)
    picks = [data.draw(st.permutations(range(holders)))[:t] for _ in range(count)]
    sub_x = np.array([[xs[j] for j in p] for p in picks])
    sub_y = np.array([[shares[i, j] for j in p] for i, p in enumerate(picks)])
    assert shamir.combine(sub_x, sub_y) == secrets


@pytest.fixture
def seeded_shamir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shamir's random coefficients from a fixed numpy seed (uniform on GF(p)), so the
    statistical tests below give the same statistic on every run: they cannot flake."""
    rng = np.random.default_rng(20_240_601)

    def field(shape: tuple[int, ...]) -> np.ndarray:
        return rng.integers(0, shamir.PRIME, size=shape, dtype=np.int64)

    monkeypatch.setattr(shamir, "_random_field", field)


def _interpolate_at(x: int, points: list[tuple[int, int]]) -> int:
    """The value at ``x`` of the polynomial through ``points`` over GF(p) (Lagrange, exact
    Python integers: independent of shamir's vectorised arithmetic)."""
    p, total = shamir.PRIME, 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if j != i:
                term = term * (x - xj) * pow(xi - xj, p - 2, p) % p
        total = (total + term) % p
    return total


def _joint_top_bits_chi2(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson's χ² of the joint top 4 bits of two share arrays against uniform on the
    16 × 16 cells (255 degrees of freedom)."""
    cells = (first >> 27) * 16 + (second >> 27)
    observed = np.bincount(cells.ravel(), minlength=256)
    expected = cells.size / 256
    return float(((observed - expected) ** 2 / expected).sum())


def test_fewer_than_t_shares_are_consistent_with_every_secret() -> None:
    """t−1 shares rule no secret out: for each of several unrelated candidate secrets there is
    a t-th share (the polynomial through the t−1 shares and the candidate at 0) with which
    ``combine`` rebuilds exactly that candidate."""
    t, xs = 4, [3, 5, 8]  # t − 1 = 3 shares held
    secret = os.urandom(32)
    held = shamir.split([secret], xs=[*xs, 11], threshold=t)[0, : t - 1]
    extra_x = 11
    candidates = [secret, bytes(32), b"\xff" * 32, os.urandom(32), os.urandom(32)]
    for candidate in candidates:
        chunks = np.frombuffer(candidate, dtype="<u2").astype(np.int64)
        extra = [
            _interpolate_at(
                extra_x, [(0, int(c)), *zip(xs, (int(v) for v in held[:, k]), strict=True)]
            )
            for k, c in enumerate(chunks)
        ]
        ys = np.concatenate([held, np.asarray([extra], dtype=np.int64)])
        assert shamir.combine(np.array([[*xs, extra_x]]), ys[np.newaxis]) == [candidate]


@pytest.mark.usefixtures("seeded_shamir")
def test_fewer_than_t_shares_are_jointly_uniform_whatever_the_secret() -> None:
    """t−1 shares are uniform on GF(p)^(t−1) whatever the secret: for 4000 splits each of the
    all-zero and the all-0xff secret (t = 3), the joint top bits of the two shares held pass a
    χ² test for uniformity (p = 10⁻⁶), while t shares of the zero secret, which determine it,
    fail the same test by orders of magnitude."""
    splits = 4000
    for secret in (bytes(32), b"\xff" * 32):
        shares = shamir.split([secret] * splits, xs=[1, 2, 3], threshold=3)
        assert _joint_top_bits_chi2(shares[:, 0], shares[:, 1]) < CHI2_CRITICAL
    whole = shamir.split([bytes(32)] * splits, xs=[1, 2], threshold=2)
    assert _joint_top_bits_chi2(whole[:, 0], whole[:, 1]) > 100 * CHI2_CRITICAL


@pytest.mark.usefixtures("seeded_shamir")
def test_combine_refuses_fewer_than_t_shares() -> None:
    """``combine`` over t−1 shares does not return a guess: their interpolation at 0 is
    uniform on GF(p), so it is a ShareError (every chunk outside 16 bits but with
    probability 2^-15 each), never the secret."""
    secrets = [os.urandom(32) for _ in range(50)]
    shares = shamir.split(secrets, xs=[1, 2, 3], threshold=3)
    with pytest.raises(ShareError, match="do not reconstruct"):
        shamir.combine(np.array([[1, 2]] * len(secrets)), shares[:, :2])
    for i in range(len(secrets)):
        with pytest.raises(ShareError, match="do not reconstruct"):
            shamir.combine(np.array([[1, 2]]), shares[i : i + 1, :2])


def test_a_corrupted_share_is_detected() -> None:
    """A share replaced by garbage does not rebuild a valid secret (every chunk lands
    outside 16 bits except with probability 2^-15 each)."""
    shares = shamir.split([os.urandom(32)], xs=[1, 2, 3, 4], threshold=3)
    shares[0, 1] = np.random.default_rng().integers(0, shamir.PRIME, shamir.CHUNKS)
    with pytest.raises(ShareError):
        shamir.combine(np.array([[1, 2, 3]]), shares[:, :3])


def test_share_bytes_round_trip_and_validation() -> None:
    """A share travels as 64 bytes; wrong sizes and out-of-field values are refused."""
    share = shamir.split([os.urandom(32)], xs=[7], threshold=1)[0, 0]
    assert np.array_equal(shamir.share_from_bytes(shamir.share_to_bytes(share)), share)
    with pytest.raises(ShareError):
        shamir.share_from_bytes(b"\x00" * 63)
    with pytest.raises(ShareError):
        shamir.share_from_bytes(b"\xff" * 64)


# -- keys -------------------------------------------------------------------------------------


def test_agreement_is_symmetric_and_bound_to_context() -> None:
    """u and v derive the same 256-bit seed; another round or federation derives another."""
    u, v = keys.generate(), keys.generate()
    ctx = keys.RoundContext("fed", 4)
    info = ctx.info(keys.MASK_PURPOSE, "u", "v")
    a = keys.agree(u, keys.public_bytes(v), info=info)
    assert a == keys.agree(v, keys.public_bytes(u), info=ctx.info(keys.MASK_PURPOSE, "v", "u"))
    assert len(a) == 32
    other = keys.RoundContext("fed", 5).info(keys.MASK_PURPOSE, "u", "v")
    assert a != keys.agree(u, keys.public_bytes(v), info=other)


def test_low_order_public_key_is_a_crypto_error() -> None:
    """An all-zero peer key (a low-order point) is refused, not turned into a zero key."""
    with pytest.raises(CryptoError):
        keys.agree(keys.generate(), bytes(32), info=b"x")


def test_share_ciphertext_is_authenticated() -> None:
    """A flipped bit or other associated data makes decryption fail with ShareError."""
    key = os.urandom(32)
    blob = keys.encrypt(key, b"secret shares", associated_data=b"ad")
    assert keys.decrypt(key, blob, associated_data=b"ad") == b"secret shares"
    with pytest.raises(ShareError):
        keys.decrypt(key, blob, associated_data=b"other")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ShareError):
        keys.decrypt(key, tampered, associated_data=b"ad")


# -- graph ------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(n=st.integers(3, 120), data=st.data())
def test_graph_is_k_regular_and_symmetric(n: int, data: st.DataObject) -> None:
    """For any n and valid k the graph is k-regular, symmetric and loop-free."""
    k = data.draw(st.integers(1, n - 1).filter(lambda k: (n * k) % 2 == 0))
    cohort = [f"agent-{i}" for i in range(n)]
    graph = neighbours(cohort, k=k, seed=data.draw(st.binary(min_size=32, max_size=32)))
    for a, near in graph.items():
        assert len(near) == k
        assert a not in near
        assert all(a in graph[b] for b in near)


def test_graph_depends_on_the_seed_only() -> None:
    """Everyone derives the same graph from the same seed; another seed gives another."""
    cohort = [f"a{i}" for i in range(30)]
    seed = os.urandom(32)
    assert neighbours(cohort, k=6, seed=seed) == neighbours(cohort[::-1], k=6, seed=seed)
    assert neighbours(cohort, k=6, seed=seed) != neighbours(cohort, k=6, seed=os.urandom(32))


def test_prg_masks_a_slice_as_the_whole_stream_would() -> None:
    """``offset`` seeks the keystream: slices at any (also unaligned) offset, masked one by
    one, give the vector masked at once."""
    for dtype in (np.uint32, np.uint64):
        seed = os.urandom(32)
        whole = np.arange(1001, dtype=dtype)
        MaskStream(1001, np.dtype(dtype)).add(whole, seed)
        pieces = np.arange(1001, dtype=dtype)
        stream = MaskStream(1001, np.dtype(dtype))
        for lo, hi in ((0, 3), (3, 500), (500, 1000), (1000, 1001)):
            stream.add(pieces[lo:hi], seed, lo)
        assert np.array_equal(whole, pieces)
    with pytest.raises(ValueError, match="stream of 10"):
        MaskStream(10, np.dtype(np.uint32)).add(np.zeros(4, np.uint32), os.urandom(32), 8)


def test_the_trainers_delta_source_reads_the_clipped_delta_block_by_block() -> None:
    """``DeltaSource`` gives, block by block, what the whole-vector path built: the averaged
    arrays' delta (carried int arrays left out) scaled to the bound, then the metric words."""
    from agent.privacy.clipping import clip
    from agent.robust.bounds import clip_norm
    from agent.roles.trainer.masked_update import DeltaSource, clip_scale
    from agent.strategy.update import masked_delta

    rng = np.random.default_rng(3)
    base = [rng.normal(size=(7, 5)).astype(np.float32), np.arange(3), rng.normal(size=11)]
    trained = [b + rng.normal(size=b.shape).astype(b.dtype) for b in base]
    tail = np.array([0.25, 1.0])
    source = DeltaSource(trained, base, tail=tail)
    source.scale = clip_scale(source.norm(), norm_bound=2.0, clip_norm=1.5)
    expected = clip([clip_norm(masked_delta(trained, base), 2.0)], 1.5)[0][0]
    out = np.empty(source.length)
    for start in range(0, source.length, 4):
        source.read(start, out[start : start + 4])
    assert source.length == 35 + 11 + 2
    assert np.allclose(out[:-2], expected)
    assert np.array_equal(out[-2:], tail)
