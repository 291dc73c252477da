"""One measured SecAgg+ round for bench/secagg.py: the round is played by
``agent.secagg.simulation.SecAggRound`` (the real client and server stage functions), with an
observer that times every call and sizes every message as the agent would publish it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.messages import codec
from agent.messages.bodies import AdvertiseKeys, Body, MaskedInput, ShareKeys, Unmask
from agent.messages.tensors import to_tensor
from agent.secagg import server
from agent.secagg.keys import RoundContext
from agent.secagg.quantize import error_bound
from agent.secagg.simulation import DROP_STAGES, SERVER, Observer, Plan, SecAggRound, announce
from agent.secagg.state import PublicKeys, RevealedShares, Setup, Stage
from agent.strategy.fedavg import ClientResult, FedAvg

DROPOUT = 0.1
FEDERATION = "bench"
ROUND = 1
CLIENT_STAGES = ("setup", "advertise_keys", "share_keys", "collect_masked_input", "unmask")

Json = dict[str, Any]


class BenchError(RuntimeError):
    """The round did not produce the right sum: no number from this build can be trusted."""


def sig(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits, for readable JSON."""
    return float(f"{value:.{digits}g}")


def laps(call: Callable[[], object], repeats: int) -> list[float]:
    """Wall time of ``repeats`` calls, seconds."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


@dataclass(frozen=True, slots=True)
class Wire:
    """Sizes of messages exactly as an agent publishes them: the body types of
    ``agent.messages.bodies`` encoded by ``agent.messages.codec`` in a fresh envelope."""

    federation: str = FEDERATION
    round: int = ROUND

    def size(self, sender: str, body: Body) -> int:
        return len(codec.encode(body, federation=self.federation, round=self.round, sender=sender))


def wire_body(message: Any) -> Body:
    """The ``agent.messages`` body that carries a simulation message."""
    if isinstance(message, PublicKeys):
        return AdvertiseKeys(enc_key=message.enc, mask_key=message.mask)
    if isinstance(message, RevealedShares):
        return Unmask(self_seed=message.self_seed, mask_key=message.mask_key)
    if isinstance(message, np.ndarray):
        return MaskedInput(model_version=ROUND - 1, vector=to_tensor(message))
    return ShareKeys(ciphertexts=message)


class Clock:
    """Laps of wall time and of this process's CPU time per (owner, step); while a lap runs,
    ``owner`` and ``stage`` name it (the profiler files its own timings under them)."""

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


@dataclass
class Recorder(Observer):
    """Times every stage-function call on ``clock`` and records each client's upload bytes."""

    clock: Clock = field(default_factory=Clock)
    wire: Wire = field(default_factory=Wire)
    uploads: defaultdict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))

    def call(self, owner: str, step: str) -> Any:
        return self.clock.time(owner, step)

    def sent(self, sender: str, stage: Stage, message: Any) -> None:
        self.uploads[sender][str(stage)] = self.wire.size(sender, wire_body(message))

    def masked_senders(self) -> list[str]:
        """Clients that sent a masked input: the survivors the sum must cover."""
        return sorted(a for a, sent in self.uploads.items() if "collect_masked_input" in sent)

    def completed(self) -> list[str]:
        """Clients that sent every message of the round."""
        return sorted(a for a, sent in self.uploads.items() if "unmask" in sent)


