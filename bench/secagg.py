"""Benchmark: SecAgg+ (agent/secagg) driven in process, against plain FedAvg of the same vectors.

Prints one JSON object. Every round is played in this process (no bus) with the real client and
server stage functions, for each n in --n, d in --d (float32 parameters) and dropout scenario:

- ``none``: every client completes the round.
- ``after_share_keys``: 10% of the clients shared keys but never sent a masked input, the
  expensive case for the server (it rebuilds their mask keys and strips every pairwise mask
  their live neighbours applied).
- ``spread`` (largest n only): 10% of the clients drop, spread over the four stages (never
  advertised keys, never sent shares, never sent a masked input, never revealed shares).

Per round:

- client compute: wall time of one client's calls to setup, advertise_keys, share_keys,
  collect_masked_input (quantization and masking included) and unmask; median and max over the
  clients that completed the round, ms. Every client is simulated and timed.
- server: ``unmask`` is ``server.finish`` (Shamir reconstruction, self- and pairwise-mask
  removal, decoding), the median of --repeats runs on copies of the same state; ``total`` adds
  setup, every receive_* (summing the masked inputs included) and close_*, in seconds.
- wall time is what the targets use; the medians of this process's CPU time over the same
  calls (``*_cpu``) and the 1-minute load average are reported beside it, because other work
  on this shared 2-core machine inflates wall time.
- upload: the bytes each client publishes, divided by d: its four messages (AdvertiseKeys,
  ShareKeys, MaskedInput, Unmask from ``agent.messages.bodies``) encoded with their envelopes by
  ``agent.messages.codec``, exactly as the agent sends them.
- plain FedAvg: ``agent.strategy.fedavg.FedAvg.aggregate`` over the survivors' float32 vectors
  (float64 accumulation), timed in the same process (median of --repeats); ratios against it.
- correctness: the unmasked weighted sum must match Σ min(w, W)·clip(x) over the survivors
  within the quantization bound, and the total weight Σ min(w, W) exactly; otherwise the
  benchmark exits non-zero without printing numbers.

Also: ``abort_probability``, a Monte Carlo over neighbour graphs from
``agent.secagg.graph.neighbours`` (a fresh random seed per batch) that replays the server's
pruning and reconstruction rules (``_prune``, ``close_*``, ``_reconstruct``) with numpy;
``where_time_goes``, the largest n by d replayed with timing wrappers patched over the primitives
the stages call; ``floors``, the raw speed of those primitives; and the issue's ``targets``.

    .venv/bin/python bench/secagg.py [--quick] [--n 10 50 100] [--d 100000 1000000]
                                     [--repeats 3] [--trials 1000000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import cryptography
import msgspec
import numpy as np
import numpy.typing as npt

from agent.messages import codec
from agent.messages.bodies import AdvertiseKeys, Body, MaskedInput, ModelUpdate, ShareKeys, Unmask
from agent.messages.envelope import new_envelope
from agent.messages.kinds import Kind
from agent.messages.tensors import to_tensor
from agent.secagg import client, keys, server, shamir
from agent.secagg.graph import neighbours
from agent.secagg.keys import RoundContext
from agent.secagg.params import abort_bound, resolve
from agent.secagg.prg import MaskStream
from agent.secagg.quantize import error_bound, quantize
from agent.secagg.state import Setup, Stage
from agent.strategy.fedavg import ClientResult, FedAvg

DROPOUT = 0.1
FEDERATION = "bench"
ROUND = 1
SERVER = "aggregator"
CLIENT_STAGES = ("setup", "advertise_keys", "share_keys", "collect_masked_input", "unmask")
#: The stages a client can vanish in, in order: it never sends that stage's message.
DROP_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_INPUT, Stage.UNMASK)
NEVER = len(DROP_STAGES)  # a client's drop stage when it completes the round
ADVERTISED, SHARED, MASKED, REVEALED = range(1, NEVER + 1)  # stage >= X: it sent message X
AFTER_SHARE_KEYS = DROP_STAGES.index(Stage.COLLECT_MASKED_INPUT)
MC_BATCH = 2000
TARGET_N, TARGET_D = 100, 1_000_000

Plan = Mapping[Stage, frozenset[str]]
Json = dict[str, Any]


class BenchError(RuntimeError):
    """The round did not produce the right sum: no number from this build can be trusted."""


def _sig(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits, for readable JSON."""
    return float(f"{value:.{digits}g}")


