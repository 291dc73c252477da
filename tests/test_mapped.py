"""Chunked updates rebuilt as views of their spool (``agent.mapped``): the values are the
sent ones, ``release`` never changes a value (mapped or in memory), and the streaming fold
over mapped updates is bit for bit the fold over the same updates in memory; FedAvg's step
from a spendable delta is the step from a kept one."""

from __future__ import annotations

import random

import numpy as np
import pytest

from agent.mapped import detach, is_mapped, release
from agent.messages import Kind
from agent.messages.bodies import ModelUpdate
from agent.messages.chunks import build
from agent.messages.codec import validate_body
from agent.messages.envelope import new_envelope
from agent.messages.tensors import to_arrays, to_tensors
from agent.robust.settings import RobustConfig
from agent.roles.aggregator.fold import RunningMean
from agent.runtime.assembly import assemble
from agent.runtime.reassembly import Reassembly
from agent.strategy.fedavg import FedAvg
from agent.strategy.update import AggregatedUpdate, ClientResult

pytestmark = pytest.mark.timeout(30)

TOPIC = "fl/fed/model_para/update/a1"
CHUNK = 64 * 1024


def sent(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((300, 200), np.float32),
        rng.standard_normal(77, np.float32),
        np.arange(5, dtype=np.int64),
    ]


def received(weights: list[np.ndarray], *, sealed: bool) -> list[np.ndarray]:
    """``weights`` sent as a chunked update in shuffled chunks, rebuilt by the reassembly."""
    body = ModelUpdate(model_version=3, num_examples=5, tensors=to_tensors(weights))
    manifest, frames = build(body, CHUNK, sealed=sealed)
    reassembly = Reassembly()
    envelope = new_envelope(kind=Kind.MANIFEST, federation="fed", round=1, sender="a1", body=b"")
    reassembly.begin(TOPIC, envelope, manifest)
    order = list(frames)
    random.Random(2).shuffle(order)
    done = [t for t in (reassembly.add(TOPIC, f) for f in order) if t and not t.missing]
    rebuilt = validate_body(assemble(done[0]))
    assert isinstance(rebuilt, ModelUpdate)
    return to_arrays(rebuilt.tensors)


@pytest.mark.parametrize("sealed", [False, True])
def test_a_mapped_update_keeps_its_values_through_release(sealed: bool) -> None:
    weights = sent(0)
    arrays = received(weights, sealed=sealed)
    assert all(is_mapped(a) for a in arrays)
    assert not any(a.flags.writeable for a in arrays)
    for a in arrays:
        release(a)
    for a, w in zip(arrays, weights, strict=True):
        assert np.array_equal(a, w)  # read again from the page cache
    kept = detach(arrays)
    assert not any(is_mapped(a) for a in kept)
    for a, w in zip(kept, weights, strict=True):
        assert np.array_equal(a, w)


def test_release_leaves_memory_that_is_not_a_mapping_alone() -> None:
    block = np.frombuffer(bytearray(np.arange(1 << 20, dtype=np.float32).tobytes()), np.float32)
    plain = np.arange(1 << 20, dtype=np.float32)
    for a in (block, plain, plain[3:]):
        release(a)
    assert np.array_equal(block, np.arange(1 << 20, dtype=np.float32))
    assert np.array_equal(plain, np.arange(1 << 20, dtype=np.float32))
    assert detach([plain])[0] is plain


def test_the_fold_of_mapped_updates_is_the_fold_in_memory_bit_for_bit() -> None:
    """Three updates (one far above the relative bound, so the sum is rebuilt from the
    fold's spool), folded once as mapped views of their chunk spools, once in memory."""
    base = [np.zeros_like(w) for w in sent(0)]
    updates = [sent(1), sent(2), [w * 1000 if w.dtype.kind == "f" else w for w in sent(3)]]
    means = []
    for mapped in (True, False):
        fold = RunningMean(base, robust=RobustConfig(norm_factor=2.0))
        for k, weights in enumerate(updates):
            arrays = received(weights, sealed=k == 1) if mapped else weights
            fold.add(arrays, 10 + k, agent_id=f"a{k}")
        results = [ClientResult(f"a{k}", [], 10 + k, {}) for k in range(3)]
        result = fold.result(results)
        assert result is not None
        means.append(result.delta)
    for a, b in zip(*means, strict=True):
        assert a.dtype == b.dtype == np.float64
        assert np.array_equal(a, b)


def test_a_spendable_delta_goes_array_by_array_and_the_step_is_the_same() -> None:
    """FedAvg's step from a spendable update (the fold's) equals the step from the same
    delta kept, bit for bit, and leaves the spent delta's arrays empty."""
    current = [np.ones((3, 4), np.float32), np.array(7, np.int64), np.zeros(5, np.float32)]
    rng = np.random.default_rng(4)
    delta = [rng.standard_normal(a.shape) if a.dtype.kind == "f" else np.zeros(()) for a in current]
    kept = FedAvg().step(current, AggregatedUpdate([d.copy() for d in delta], 3, ("a",)))
    spendable = AggregatedUpdate(delta, 3, ("a",), spendable=True)
    spent = FedAvg().step(current, spendable)
    for a, b in zip(kept, spent, strict=True):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b)
    assert all(d.size == 0 for d in spendable.delta)
