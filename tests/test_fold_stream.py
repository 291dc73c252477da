"""Streaming FedAvg chunk by chunk (``roles/aggregator/fold_stream.py``), without a broker:
an update's chunks are folded as they are kept, in any order and interleaved with other
senders', and the round's mean equals the whole-update fold's; an update refused half way
or cut off is rebuilt out of the sum; an update folded and then taken out does not count."""

from __future__ import annotations

import asyncio
import hashlib
import random

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.bus.base import BusMessage
from agent.errors import SealError, UnexpectedKindError
from agent.messages import Kind
from agent.messages.bodies import ModelUpdate
from agent.messages.chunks import build, frame, parse_frame
from agent.messages.codec import encode
from agent.messages.envelope import new_envelope
from agent.messages.tensors import to_tensors
from agent.plugin.api import Weights
from agent.robust.settings import RobustConfig
from agent.roles.aggregator.fold import RunningMean
from agent.roles.aggregator.fold_stream import FoldStream, layout
from agent.roles.aggregator.plain_round import PlainRound
from agent.roles.aggregator.records import GlobalState
from agent.runtime.assembly import Transfer, is_mapped, rebuild
from agent.runtime.listeners import ListenerRegistry, RoundPolicy
from agent.runtime.reassembly import Reassembly
from agent.strategy.update import ClientResult, mean_update
from tests.helpers import unsealing_dispatcher

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(
        not is_mapped(build(ModelUpdate(1, 1, to_tensors([np.ones(9)])), 65536, sealed=False)[0]),
        reason="chunks are folded as they come only where updates are mapped (Linux)",
    ),
]

CHUNK = 64 * 1024
SENDERS = ("a1", "a2", "a3")