# -- wire messages ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wire:
    """Sizes of messages exactly as an agent publishes them: the body types of
    ``agent.messages.bodies`` encoded by ``agent.messages.codec`` in a fresh envelope."""

    federation: str = FEDERATION
    round: int = ROUND

    def size(self, sender: str, body: Body) -> int:
        return len(codec.encode(body, federation=self.federation, round=self.round, sender=sender))

    def overhead(self, sender: str) -> Json:
        """The fixed cost of each kind an agent sends in a SecAgg+ round: its envelope (with
        an empty body) in bytes."""
        return {
            str(kind): len(
                codec.encode_envelope(
                    new_envelope(
                        kind=kind,
                        federation=self.federation,
                        round=self.round,
                        sender=sender,
                        body=b"",
                    )
                )
            )
            for kind in (Kind.ADVERTISE_KEYS, Kind.SHARE_KEYS, Kind.MASKED_INPUT, Kind.UNMASK)
        }


# -- timing ----------------------------------------------------------------------------------


class Clock:
    """Laps of wall time (and of this process's CPU time, which other load on a shared
    machine inflates less) per (owner, stage); while a lap runs, ``owner`` and ``stage`` name
    it (the profiler files its own timings under them)."""

    def __init__(self) -> None:
        self.laps: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
        self.cpu_laps: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
        self.owner = ""
        self.stage = ""

    @contextmanager
    def time(self, owner: str, stage: str) -> Iterator[None]:
        self.owner, self.stage = owner, stage
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.laps[owner, stage].append(time.perf_counter() - start)
            self.cpu_laps[owner, stage].append(time.process_time() - cpu)
            self.owner = self.stage = ""

    def total(self, owner: str, stage: str) -> float:
        return sum(self.laps.get((owner, stage), ()))

    def cpu_total(self, owner: str, stage: str) -> float:
        return sum(self.cpu_laps.get((owner, stage), ()))


def _laps(call: Callable[[], object], repeats: int) -> list[float]:
    """Wall time of ``repeats`` calls."""
    laps = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        laps.append(time.perf_counter() - start)
    return laps


def _best_time(call: Callable[[], object], repeats: int) -> float:
    return min(_laps(call, repeats))