@dataclass(frozen=True, slots=True)
class Cohort:
    """The round's announcement and every client's update, shape (n, d) float32, and weight."""

    setup: Setup
    updates: npt.NDArray[np.float32]
    weights: tuple[int, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return self.setup.cohort

    def update(self, agent: str) -> npt.NDArray[np.float32]:
        return self.updates[self.setup.x_of(agent) - 1]

    def weight(self, agent: str) -> int:
        return self.weights[self.setup.x_of(agent) - 1]

    def round(self, plan: Plan, observer: Observer) -> SecAggRound:
        """A simulated round over this cohort (its setup stage already run)."""
        updates = {a: self.update(a) for a in self.ids}
        weights = {a: self.weight(a) for a in self.ids}
        return SecAggRound(self.setup, updates, weights, plan, observer)


def make_cohort(n: int, d: int, rng: np.random.Generator) -> Cohort:
    """n clients with the default parameters; updates 3·N(0, 1) (a few get clipped at ±8) and
    weights in [1, 2000) (some get capped at W = 1000)."""
    setup = announce(n, d, context=RoundContext(FEDERATION, ROUND), graph_seed=rng.bytes(32))
    updates = rng.standard_normal((n, d), dtype=np.float32)
    updates *= 3
    weights = tuple(int(w) for w in rng.integers(1, 2000, n))
    return Cohort(setup, updates, weights)


def make_plan(scenario: str, ids: Sequence[str], rng: np.random.Generator) -> Plan:
    """Which clients vanish at which stage: ``none``; ``after_share_keys`` (10% never send a
    masked input); ``spread`` (10%, spread over the four stages)."""
    if scenario == "none":
        return {}
    chosen = [str(a) for a in rng.choice(ids, size=round(DROPOUT * len(ids)), replace=False)]
    if scenario == "after_share_keys":
        return {Stage.COLLECT_MASKED_INPUT: frozenset(chosen)}
    if scenario == "spread":
        return {s: frozenset(chosen[i :: len(DROP_STAGES)]) for i, s in enumerate(DROP_STAGES)}
    raise ValueError(f"unknown scenario {scenario!r}")


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
    return {"max_abs_error": sig(error), "bound": sig(bound)}


def plain_fedavg_s(cohort: Cohort, survivors: Sequence[str], repeats: int) -> float:
    """Median time of FedAvg.aggregate over the same survivors' float32 vectors: the baseline
    every ratio is taken against, measured in this process."""
    results = [ClientResult(a, [cohort.update(a)], cohort.weight(a), {}) for a in survivors]
    current = [np.zeros(cohort.setup.length, dtype=np.float32)]
    return statistics.median(laps(lambda: FedAvg().aggregate(current, results), repeats))


def measure_round(cohort: Cohort, scenario: str, *, rng: np.random.Generator, repeats: int) -> Json:
    """Play, check and time one round (``server.finish`` ``repeats`` times, on copies of the
    state) and its plain FedAvg baseline; its JSON record."""
    recorder = Recorder()
    sim = cohort.round(make_plan(scenario, cohort.ids, rng), recorder)
    sim.unmask(*sim.collect(sim.share(sim.advertise())))
    aggregate = None
    for _ in range(repeats):
        aggregate = sim.finish(keep_state=True)
    if aggregate is None:
        raise BenchError("finish never ran")
    check = check_sum(cohort, aggregate, recorder.masked_senders())
    plain_s = plain_fedavg_s(cohort, aggregate.survivors, repeats)
    record = summarise_round(cohort, scenario, sim, recorder, plain_s)
    record["check"] = check
    return record


def summarise_round(
    cohort: Cohort, scenario: str, sim: SecAggRound, recorder: Recorder, plain_s: float
) -> Json:
    """The JSON record of one measured round."""
    params, d = cohort.setup.params, cohort.setup.length
    clock, done = recorder.clock, recorder.completed()
    client_s = [sum(clock.total(a, s) for s in CLIENT_STAGES) for a in done]
    client_cpu_s = [sum(clock.cpu_total(a, s) for s in CLIENT_STAGES) for a in done]
    server_steps = {s: clock.total(o, s) for o, s in clock.laps if o == SERVER}
    unmask_s = statistics.median(clock.laps[SERVER, "finish"])
    server_steps["finish"] = unmask_s
    total_s = sum(server_steps.values())
    client_median = statistics.median(client_s)
    survivors = len(recorder.masked_senders())
    return {
        "n": params.num_clients,
        "d": d,
        "k": params.num_neighbours,
        "t": params.threshold,
        "quantization_bits": params.quantization_bits,
        "ring_bits": params.ring_bits,
        "scenario": scenario,
        "dropouts_by_stage": {str(s): len(sim.plan.get(s, ())) for s in DROP_STAGES},
        "excluded_by_server": {str(s): len(v) for s, v in sim.server_state.dropouts.items()},
        "survivors": survivors,
        "completed": len(done),
        "load_average_1min": sig(os.getloadavg()[0], 3),
        "client_ms": {
            "median": sig(1e3 * client_median),
            "max": sig(1e3 * max(client_s)),
            "median_cpu": sig(1e3 * statistics.median(client_cpu_s)),
            "median_by_stage": {
                s: sig(1e3 * statistics.median(clock.total(a, s) for a in done))
                for s in CLIENT_STAGES
            },
        },
        "server_s": {
            "unmask": sig(unmask_s),
            "unmask_laps": [sig(x) for x in clock.laps[SERVER, "finish"]],
            "unmask_cpu": sig(statistics.median(clock.cpu_laps[SERVER, "finish"])),
            "total": sig(total_s),
            "by_step": {s: sig(t) for s, t in server_steps.items()},
        },
        "upload": upload_record(recorder, done, d),
        "plain_fedavg_s": sig(plain_s),
        "ratios": {
            "server_unmask_over_plain": sig(unmask_s / plain_s, 3),
            "server_total_over_plain": sig(total_s / plain_s, 3),
            "client_median_over_plain_per_client": sig(client_median / (plain_s / survivors), 3),
        },
    }


def upload_record(recorder: Recorder, done: Sequence[str], d: int) -> Json:
    """Bytes published per parameter (mean, max over the clients) and per message kind."""
    uploads: Mapping[str, dict[str, int]] = recorder.uploads
    per_param = [sum(uploads[a].values()) / d for a in done]
    return {
        "bytes_per_param_mean": sig(statistics.mean(per_param), 6),
        "bytes_per_param_max": sig(max(per_param), 6),
        "mean_bytes_by_message": {
            m: sig(statistics.mean(uploads[a][m] for a in done), 6) for m in CLIENT_STAGES[1:]
        },
    }
