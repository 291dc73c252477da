"""Chunked messages without a broker: manifest + chunks round trip (sealed and in the clear),
out-of-order and duplicate chunks, tampered and misplaced ones, the budget and the deadline,
and the streaming FedAvg fold."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from structlog.testing import capture_logs

from agent.bus.base import BusMessage
from agent.errors import (
    ChunkMismatchError,
    OverBudgetError,
    SealError,
    UnknownTransferError,
)
from agent.messages import Kind
from agent.messages.bodies import Body, Manifest, ModelUpdate
from agent.messages.chunks import build, chunking_plan, frame, parse_frame
from agent.messages.codec import decode_envelope, encode, validate_body
from agent.messages.envelope import new_envelope
from agent.messages.tensors import to_arrays, to_tensors
from agent.robust.settings import OnViolation, RobustConfig
from agent.roles.aggregator.fold import RunningMean
from agent.roles.aggregator.robust_fit import robust_update
from agent.runtime.assembly import assemble
from agent.runtime.listeners import ListenerRegistry, RoundPolicy
from agent.runtime.reassembly import Limits, Reassembly, keep
from agent.strategy.update import ClientResult, mean_update
from tests.helpers import Recorder, unsealing_dispatcher


def built(body: Body, chunk_size: int, *, sealed: bool) -> tuple[Manifest, list[bytes]]:
    """``chunks.build`` with its frames as a list."""
    manifest, frames = build(body, chunk_size, sealed=sealed)
    return manifest, list(frames)


pytestmark = pytest.mark.timeout(30)

TOPIC = "fl/fed/model_para/update/a1"
CHUNK = 64 * 1024


def update(seed: int = 0) -> ModelUpdate:
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((300, 200), np.float32), rng.standard_normal(77, np.float32)]
    return ModelUpdate(model_version=3, num_examples=5, tensors=to_tensors(weights))


def envelope_of(manifest: Manifest):  # type: ignore[no-untyped-def]
    return new_envelope(kind=Kind.MANIFEST, federation="fed", round=1, sender="a1", body=b"")


@pytest.mark.parametrize("sealed", [False, True])
def test_chunks_in_any_order_and_repeated_rebuild_the_body(sealed: bool) -> None:
    """A 240 KB update in 64 KiB chunks, shuffled and each sent twice: the body comes back
    byte for byte, and only the last new chunk completes the transfer."""
    body = update()
    manifest, frames = built(body, CHUNK, sealed=sealed)
    assert len(frames) == chunking_plan(240_308, CHUNK).chunks == 4
    assert (manifest.content_key is not None) is sealed
    reassembly = Reassembly()
    reassembly.begin(TOPIC, envelope_of(manifest), manifest)
    order = frames + frames
    random.Random(1).shuffle(order)
    done = [t for t in (reassembly.add(TOPIC, f) for f in order) if t and not t.missing]
    assert len(done) == 1
    assert len(reassembly) == 0
    rebuilt = validate_body(assemble(done[0]))
    assert isinstance(rebuilt, ModelUpdate)
    for a, b in zip(to_arrays(rebuilt.tensors), to_arrays(body.tensors), strict=True):
        assert np.array_equal(a, b)


def test_a_chunk_being_kept_elsewhere_is_a_duplicate_until_settled() -> None:
    """The receive loop checks a chunk (``check``), another thread keeps it (``keep``) and
    the loop settles it: meanwhile a repeat of it is a duplicate (never folded twice); a
    chunk whose hash failed may come again; a transfer dropped meanwhile settles to None."""
    manifest, frames = built(update(), CHUNK, sealed=False)
    reassembly = Reassembly()
    reassembly.begin(TOPIC, envelope_of(manifest), manifest)
    first = reassembly.check(TOPIC, frames[0])
    assert first is not None
    assert reassembly.check(TOPIC, frames[0]) is None  # in flight: a duplicate
    keep(first)
    transfer = reassembly.settle(first, kept=True)
    assert transfer is not None
    assert transfer.missing == len(frames) - 1
    transfer_id, index, data = parse_frame(frames[1])
    flipped = bytearray(data)
    flipped[3] ^= 0x80
    bad = reassembly.check(TOPIC, frame(transfer_id, index, bytes(flipped)))
    assert bad is not None
    with pytest.raises(ChunkMismatchError):
        keep(bad)
    assert reassembly.settle(bad, kept=False) is None
    late = reassembly.check(TOPIC, frames[1])  # the genuine chunk is not a duplicate
    assert late is not None
    keep(late)
    reassembly.close()  # dropped before it settled (the receiver stopped)
    assert reassembly.settle(late, kept=True) is None


def test_a_tampered_or_misplaced_chunk_is_refused_and_the_genuine_one_still_counts() -> None:
    """One flipped bit fails the chunk's manifest hash; a chunk on another agent's topic
    names no transfer there; the genuine chunk afterwards completes the transfer."""
    manifest, frames = built(update(), CHUNK, sealed=False)
    reassembly = Reassembly()
    reassembly.begin(TOPIC, envelope_of(manifest), manifest)
    transfer, index, data = parse_frame(frames[0])
    flipped = bytearray(data)
    flipped[10] ^= 0x01
    with pytest.raises(ChunkMismatchError):
        reassembly.add(TOPIC, frame(transfer, index, bytes(flipped)))
    with pytest.raises(UnknownTransferError):
        reassembly.add("fl/fed/model_para/update/a2", frames[0])
    with pytest.raises(ChunkMismatchError):
        reassembly.add(TOPIC, frame(transfer, 99, bytes(data)))
    done = [reassembly.add(TOPIC, f) for f in frames][-1]
    assert done is not None
    assert done.missing == 0
    done.close()


def test_a_sealed_chunk_opens_only_under_its_own_index() -> None:
    """Chunks are bound to their index (AAD and nonce): a chunk moved to another slot, with a
    manifest forged to match, does not open."""
    manifest, frames = built(update(), CHUNK, sealed=True)
    _, _, first = parse_frame(frames[0])
    _, _, second = parse_frame(frames[1])
    import hashlib

    import msgspec

    swapped = msgspec.structs.replace(
        manifest,
        chunk_hashes=[
            hashlib.sha256(second).digest(),
            hashlib.sha256(first).digest(),
            *manifest.chunk_hashes[2:],
        ],
    )
    reassembly = Reassembly()
    reassembly.begin(TOPIC, envelope_of(swapped), swapped)
    reassembly.add(TOPIC, frame(manifest.transfer, 0, bytes(second)))
    reassembly.add(TOPIC, frame(manifest.transfer, 1, bytes(first)))
    done = [reassembly.add(TOPIC, f) for f in frames[2:]][-1]
    assert done is not None
    assert done.missing == 0
    with pytest.raises(SealError):
        assemble(done)


def test_the_budget_bounds_what_senders_can_make_a_receiver_hold(tmp_path: Path) -> None:
    """A manifest above max_message, or above what the budget has left, is refused; the
    spool lives on disk, so an open transfer costs the receiver no memory."""
    manifest, _ = built(update(), CHUNK, sealed=False)
    limits = Limits(max_message=300_000, budget=400_000, spool_dir=tmp_path)
    reassembly = Reassembly(limits)
    reassembly.begin(TOPIC, envelope_of(manifest), manifest)
    with pytest.raises(OverBudgetError, match="budget"):
        reassembly.begin("fl/fed/model_para/update/a2", envelope_of(manifest), manifest)
    big, _ = built(
        ModelUpdate(
            model_version=1,
            num_examples=1,
            tensors=to_tensors([np.zeros(100_000, np.float32)]),
        ),
        CHUNK,
        sealed=False,
    )
    with pytest.raises(OverBudgetError, match="max_message"):
        reassembly.begin("fl/fed/model_para/update/a3", envelope_of(big), big)
    assert reassembly.open_bytes == manifest.total_size
    reassembly.close()


def test_an_incomplete_transfer_is_dropped_at_its_deadline() -> None:
    """A transfer missing a chunk ends with one ``transfer_timeout`` line at the deadline,
    and its late chunk names no transfer any more."""
    manifest, frames = built(update(), CHUNK, sealed=False)
    reassembly = Reassembly(Limits(timeout=5.0))
    reassembly.begin(TOPIC, envelope_of(manifest), manifest, now=100.0)
    for f in frames[1:]:
        kept = reassembly.add(TOPIC, f, now=101.0)
        assert kept is not None
        assert kept.missing
    with capture_logs() as logs:
        reassembly.expire(106.0)
    assert [e["reason"] for e in logs if e["event"] == "message_dropped"] == ["transfer_timeout"]
    with pytest.raises(UnknownTransferError):
        reassembly.add(TOPIC, frames[0], now=106.5)


async def test_the_dispatcher_rebuilds_a_sealed_signed_message_from_its_chunks() -> None:
    """Through ``Dispatcher.dispatch``: the sealed manifest opens, the chunks follow, and the
    listener gets the update as a ``model_update`` from a1; an unsealed manifest of an update
    is refused like an unsealed update."""
    key = X25519PrivateKey.generate()
    registry = ListenerRegistry()
    rec = Recorder()
    registry.register(Kind.MODEL_UPDATE, rec, rounds=RoundPolicy.CURRENT)

    dispatcher = unsealing_dispatcher(registry, key)
    body = update()
    manifest, frames = built(body, CHUNK, sealed=True)
    sealed = encode(manifest, federation="fed", round=1, sender="a1", seal_to=key.public_key())
    assert decode_envelope(sealed)[0].sealed
    assert await dispatcher.dispatch(BusMessage(TOPIC, sealed))
    for f in reversed(frames):
        await dispatcher.dispatch(BusMessage(TOPIC, f))
    assert len(rec.seen) == 1
    message = rec.seen[0]
    assert message.kind is Kind.MODEL_UPDATE
    assert message.sender == "a1"
    assert to_arrays(message.body.tensors)[1].tolist() == to_arrays(body.tensors)[1].tolist()
    clear, _ = built(body, CHUNK, sealed=False)
    plain = encode(clear, federation="fed", round=1, sender="a1")
    assert not await dispatcher.dispatch(BusMessage(TOPIC, plain))
    assert dispatcher.dropped == {"unsealable": 1}


def test_the_running_mean_is_fedavg() -> None:
    """Folding updates one at a time gives ``mean_update``'s delta and weight."""
    rng = np.random.default_rng(0)
    current = [rng.standard_normal((50, 40), np.float32), rng.standard_normal(3, np.float32)]
    results = [
        ClientResult(
            f"a{i}", [w + rng.standard_normal(w.shape, np.float32) for w in current], n, {}
        )
        for i, n in enumerate((1, 4, 7))
    ]
    fold = RunningMean(current)
    for r in results:
        fold.add(r.weights, r.num_examples)
    got, want = fold.result(results), mean_update(current, results)
    assert got.total_weight == want.total_weight == 12
    for a, b in zip(got.delta, want.delta, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_the_running_mean_carries_integer_arrays_and_keeps_every_metric() -> None:
    """As ``mean_update``: an int64 counter (a BatchNorm's ``num_batches_tracked``) gets a zero
    delta, and every numeric fit metric is weighted by num_examples, not only train_loss."""
    current = [np.zeros(4, np.float32), np.array(7, np.int64)]
    results = [
        ClientResult(
            f"a{i}",
            [np.full(4, float(i), np.float32), np.array(100 + i, np.int64)],
            n,
            {"train_loss": float(i), "train_accuracy": 0.5 + i / 10},
        )
        for i, n in enumerate((1, 3))
    ]
    fold = RunningMean(current)
    for r in results:
        fold.add(r.weights, r.num_examples)
    got, want = fold.result(results), mean_update(current, results)
    assert not got.delta[1].any()
    np.testing.assert_allclose(got.delta[0], want.delta[0])
    assert got.metrics == pytest.approx(want.metrics)
    assert set(got.metrics) == {"train_loss", "train_accuracy"}


@pytest.mark.parametrize("on_norm", [OnViolation.CLIP, OnViolation.REJECT])
def test_the_running_mean_applies_the_relative_norm_bound_as_the_round_close_does(
    on_norm: OnViolation,
) -> None:
    """The default ``norm_factor = 10`` streams: an outlier folded on arrival is clipped to
    10x the median norm (or taken out) at the close, as ``robust_update`` does with every
    update in memory."""
    rng = np.random.default_rng(1)
    current = [rng.standard_normal(300, np.float32), np.array(3, np.int64)]
    results = [
        ClientResult(f"a{i}", [current[0] + scale * np.float32(1), np.array(9)], n, {"x": i})
        for i, (scale, n) in enumerate([(1.0, 2), (2.0, 3), (3.0, 1), (1e4, 5)])
    ]
    robust = RobustConfig(on_norm=on_norm)
    fold = RunningMean(current, robust=robust)
    for r in results:
        fold.add(r.weights, r.num_examples, agent_id=r.agent_id)
    got, want = fold.result(results), robust_update(current, results, robust)
    assert got is not None
    assert want is not None
    assert got.survivors == want.survivors
    assert len(got.survivors) == (4 if on_norm is OnViolation.CLIP else 3)
    assert got.total_weight == want.total_weight
    assert got.metrics == pytest.approx(want.metrics)
    # robust_update rounds the clipped weights to float32 (rebuild); the fold does not
    np.testing.assert_allclose(got.delta[0], want.delta[0], rtol=1e-6)
    assert not got.delta[1].any()


def test_a_huge_outlier_taken_out_at_the_close_leaves_the_honest_mean() -> None:
    """An update of 3e38 (mallory's ``huge``) folded on arrival and dropped by the relative
    bound at the close: the mean is the honest updates' (subtracting it back out of the
    float64 sum lost them to cancellation, and the new model was zero)."""
    rng = np.random.default_rng(2)
    current = [rng.standard_normal(300, np.float32)]
    honest = [
        ClientResult(f"a{i}", [current[0] + np.float32(0.01 * (i + 1))], 100, {}) for i in range(3)
    ]
    huge = ClientResult("mallory", [np.full(300, 3e38, np.float32)], 1, {})
    fold = RunningMean(current, robust=RobustConfig())
    for r in [huge, *honest]:
        fold.add(r.weights, r.num_examples, agent_id=r.agent_id)
    got, want = fold.result([huge, *honest]), mean_update(current, honest)
    assert got is not None
    assert got.survivors == ("a0", "a1", "a2")
    assert got.total_weight == want.total_weight == 300
    np.testing.assert_allclose(got.delta[0], want.delta[0], rtol=1e-5)