# -- one round -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cohort:
    """The round's announcement and every client's update and weight."""

    setup: Setup
    updates: npt.NDArray[np.float32]  # (n, d)
    weights: tuple[int, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return self.setup.cohort

    def update(self, agent: str) -> npt.NDArray[np.float32]:
        return self.updates[self.setup.x_of(agent) - 1]

    def weight(self, agent: str) -> int:
        return self.weights[self.setup.x_of(agent) - 1]


def make_cohort(n: int, d: int, rng: np.random.Generator) -> Cohort:
    """n clients with the default parameters; updates 3·N(0, 1) (a few get clipped at ±8) and
    weights in [1, 2000) (some get capped at W = 1000)."""
    params = resolve(n)
    ids = tuple(f"agent-{i:03d}" for i in range(n))
    setup = Setup(RoundContext(FEDERATION, ROUND), params, ids, rng.bytes(32), d)
    updates = rng.standard_normal((n, d), dtype=np.float32)
    updates *= 3
    weights = tuple(int(w) for w in rng.integers(1, 2000, n))
    return Cohort(setup, updates, weights)


def make_plan(scenario: str, ids: Sequence[str], rng: np.random.Generator) -> Plan:
    """Which clients vanish at which stage."""
    if scenario == "none":
        return {}
    chosen = [str(a) for a in rng.choice(ids, size=round(DROPOUT * len(ids)), replace=False)]
    if scenario == "after_share_keys":
        return {Stage.COLLECT_MASKED_INPUT: frozenset(chosen)}
    if scenario == "spread":
        return {s: frozenset(chosen[i :: len(DROP_STAGES)]) for i, s in enumerate(DROP_STAGES)}
    raise ValueError(f"unknown scenario {scenario!r}")


@dataclass(slots=True)
class Play:
    """One round played stage by stage, every client and server call timed on ``clock``."""

    cohort: Cohort
    plan: Plan
    clock: Clock
    wire: Wire
    clients: dict[str, client.ClientState] = field(default_factory=dict)
    uploads: defaultdict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    srv: server.ServerState | None = None

    def _drops(self, agent: str, stage: Stage) -> bool:
        return agent in self.plan.get(stage, frozenset())

    def server_state(self) -> server.ServerState:
        if self.srv is None:
            raise BenchError("the server was not set up")
        return self.srv

    def setup(self) -> None:
        with self.clock.time(SERVER, "setup"):
            self.srv = server.setup(self.cohort.setup)
            server.open_advertise(self.srv)
        for a in self.cohort.ids:
            with self.clock.time(a, "setup"):
                self.clients[a] = client.setup(a, self.cohort.setup)

    def advertise(self) -> dict[str, dict[str, Any]]:
        srv = self.server_state()
        for a, state in self.clients.items():
            if self._drops(a, Stage.ADVERTISE_KEYS):
                continue
            with self.clock.time(a, "advertise_keys"):
                public = client.advertise_keys(state)
            body = AdvertiseKeys(enc_key=public.enc, mask_key=public.mask)
            self.uploads[a]["advertise_keys"] = self.wire.size(a, body)
            with self.clock.time(SERVER, "receive_keys"):
                _require(server.receive_keys(srv, a, public), f"keys of {a} refused")
        with self.clock.time(SERVER, "close_advertise"):
            return server.close_advertise(srv)

    def share(self, relay: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, bytes]]:
        srv = self.server_state()
        for a, peer_keys in relay.items():
            if self._drops(a, Stage.SHARE_KEYS):
                continue
            with self.clock.time(a, "share_keys"):
                ciphertexts = client.share_keys(self.clients[a], peer_keys)
            self.uploads[a]["share_keys"] = self.wire.size(a, ShareKeys(ciphertexts=ciphertexts))
            with self.clock.time(SERVER, "receive_shares"):
                _require(server.receive_shares(srv, a, ciphertexts), f"shares of {a} refused")
        with self.clock.time(SERVER, "close_share_keys"):
            return server.close_share_keys(srv)

    def collect(self, relay: Mapping[str, Mapping[str, bytes]]) -> tuple[list[str], list[str]]:
        srv = self.server_state()
        for a, ciphertexts in relay.items():
            if self._drops(a, Stage.COLLECT_MASKED_INPUT):
                continue
            with self.clock.time(a, "collect_masked_input"):
                masked = client.collect_masked_input(
                    self.clients[a],
                    ciphertexts,
                    update=self.cohort.update(a),
                    weight=self.cohort.weight(a),
                )
            body = MaskedInput(model_version=ROUND - 1, vector=to_tensor(masked))
            self.uploads[a]["collect_masked_input"] = self.wire.size(a, body)
            with self.clock.time(SERVER, "receive_masked_input"):
                _require(server.receive_masked_input(srv, a, masked), f"input of {a} refused")
        with self.clock.time(SERVER, "close_collect"):
            return server.close_collect(srv)

    def unmask(self, survivors: list[str], dropped: list[str]) -> None:
        srv = self.server_state()
        for a in survivors:
            if self._drops(a, Stage.UNMASK):
                continue
            with self.clock.time(a, "unmask"):
                revealed = client.unmask(self.clients[a], survivors=survivors, dropped=dropped)
            body = Unmask(self_seed=revealed.self_seed, mask_key=revealed.mask_key)
            self.uploads[a]["unmask"] = self.wire.size(a, body)
            with self.clock.time(SERVER, "receive_unmask"):
                _require(server.receive_unmask(srv, a, revealed), f"shares from {a} refused")

    def finish(self, repeats: int) -> server.Aggregate:
        """``server.finish`` ``repeats`` times, each on a fresh copy of the state (finish
        only records dropouts and moves the stage; it copies the masked sum)."""
        srv = self.server_state()
        aggregate = None
        for _ in range(repeats):
            trial = replace(srv, dropouts=dict(srv.dropouts))
            with self.clock.time(SERVER, "finish"):
                aggregate = server.finish(trial)
        if aggregate is None:
            raise BenchError("finish never ran")
        return aggregate

    def masked_senders(self) -> list[str]:
        """Clients that sent a masked input: the survivors the sum must cover."""
        return sorted(a for a, sent in self.uploads.items() if "collect_masked_input" in sent)

    def completed(self) -> list[str]:
        """Clients that sent every message of the round."""
        return sorted(a for a, sent in self.uploads.items() if "unmask" in sent)

    def run(self, repeats: int) -> server.Aggregate:
        if not self.clients:
            self.setup()
        survivors, dropped = self.collect(self.share(self.advertise()))
        self.unmask(survivors, dropped)
        return self.finish(repeats)


