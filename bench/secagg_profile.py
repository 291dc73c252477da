"""Where the time of a SecAgg+ round goes, for bench/secagg.py: the round replayed through
``agent.secagg.simulation`` with timing wrappers patched over the primitives the stage functions
call, and the raw speed of those primitives (``floors``).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np
from secagg_round import CLIENT_STAGES, Clock, Cohort, Json, Recorder, check_sum, make_plan, sig

from agent.secagg import client, keys, server, shamir
from agent.secagg.params import resolve
from agent.secagg.prg import MaskStream
from agent.secagg.quantize import quantize
from agent.secagg.simulation import SERVER


@dataclass(slots=True)
class Profiler:
    """Seconds per (owner, stage, primitive), filed under the lap ``clock`` is running."""

    clock: Clock
    self_seeds: set[bytes] = field(default_factory=set)
    seconds: defaultdict[tuple[str, str, str], float] = field(
        default_factory=lambda: defaultdict(float)
    )

    def _file(self, primitive: str, start: float) -> None:
        key = (self.clock.owner, self.clock.stage, primitive)
        self.seconds[key] += time.perf_counter() - start

    def timed(self, fn: Callable[..., Any], primitive: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._file(primitive, start)

        return wrapper

    def timed_seeded(self, fn: Callable[..., Any], primitive: str) -> Callable[..., Any]:
        """For MaskStream methods, whose last argument is the seed: files self-mask and
        pairwise-mask work apart."""

        def wrapper(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                kind = "self" if args[-1] in self.self_seeds else "pairwise"
                self._file(f"{kind}_{primitive}", start)

        return wrapper


@contextmanager
def instrument(profiler: Profiler) -> Iterator[None]:
    """Patch timing wrappers over the primitives the stage functions call."""
    plain = [
        (client, "neighbours", "graph"),
        (server, "neighbours", "graph"),
        (client, "quantize", "quantize"),
        (keys, "agree", "x25519_hkdf"),
        (keys, "encrypt", "chacha20_poly1305"),
        (keys, "decrypt", "chacha20_poly1305"),
        (shamir, "split", "shamir_split"),
        (shamir, "combine", "shamir_combine"),
    ]
    seeded = [("expand", "keystream"), ("add", "mask"), ("subtract", "mask")]
    with ExitStack() as stack:
        for module, name, primitive in plain:
            wrapped = profiler.timed(getattr(module, name), primitive)
            stack.enter_context(mock.patch.object(module, name, wrapped))
        for name, primitive in seeded:
            wrapped = profiler.timed_seeded(getattr(MaskStream, name), primitive)
            stack.enter_context(mock.patch.object(MaskStream, name, wrapped))
        yield


#: What the unwrapped rest of a step is, where it is one thing (else "other").
CLIENT_REST = {"setup": "x25519_keygen_and_state"}  # ClientState's default factories
SERVER_REST = {"receive_masked_input": "sum_masked_inputs"}  # np.add into the running sum


def _split(
    step: str, total: float, raw: Mapping[str, float], rest: Mapping[str, str]
) -> dict[str, float]:
    """One step's seconds by primitive, the mask work split into keystream and ring
    addition, and the unwrapped rest."""
    out = {p: t for p, t in raw.items() if not p.endswith(("_mask", "_keystream"))}
    for kind in ("self", "pairwise"):
        mask, stream = raw.get(f"{kind}_mask", 0.0), raw.get(f"{kind}_keystream", 0.0)
        if mask:
            out[f"{kind}_mask_aes_ctr_keystream"] = stream
            out[f"{kind}_mask_ring_add"] = mask - stream
    out[rest.get(step, "other")] = total - sum(out.values())
    return {"total": total, **out}


def _breakdown(steps: Mapping[str, dict[str, float]], scale: float) -> Json:
    """Totals by primitive over all steps (largest first), and each step's split."""
    by_primitive: defaultdict[str, float] = defaultdict(float)
    for split in steps.values():
        for primitive, t in split.items():
            if primitive != "total":
                by_primitive[primitive] += t
    ranked = sorted(by_primitive.items(), key=lambda item: -item[1])
    return {
        "total": sig(scale * sum(split["total"] for split in steps.values())),
        "by_primitive": {p: sig(scale * t) for p, t in ranked},
        "by_step": {
            step: {p: sig(scale * t) for p, t in split.items()} for step, split in steps.items()
        },
    }


def profile_round(cohort: Cohort, scenario: str, *, rng: np.random.Generator) -> Json:
    """Replay one round with the primitives wrapped: the mean per completed client (ms) and
    the server (s), by primitive and by step."""
    recorder = Recorder()
    profiler = Profiler(recorder.clock)
    plan = make_plan(scenario, cohort.ids, rng)
    with instrument(profiler):
        sim = cohort.round(plan, recorder)
        profiler.self_seeds = {state.self_seed for state in sim.clients.values()}
        check_sum(cohort, sim.play(), recorder.masked_senders())
    done = recorder.completed()
    clock = recorder.clock
    raw: defaultdict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (owner, stage, primitive), t in profiler.seconds.items():
        who = SERVER if owner == SERVER else "client"
        if who == SERVER or owner in done:
            raw[who, stage][primitive] = raw[who, stage].get(primitive, 0.0) + t
    client_steps = {
        s: _split(s, sum(clock.total(a, s) for a in done), raw["client", s], CLIENT_REST)
        for s in CLIENT_STAGES
    }
    server_steps = {
        s: _split(s, clock.total(SERVER, s), raw[SERVER, s], SERVER_REST)
        for o, s in clock.laps
        if o == SERVER
    }
    return {
        "scenario": scenario,
        "client_ms_mean": _breakdown(client_steps, 1e3 / len(done)),
        "server_s": _breakdown(server_steps, 1.0),
    }


def floors(d: int) -> Json:
    """Raw speed of the primitives here (best of several runs)."""
    params = resolve(100)
    stream = MaskStream(d, params.dtype)
    seed = os.urandom(32)
    words = np.zeros(d, dtype=params.dtype)
    update = np.random.default_rng(0).standard_normal(d, dtype=np.float32)
    nbytes = d * params.dtype.itemsize
    keystream = best_time(lambda: stream.expand(seed), 7)
    ring_add = best_time(lambda: np.add(words, stream.expand(seed), out=words), 7) - keystream
    quantized = best_time(lambda: quantize(update, weight=10, params=params), 5)
    ours, peer = keys.generate(), keys.public_bytes(keys.generate())
    agreements = 300
    agree = best_time(lambda: [keys.agree(ours, peer, info=b"bench") for _ in range(agreements)], 3)
    split = best_time(lambda: shamir.split([seed, seed], xs=range(1, 20), threshold=10), 20)
    return {
        "d": d,
        "aes_ctr_keystream_gb_per_s": sig(nbytes / keystream / 1e9, 3),
        "ring_add_gb_per_s": sig(nbytes / ring_add / 1e9, 3),
        "quantize_ms": sig(1e3 * quantized, 3),
        "x25519_hkdf_per_s": sig(agreements / agree, 3),
        "shamir_split_2_secrets_19_holders_ms": sig(1e3 * split, 3),
    }


def best_time(call: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls, seconds."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return min(out)