def grid(rng: np.random.Generator, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Values on a 1/256 grid: every float64 sum of a few weighted ones is exact, so any
    order of folding gives the same bits."""
    return (np.round(rng.standard_normal(shape) * 256) / 256).astype(np.float32)


def model() -> Weights:
    rng = np.random.default_rng(0)
    return [grid(rng, (300, 200)), np.array([7], np.int64), grid(rng, (77,))]


def trained(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return [grid(rng, (300, 200)), np.array([seed], np.int64), grid(rng, (77,))]


def body(weights: Weights, n: int) -> ModelUpdate:
    return ModelUpdate(model_version=3, num_examples=n, tensors=to_tensors(weights))


def plain_round(base: GlobalState) -> PlainRound:
    return PlainRound(
        cohort=frozenset(SENDERS),
        model=base,
        alive=lambda _: True,
        fold=RunningMean(base.weights, robust=RobustConfig()),
    )


def opened(
    reassembly: Reassembly, sender: str, update: ModelUpdate
) -> tuple[Transfer, list[bytes]]:
    manifest, frames = build(update, CHUNK, sealed=True)
    envelope = new_envelope(kind=Kind.MANIFEST, federation="fed", round=1, sender=sender, body=b"")
    transfer = reassembly.begin(f"fl/fed/model_para/update/{sender}", envelope, manifest)
    return transfer, list(frames)


async def settled(fold: RunningMean) -> None:
    """Every chunk queued so far is folded."""
    done = fold.submit(lambda: None)
    assert done is not None
    await asyncio.wrap_future(done)


async def whole_mean(
    base: GlobalState, updates: dict[str, ModelUpdate]
) -> list[npt.NDArray[np.float64]]:
    """The round's mean delta with every update folded whole once complete (as before)."""
    whole = plain_round(base)
    for sender, update in updates.items():
        await whole.receive(sender, update)
    assert whole.fold is not None
    result = whole.fold.result(await whole.wait(0.1))
    assert result is not None
    return result.delta


async def test_chunks_folded_as_they_come_equal_the_whole_fold() -> None:
    """Three sealed updates, their chunks shuffled together: each chunk is folded before its
    update is complete, and the mean is bit-identical to the whole-update fold's."""
    base = GlobalState.of(3, model())
    updates = {s: body(trained(i + 1), 10 * (i + 1)) for i, s in enumerate(SENDERS)}
    streamed, reassembly = plain_round(base), Reassembly()
    transfers, last, rest = {}, [], []
    for sender, update in updates.items():
        transfer, frames = opened(reassembly, sender, update)
        transfer.sink = streamed.stream(transfer)
        assert isinstance(transfer.sink, FoldStream)
        transfers[sender] = transfer
        last.append((transfer.topic, frames[0]))
        rest += [(transfer.topic, f) for f in frames[1:]]
    random.Random(1).shuffle(rest)
    for topic, payload in rest:
        reassembly.add(topic, payload)
    assert streamed.fold is not None
    await settled(streamed.fold)
    for transfer in transfers.values():  # every chunk in but one: all of them folded
        assert isinstance(transfer.sink, FoldStream)
        assert transfer.sink.folded == len(transfer.manifest.chunk_hashes) - 1
    for topic, payload in last:
        done = reassembly.add(topic, payload)
        assert done is not None
        assert not done.missing
        message = rebuild(done)
        await streamed.receive(message.sender, message.body, message.envelope.message_id)
    results = await streamed.wait(0.1)
    assert [r.agent_id for r in results] == list(SENDERS)
    got = streamed.fold.result(results)
    assert got is not None
    assert got.total_weight == 60
    expected = await whole_mean(base, updates)
    for a, b in zip(got.delta, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fault", ["not_finite", "cut_off"])
async def test_an_update_refused_or_cut_off_half_way_is_rebuilt_out_of_the_sum(fault: str) -> None:
    """a2's update has a NaN in its last chunk (refused ``not_finite`` at completion), or
    never sends its last chunk (a dropout at the deadline): its first chunks were folded
    already, and the mean is the other two's."""
    base = GlobalState.of(3, model())
    updates = {s: body(trained(i + 1), 10 * (i + 1)) for i, s in enumerate(SENDERS)}
    if fault == "not_finite":
        bad = trained(2)
        bad[2] = bad[2].copy()
        bad[2][-1] = np.nan
        updates["a2"] = body(bad, 20)
    streamed, reassembly = plain_round(base), Reassembly()
    assert streamed.fold is not None
    for sender, update in updates.items():
        transfer, frames = opened(reassembly, sender, update)
        transfer.sink = streamed.stream(transfer)
        if fault == "cut_off" and sender == "a2":
            frames = frames[:-1]
        for payload in frames:
            done = reassembly.add(transfer.topic, payload)
        await settled(streamed.fold)
        if done is not None and not done.missing:
            message = rebuild(done)
            await streamed.receive(message.sender, message.body, message.envelope.message_id)
    results = await streamed.wait(0.1)
    reassembly.close()  # the cut-off transfer's spool (the receive loop's end does it)
    assert [r.agent_id for r in results] == ["a1", "a3"]
    if fault == "not_finite":
        assert streamed.refused == {"a2": "not_finite"}
    got = streamed.fold.result(results)
    assert got is not None
    assert got.total_weight == 40
    expected = await whole_mean(base, {s: updates[s] for s in ("a1", "a3")})
    for a, b in zip(got.delta, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_an_update_folded_then_taken_out_does_not_count() -> None:
    """An update folded whole and then removed from the results (its agent revoked,
    ``CohortFit.on_revoked``) is not in the mean: the sum is rebuilt without it."""
    base = model()
    fold = RunningMean(base, robust=RobustConfig())
    kept = []
    for i, sender in enumerate(SENDERS):
        fold.add(trained(i + 1), 10, agent_id=sender)
        if sender != "a3":
            kept.append(ClientResult(sender, trained(i + 1), 10, {}))
    got = fold.result(kept)
    assert got is not None
    assert got.total_weight == 20
    expected = mean_update(base, kept)
    for a, b in zip(got.delta, expected.delta, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_a_value_split_between_chunks_is_folded_whole_instead() -> None:
    """An odd-length float16 array before a float32 one puts float32 values across chunk
    boundaries: no chunk-by-chunk layout (the update is folded once complete)."""
    weights: Weights = [np.zeros(3, np.float16), np.zeros(10, np.float32)]
    assert layout(weights, body(weights, 1), CHUNK) is None
    even: Weights = [np.zeros(4, np.float16), np.zeros(10, np.float32)]
    shares = layout(even, body(even, 1), CHUNK)
    assert shares is not None
    assert [(s.start, s.nbytes) for s in shares] == [(0, 8), (8, 40)]


async def test_the_dispatcher_hands_an_updates_chunks_to_its_streams_sink() -> None:
    """Through ``Dispatcher.dispatch``: the sealed manifest opens a transfer whose chunks go to
    the plain round's sink (``ListenerRegistry.stream``), and the completed update reaches
    the round already folded; a stream hook that raises leaves the update to the whole fold."""

    base = GlobalState.of(3, model())
    streamed = plain_round(base)
    sinks: list[object] = []

    async def on_update(message) -> None:  # type: ignore[no-untyped-def]
        await streamed.receive(message.sender, message.body, message.envelope.message_id)

    def hook(transfer: Transfer):  # type: ignore[no-untyped-def]
        if transfer.sender == "a2":
            raise RuntimeError("a bug in the hook")
        sinks.append(sink := streamed.stream(transfer))
        return sink

    key = X25519PrivateKey.generate()
    registry = ListenerRegistry()
    registry.register(Kind.MODEL_UPDATE, on_update, rounds=RoundPolicy.CURRENT)
    registry.stream(Kind.MODEL_UPDATE, hook)
    dispatcher = unsealing_dispatcher(registry, key)
    updates = {s: body(trained(i + 1), 10) for i, s in enumerate(SENDERS)}
    for sender, update in updates.items():
        manifest, frames = build(update, CHUNK, sealed=True)
        topic = f"fl/fed/model_para/update/{sender}"
        sealed = encode(
            manifest, federation="fed", round=1, sender=sender, seal_to=key.public_key()
        )
        assert await dispatcher.dispatch(BusMessage(topic, sealed))
        for f in reversed(list(frames)):
            await dispatcher.dispatch(BusMessage(topic, f))
    dispatcher.reassembly.close()
    assert len(sinks) == 2
    assert all(isinstance(s, FoldStream) and s.folded == 4 for s in sinks)
    results = await streamed.wait(0.1)
    assert [r.agent_id for r in results] == list(SENDERS)
    assert streamed.fold is not None
    got = streamed.fold.result(results)
    assert got is not None
    expected = await whole_mean(base, updates)
    for a, b in zip(got.delta, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_stream_hook_needs_a_listener() -> None:
    with pytest.raises(UnexpectedKindError):
        ListenerRegistry().stream(Kind.MODEL_UPDATE, lambda _: None)


async def test_a_chunk_that_does_not_open_drops_the_streamed_update() -> None:
    """Two sealed chunks swapped under a manifest forged to match their hashes: the sink
    cannot open them, the completed transfer does not rebuild (``SealError``, a dropped
    message as without a sink), and nothing of it counts."""
    base = GlobalState.of(3, model())
    streamed, reassembly = plain_round(base), Reassembly()
    manifest, frames = build(body(trained(1), 10), CHUNK, sealed=True)
    frames = list(frames)
    first, second = (parse_frame(f)[2] for f in frames[:2])
    hashes = [hashlib.sha256(second).digest(), hashlib.sha256(first).digest()]
    swapped = msgspec.structs.replace(manifest, chunk_hashes=[*hashes, *manifest.chunk_hashes[2:]])
    envelope = new_envelope(kind=Kind.MANIFEST, federation="fed", round=1, sender="a1", body=b"")
    transfer = reassembly.begin("fl/fed/model_para/update/a1", envelope, swapped)
    transfer.sink = streamed.stream(transfer)
    assert transfer.sink is not None
    reassembly.add(transfer.topic, frame(manifest.transfer, 0, bytes(second)))
    reassembly.add(transfer.topic, frame(manifest.transfer, 1, bytes(first)))
    done = [reassembly.add(transfer.topic, f) for f in frames[2:]][-1]
    assert done is not None
    with pytest.raises(SealError):
        rebuild(done)
    assert streamed.fold is not None
    assert streamed.fold.dirty
    streamed.fold.close()