def _require(accepted: bool, what: str) -> None:
    if not accepted:
        raise BenchError(what)


def check_sum(cohort: Cohort, aggregate: server.Aggregate, senders: Sequence[str]) -> Json:
    """The unmasked sum against Σ min(w, W)·clip(x) over the survivors (float64).

    Raises:
        BenchError: survivors other than the clients that sent a masked input, a sum outside
            the quantization bound, or a wrong total weight.
    """
    if list(aggregate.survivors) != list(senders):
        raise BenchError(f"survivors {aggregate.survivors}, expected {senders}")
    params = cohort.setup.params
    c, cap = params.clipping_range, params.max_weight
    want = np.zeros(cohort.setup.length, dtype=np.float64)
    for a in aggregate.survivors:
        want += np.clip(cohort.update(a), -c, c).astype(np.float64) * min(cohort.weight(a), cap)
    error = float(np.max(np.abs(aggregate.weighted_sum - want)))
    bound = error_bound(len(aggregate.survivors), params) * cap
    if not error <= bound:
        raise BenchError(f"unmasked sum off by {error}, bound {bound}")
    weight = sum(min(cohort.weight(a), cap) for a in aggregate.survivors)
    if aggregate.total_weight != weight:
        raise BenchError(f"total weight {aggregate.total_weight}, expected {weight}")
    return {"max_abs_error": _sig(error), "bound": _sig(bound)}


def plain_fedavg_s(cohort: Cohort, survivors: Sequence[str], repeats: int) -> float:
    """Median time of FedAvg.aggregate over the same survivors' float32 vectors."""
    results = [ClientResult(a, [cohort.update(a)], cohort.weight(a), {}) for a in survivors]
    current = [np.zeros(cohort.setup.length, dtype=np.float32)]
    return statistics.median(_laps(lambda: FedAvg().aggregate(current, results), repeats))


def measure_round(cohort: Cohort, scenario: str, *, rng: np.random.Generator, repeats: int) -> Json:
    """Play, check and time one round and its plain FedAvg baseline; its JSON record."""
    play = Play(cohort, make_plan(scenario, cohort.ids, rng), Clock(), Wire())
    aggregate = play.run(repeats)
    check = check_sum(cohort, aggregate, play.masked_senders())
    plain_s = plain_fedavg_s(cohort, aggregate.survivors, repeats)
    record = summarise_round(cohort, scenario, play, plain_s)
    record["check"] = check
    return record


def summarise_round(cohort: Cohort, scenario: str, play: Play, plain_s: float) -> Json:
    """The JSON record of one measured round."""
    params, d = cohort.setup.params, cohort.setup.length
    clock, done = play.clock, play.completed()
    client_s = [sum(clock.total(a, s) for s in CLIENT_STAGES) for a in done]
    client_cpu_s = [sum(clock.cpu_total(a, s) for s in CLIENT_STAGES) for a in done]
    server_steps = {s: clock.total(o, s) for o, s in clock.laps if o == SERVER}
    unmask_s = statistics.median(clock.laps[SERVER, "finish"])
    server_steps["finish"] = unmask_s
    total_s = sum(server_steps.values())
    per_param = [sum(play.uploads[a].values()) / d for a in done]
    client_median = statistics.median(client_s)
    return {
        "n": params.num_clients,
        "d": d,
        "k": params.num_neighbours,
        "t": params.threshold,
        "quantization_bits": params.quantization_bits,
        "ring_bits": params.ring_bits,
        "scenario": scenario,
        "dropouts_by_stage": {str(s): len(play.plan.get(s, ())) for s in DROP_STAGES},
        "excluded_by_server": {str(s): len(v) for s, v in play.server_state().dropouts.items()},
        "survivors": len(play.masked_senders()),
        "completed": len(done),
        "load_average_1min": _sig(os.getloadavg()[0], 3),
        "client_ms": {
            "median": _sig(1e3 * client_median),
            "max": _sig(1e3 * max(client_s)),
            "median_cpu": _sig(1e3 * statistics.median(client_cpu_s)),
            "median_by_stage": {
                s: _sig(1e3 * statistics.median(clock.total(a, s) for a in done))
                for s in CLIENT_STAGES
            },
        },
        "server_s": {
            "unmask": _sig(unmask_s),
            "unmask_laps": [_sig(x) for x in clock.laps[SERVER, "finish"]],
            "unmask_cpu": _sig(statistics.median(clock.cpu_laps[SERVER, "finish"])),
            "total": _sig(total_s),
            "by_step": {s: _sig(t) for s, t in server_steps.items()},
        },
        "upload": {
            "bytes_per_param_mean": _sig(statistics.mean(per_param), 6),
            "bytes_per_param_max": _sig(max(per_param), 6),
            "mean_bytes_by_message": {
                m: _sig(statistics.mean(play.uploads[a][m] for a in done), 6)
                for m in CLIENT_STAGES[1:]
            },
        },
        "plain_fedavg_s": _sig(plain_s),
        "ratios": {
            "server_unmask_over_plain": _sig(unmask_s / plain_s, 3),
            "server_total_over_plain": _sig(total_s / plain_s, 3),
            "client_median_over_plain_per_client": _sig(
                client_median / (plain_s / len(play.masked_senders())), 3
            ),
        },
    }


# -- where the time goes ---------------------------------------------------------------------


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
        "total": _sig(scale * sum(split["total"] for split in steps.values())),
        "by_primitive": {p: _sig(scale * t) for p, t in ranked},
        "by_step": {
            step: {p: _sig(scale * t) for p, t in split.items()} for step, split in steps.items()
        },
    }


def profile_round(cohort: Cohort, scenario: str, *, rng: np.random.Generator) -> Json:
    """Replay one round with the primitives wrapped: the mean per completed client (ms) and
    the server (s), by primitive and by step."""
    play = Play(cohort, make_plan(scenario, cohort.ids, rng), Clock(), Wire())
    profiler = Profiler(play.clock)
    with instrument(profiler):
        play.setup()
        profiler.self_seeds = {state.self_seed for state in play.clients.values()}
        check_sum(cohort, play.run(1), play.masked_senders())
    done = play.completed()
    raw: defaultdict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (owner, stage, primitive), t in profiler.seconds.items():
        who = SERVER if owner == SERVER else "client"
        if who == SERVER or owner in done:
            raw[who, stage][primitive] = raw[who, stage].get(primitive, 0.0) + t
    client_steps = {
        s: _split(s, sum(play.clock.total(a, s) for a in done), raw["client", s], CLIENT_REST)
        for s in CLIENT_STAGES
    }
    server_steps = {
        s: _split(s, play.clock.total(SERVER, s), raw[SERVER, s], SERVER_REST)
        for o, s in play.clock.laps
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
    keystream = _best_time(lambda: stream.expand(seed), 7)
    ring_add = _best_time(lambda: np.add(words, stream.expand(seed), out=words), 7) - keystream
    quantized = _best_time(lambda: quantize(update, weight=10, params=params), 5)
    ours, peer = keys.generate(), keys.public_bytes(keys.generate())
    agreements = 300
    agree = _best_time(
        lambda: [keys.agree(ours, peer, info=b"bench") for _ in range(agreements)], 3
    )
    split = _best_time(lambda: shamir.split([seed, seed], xs=range(1, 20), threshold=10), 20)
    return {
        "d": d,
        "aes_ctr_keystream_gb_per_s": _sig(nbytes / keystream / 1e9, 3),
        "ring_add_gb_per_s": _sig(nbytes / ring_add / 1e9, 3),
        "quantize_ms": _sig(1e3 * quantized, 3),
        "x25519_hkdf_per_s": _sig(agreements / agree, 3),
        "shamir_split_2_secrets_19_holders_ms": _sig(1e3 * split, 3),
    }


# -- abort probability -----------------------------------------------------------------------


def adjacency(n: int, k: int, seed: bytes) -> npt.NDArray[np.float32]:
    """The neighbour graph of a cohort of n as an n-by-n 0/1 matrix."""
    ids = [f"agent-{i:03d}" for i in range(n)]
    index = {a: i for i, a in enumerate(ids)}
    matrix = np.zeros((n, n), dtype=np.float32)
    for a, peers in neighbours(ids, k=k, seed=seed).items():
        matrix[index[a], [index[v] for v in peers]] = 1
    return matrix


def _prune(live: npt.NDArray[np.bool_], graph: npt.NDArray[np.float32], t: int) -> Any:
    """server._prune on a batch: drop members with fewer than t live neighbours, repeatedly."""
    while True:
        weak = live & ((live.astype(np.float32) @ graph) < t)
        if not weak.any():
            return live
        live = live & ~weak


def aborts(stage: npt.NDArray[np.int8], graph: npt.NDArray[np.float32], t: int) -> Any:
    """Which trials abort, mirroring the server, for ``stage[trial, client]`` = the index in
    DROP_STAGES of the message the client never sends (NEVER: it completes the round).

    close_advertise: U1 = prune(advertised); close_share_keys: U2 = prune(U1 ∩ sent shares);
    close_collect: U3 = U2 ∩ sent a masked input; each aborts below t members. finish
    (_reconstruct): every member of U2 (survivors: self-mask seed; U2 \\ U3: mask key) needs
    t shares revealed by U4 = U3 ∩ revealed, and its shares are held by its neighbours in U2.
    """
    u1 = _prune(stage >= ADVERTISED, graph, t)
    u2 = _prune(u1 & (stage >= SHARED), graph, t)
    u3 = u2 & (stage >= MASKED)
    u4 = u3 & (stage >= REVEALED)
    short = (u4.astype(np.float32) @ graph) < t
    return (
        (u1.sum(axis=1) < t)
        | (u2.sum(axis=1) < t)
        | (u3.sum(axis=1) < t)
        | (u2 & short).any(axis=1)
    )


Sampler = Callable[[np.random.Generator, int, int], npt.NDArray[np.int8]]


def iid_after_share_keys(rng: np.random.Generator, trials: int, n: int) -> npt.NDArray[np.int8]:
    """Each client independently vanishes with p = DROPOUT after share_keys."""
    drop = rng.random((trials, n)) < DROPOUT
    return np.where(drop, AFTER_SHARE_KEYS, NEVER).astype(np.int8)


def exact_after_share_keys(rng: np.random.Generator, trials: int, n: int) -> npt.NDArray[np.int8]:
    """Exactly round(DROPOUT·n) clients, uniformly chosen, vanish after share_keys."""
    stage = np.full((trials, n), NEVER, dtype=np.int8)
    chosen = np.argsort(rng.random((trials, n)), axis=1)[:, : round(DROPOUT * n)]
    np.put_along_axis(stage, chosen, AFTER_SHARE_KEYS, axis=1)
    return stage


def iid_spread(rng: np.random.Generator, trials: int, n: int) -> npt.NDArray[np.int8]:
    """Each client independently vanishes with p = DROPOUT, at a uniformly chosen stage."""
    drop = rng.random((trials, n)) < DROPOUT
    where = rng.integers(0, NEVER, (trials, n), dtype=np.int8)
    return np.where(drop, where, NEVER).astype(np.int8)


def upper_95(count: int, trials: int) -> float:
    """One-sided 95% Clopper-Pearson upper bound on a probability seen ``count`` times in
    ``trials`` (≈ 3/trials when count = 0)."""
    if count >= trials:
        return 1.0
    j = np.arange(count + 1, dtype=np.float64)
    log_comb = np.concatenate(([0.0], np.cumsum(np.log((trials - j[1:] + 1) / j[1:]))))

    def cdf(p: float) -> float:
        terms = log_comb + j * math.log(p) + (trials - j) * math.log1p(-p)
        top = float(terms.max())
        return math.exp(top) * float(np.exp(terms - top).sum())

    low, high = count / trials, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) > 0.05 else (low, mid)
    return high


def estimate(
    n: int, k: int, t: int, sample: Sampler, *, trials: int, rng: np.random.Generator
) -> Json:
    """Monte Carlo abort probability: batches of MC_BATCH trials, a fresh graph seed each."""
    count = 0
    for start in range(0, trials, MC_BATCH):
        size = min(MC_BATCH, trials - start)
        graph = adjacency(n, k, rng.bytes(32))
        count += int(aborts(sample(rng, size, n), graph, t).sum())
    return {
        "trials": trials,
        "aborts": count,
        "probability": _sig(count / trials, 3),
        "upper_95": _sig(upper_95(count, trials), 3),
    }


def exact_union_bound(n: int, k: int, t: int, dropped: int) -> float:
    """Union bound when exactly ``dropped`` of n clients vanish: n times the chance that more
    than k - t of one client's k neighbours (a uniform k-subset of the other n - 1, the
    dropouts being uniform) are among them."""

    def tail(gone: int) -> float:
        hits = range(k - t + 1, min(k, gone) + 1)
        ways = sum(math.comb(gone, j) * math.comb(n - 1 - gone, k - j) for j in hits)
        return ways / math.comb(n - 1, k)

    share = dropped / n  # the client itself is among the dropouts
    return min(1.0, n * ((1 - share) * tail(dropped) + share * tail(dropped - 1)))


def abort_probability(n: int, *, trials: int, rng: np.random.Generator) -> Json:
    """The default (k, t) and k = 3 at DROPOUT, by Monte Carlo and by params.abort_bound."""
    default = resolve(n)
    out: Json = {"n": n, "dropout": DROPOUT}
    variants: list[tuple[str, int, int, dict[str, Sampler]]] = [
        (
            "default",
            default.num_neighbours,
            default.threshold,
            {
                "iid_after_share_keys": iid_after_share_keys,
                "exactly_10pct_after_share_keys": exact_after_share_keys,
                "iid_spread_over_stages": iid_spread,
            },
        ),
        ("k3", 3, 2, {"iid_after_share_keys": iid_after_share_keys}),
    ]
    for name, k, t, samplers in variants:
        out[name] = {
            "k": k,
            "t": t,
            "union_bound": _sig(abort_bound(n, k, t, DROPOUT), 3),
            "union_bound_exactly_10pct": _sig(exact_union_bound(n, k, t, round(DROPOUT * n)), 3),
            **{s: estimate(n, k, t, f, trials=trials, rng=rng) for s, f in samplers.items()},
        }
    return out


# -- report ----------------------------------------------------------------------------------


def _target(limit: float, value: float | None, basis: str, *, strict: bool = False) -> Json:
    """One target: met when value ≤ limit (value < limit when ``strict``); null if unmeasured."""
    met = None if value is None else (value < limit if strict else value <= limit)
    return {"limit": limit, "value": value, "pass": met, "basis": basis}


def _pick(record: Json | None, *path: str) -> Any:
    for key in path:
        if record is None:
            return None
        record = record[key]
    return record


def _worst(*values: float | None) -> float | None:
    measured = [v for v in values if v is not None]
    return max(measured) if measured else None


def targets(rounds: Sequence[Json], abort: Json) -> Json:
    """The issue's targets at n = 100, d = 1M, default k and t (null: not measured)."""
    by = {r["scenario"]: r for r in rounds if (r["n"], r["d"]) == (TARGET_N, TARGET_D)}
    none, dropped = by.get("none"), by.get("after_share_keys")
    mc = abort["default"]["iid_after_share_keys"] if abort["n"] == TARGET_N else None
    client = _target(
        50,
        _worst(_pick(none, "client_ms", "median"), _pick(dropped, "client_ms", "median")),
        "median over clients, wall; the worse of 0% and 10% dropouts",
    )
    client["value_cpu"] = _worst(
        _pick(none, "client_ms", "median_cpu"), _pick(dropped, "client_ms", "median_cpu")
    )
    unmask = _target(0.5, _pick(none, "server_s", "unmask"), "server.finish, wall")
    unmask["value_cpu"] = _pick(none, "server_s", "unmask_cpu")
    unmask_dropped = _target(
        0.8,
        _pick(dropped, "server_s", "unmask"),
        "server.finish, wall; 10% of clients vanished after share_keys",
    )
    unmask_dropped["value_cpu"] = _pick(dropped, "server_s", "unmask_cpu")
    upload = _target(
        4.2,
        _worst(
            _pick(none, "upload", "bytes_per_param_max"),
            _pick(dropped, "upload", "bytes_per_param_max"),
        ),
        "max over clients of all bytes published / d",
    )
    abort_rate = _target(
        1e-3,
        _pick(mc, "probability"),
        "Monte Carlo, each client vanishes after share_keys with p = 0.1",
        strict=True,
    )
    upper = _pick(mc, "upper_95")
    abort_rate["upper_95"] = upper
    abort_rate["pass_at_upper_95"] = None if upper is None else upper < 1e-3
    return {
        "client_ms": client,
        "server_unmask_s_no_dropouts": unmask,
        "server_unmask_s_10pct_dropouts": unmask_dropped,
        "upload_bytes_per_param": upload,
        "abort_probability_10pct_dropouts": abort_rate,
    }


def machine() -> Json:
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": _sig(os.getloadavg()[0], 3),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cryptography": cryptography.__version__,
        "msgspec": msgspec.__version__,
    }


def wire_notes(d: int) -> Json:
    """Envelope overheads, and the plain FedAvg upload (a ModelUpdate of d float32) per
    parameter for comparison."""
    wire = Wire()
    plain = ModelUpdate(
        model_version=0, num_examples=1, tensors=[to_tensor(np.zeros(d, dtype=np.float32))]
    )
    return {
        "envelope_bytes_by_kind": wire.overhead("agent-000"),
        "plain_fedavg_upload_bytes_per_param": _sig(wire.size("agent-000", plain) / d, 6),
        "encoding": "agent.messages bodies (AdvertiseKeys, ShareKeys, MaskedInput, Unmask) "
        "encoded by agent.messages.codec.encode, as the agent publishes them",
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--n", type=int, nargs="+", help="cohort sizes (default 10 50 100)")
    parser.add_argument("--d", type=int, nargs="+", help="parameters (default 100000 1000000)")
    parser.add_argument("--repeats", type=int, help="timings of finish and FedAvg (default 3)")
    parser.add_argument("--trials", type=int, help="Monte Carlo trials (default 1000000)")
    parser.add_argument("--seed", type=int, default=0, help="data and dropout choices")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    quick = args.quick
    args.n = args.n or ([10, 20] if quick else [10, 50, 100])
    args.d = args.d or ([20_000] if quick else [100_000, 1_000_000])
    args.repeats = args.repeats or (1 if quick else 3)
    args.trials = args.trials or (20_000 if quick else 1_000_000)
    return args


def _progress(record: Json) -> None:
    print(
        f"n={record['n']} d={record['d']} {record['scenario']}: "
        f"client {record['client_ms']['median']} ms, unmask {record['server_s']['unmask']} s, "
        f"plain {record['plain_fedavg_s']} s",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    started = time.perf_counter()
    host = machine()
    rng = np.random.default_rng(args.seed)
    largest_n, largest_d = max(args.n), max(args.d)
    rounds: list[Json] = []
    profiles: list[Json] = []
    for d in args.d:
        for n in args.n:
            cohort = make_cohort(n, d, rng)
            scenarios = ["none", "after_share_keys"] + (["spread"] if n == largest_n else [])
            for scenario in scenarios:
                rounds.append(measure_round(cohort, scenario, rng=rng, repeats=args.repeats))
                _progress(rounds[-1])
            if (n, d) == (largest_n, largest_d):
                profiles = [profile_round(cohort, s, rng=rng) for s in scenarios[:2]]
            del cohort
    abort = abort_probability(largest_n, trials=args.trials, rng=rng)
    result: Json = {
        "benchmark": "secagg+",
        "machine": host,
        "config": {
            "n": args.n,
            "d": args.d,
            "repeats": args.repeats,
            "trials": args.trials,
            "seed": args.seed,
            "dropout": DROPOUT,
        },
        "wire": wire_notes(largest_d),
        "rounds": rounds,
        "abort_probability": abort,
        "where_time_goes": {
            "n": largest_n,
            "d": largest_d,
            "rounds": profiles,
            "floors": floors(largest_d),
        },
        "targets": targets(rounds, abort),
    }
    host["load_average_1min_at_end"] = _sig(os.getloadavg()[0], 3)
    result["elapsed_s"] = _sig(time.perf_counter() - started, 3)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
