"""The SecAgg+ protocol in process (agent.secagg.simulation drives the real client and server):
correctness under dropouts, aborts, stage transitions, and what the aggregator can see."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SecAggAbortError, StageError
from agent.secagg import client as C
from agent.secagg import server as S
from agent.secagg.params import resolve
from agent.secagg.quantize import error_bound, quantize, weight_word
from agent.secagg.simulation import (
    DROP_STAGES,
    Observer,
    Plan,
    SecAggRound,
    announce,
    survival,
)
from agent.secagg.state import PublicKeys, RevealedShares, Setup, Stage, can_move, move


class Inspector(Observer):
    """Calls ``see`` with the server's state at each of the simulation's inspection points."""

    def __init__(self, see: Callable[[S.ServerState], None]) -> None:
        self.see = see

    def inspect(self, state: S.ServerState) -> None:
        self.see(state)


def run_round(
    setup: Setup,
    updates: dict[str, np.ndarray],
    weights: dict[str, int],
    plan: Plan,
    *,
    inspect: Callable[[S.ServerState], None] = lambda s: None,
    rngs: dict[str, np.random.Generator] | None = None,
) -> S.Aggregate:
    """Drive one round through agent.secagg.simulation: every client that has not dropped
    answers every stage, and the server accepts every message (else SimulationError)."""
    observer = Inspector(inspect)
    return SecAggRound(setup, updates, weights, plan, observer, rngs or {}).play()


def plaintext_sum(
    setup: Setup,
    updates: dict[str, np.ndarray],
    weights: dict[str, int],
    survivors: tuple[str, ...],
) -> np.ndarray:
    p = setup.params
    return sum(  # type: ignore[return-value]
        np.clip(updates[a].astype(np.float64), -p.clipping_range, p.clipping_range)
        * min(weights[a], p.max_weight)
        for a in survivors
    )


def check(
    setup: Setup,
    agg: S.Aggregate,
    updates: dict[str, np.ndarray],
    weights: dict[str, int],
    expected: set[str],
) -> None:
    assert set(agg.survivors) == expected
    want = plaintext_sum(setup, updates, weights, agg.survivors)
    bound = error_bound(len(agg.survivors), setup.params) * setup.params.max_weight
    assert np.abs(agg.weighted_sum - want).max() <= bound * (1 + 1e-9)
    assert agg.total_weight == sum(min(weights[a], setup.params.max_weight) for a in expected)


def random_inputs(setup: Setup, seed: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    rng = np.random.default_rng(seed)
    updates = {a: rng.normal(0, 2, setup.length).astype(np.float32) for a in setup.cohort}
    weights = {a: int(rng.integers(1, 2000)) for a in setup.cohort}
    return updates, weights


# -- correctness --------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 24), d=st.integers(1, 400), data=st.data())
def test_unmasked_sum_equals_plaintext_sum(n: int, d: int, data: st.DataObject) -> None:
    """For random n, d and k (and the default t), with no dropouts, the unmasked sum is the
    plaintext weighted sum within the quantization bound."""
    k = data.draw(st.integers(2, n - 1).filter(lambda k: (n * k) % 2 == 0))
    setup = announce(n, d, params=resolve(n, num_neighbours=k))
    updates, weights = random_inputs(setup, data.draw(st.integers(0, 2**32 - 1)))
    agg = run_round(setup, updates, weights, {})
    check(setup, agg, updates, weights, set(setup.cohort))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(8, 30), data=st.data())
def test_dropouts_at_any_stage_within_threshold(n: int, data: st.DataObject) -> None:
    """Random dropouts after advertise_keys, share_keys and collect_masked_input (few enough
    that every secret keeps t live holders) still give the survivors' exact sum."""
    setup = announce(n, 50)
    updates, weights = random_inputs(setup, 1)
    cohort = list(setup.cohort)
    lost = data.draw(st.lists(st.sampled_from(cohort), unique=True, max_size=n // 6))
    early = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_INPUT]
    stages = [data.draw(st.sampled_from(early)) for _ in lost]
    plan = {s: frozenset(a for a, x in zip(lost, stages, strict=True) if x == s) for s in early}
    reasons: list[str] = []
    try:
        agg = run_round(setup, updates, weights, plan)
    except SecAggAbortError as exc:
        # Only when the graph left some survivor's secret with fewer than t live holders.
        reasons.append(exc.reason)
    if reasons:
        assert reasons[0] in {"too_few_shares", "too_few_survivors"}
        return
    gone = frozenset().union(*plan.values())
    assert set(agg.survivors) <= set(cohort) - gone
    check(setup, agg, updates, weights, set(agg.survivors))


@pytest.mark.parametrize("stage", DROP_STAGES)
def test_two_dropouts_at_each_stage(stage: Stage) -> None:
    """Two clients vanishing at one stage: the round completes over the others (after
    unmask, their inputs still count: they sent them)."""
    setup = announce(12, 300)
    updates, weights = random_inputs(setup, 2)
    lost = frozenset(setup.cohort[3:5])
    agg = run_round(setup, updates, weights, {stage: lost})
    expected = set(setup.cohort) if stage is Stage.UNMASK else set(setup.cohort) - lost
    check(setup, agg, updates, weights, expected)


def test_below_threshold_the_round_aborts() -> None:
    """Too few masked inputs: close_collect aborts with a clear reason, state aborted."""
    setup = announce(10, 20)  # k = 9, t = 5
    updates, weights = random_inputs(setup, 3)
    server: list[S.ServerState] = []
    with pytest.raises(SecAggAbortError, match="too_few_survivors"):
        run_round(
            setup,
            updates,
            weights,
            {Stage.COLLECT_MASKED_INPUT: frozenset(setup.cohort[:6])},
            inspect=server.append,
        )
    assert server[-1].stage is Stage.ABORTED


def test_too_few_unmask_answers_abort() -> None:
    """Survivors who vanish before revealing leave fewer than t shares: abort, not garbage."""
    setup = announce(10, 20)
    updates, weights = random_inputs(setup, 4)
    with pytest.raises(SecAggAbortError, match="too_few_shares"):
        run_round(setup, updates, weights, {Stage.UNMASK: frozenset(setup.cohort[:6])})


def test_wrong_revealed_shares_abort_the_round() -> None:
    """A dropout's mask-key shares that do not rebuild its advertised key abort the round."""
    setup = announce(6, 10)
    updates, weights = random_inputs(setup, 5)

    def corrupt(server: S.ServerState) -> None:
        if server.stage is Stage.UNMASK:
            for holder, shares in server.revealed.items():
                server.revealed[holder] = RevealedShares(
                    shares.self_seed, {o: os.urandom(64) for o in shares.mask_key}
                )

    with pytest.raises(SecAggAbortError, match="bad_shares"):
        run_round(
            setup,
            updates,
            weights,
            {Stage.COLLECT_MASKED_INPUT: frozenset(setup.cohort[:1])},
            inspect=corrupt,
        )


def test_client_refuses_an_inconsistent_unmask_request() -> None:
    """A client never reveals for a survivor list that omits it, overlaps the dropouts, or is
    below the threshold (it could expose an individual update)."""
    setup = announce(5, 4)
    for survivors, dropped in [
        (list(setup.cohort[1:]), [setup.cohort[0]]),  # omits the client
        (list(setup.cohort), [setup.cohort[1]]),  # overlap
        (list(setup.cohort[:2]), []),  # below t
    ]:
        state = C.setup(setup.cohort[0], setup)
        state.stage = Stage.COLLECT_MASKED_INPUT
        with pytest.raises(SecAggAbortError):
            C.unmask(state, survivors=survivors, dropped=dropped)


# -- stage transitions --------------------------------------------------------------------

#: Every legal (from, to) move of a SecAgg+ stage: one step forward along the protocol, or
#: to ``aborted`` from a stage that is not final. Everything else is a StageError.
LEGAL_MOVES = frozenset(
    {
        (Stage.SETUP, Stage.ADVERTISE_KEYS),
        (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS),
        (Stage.SHARE_KEYS, Stage.COLLECT_MASKED_INPUT),
        (Stage.COLLECT_MASKED_INPUT, Stage.UNMASK),
        (Stage.UNMASK, Stage.DONE),
        (Stage.SETUP, Stage.ABORTED),
        (Stage.ADVERTISE_KEYS, Stage.ABORTED),
        (Stage.SHARE_KEYS, Stage.ABORTED),
        (Stage.COLLECT_MASKED_INPUT, Stage.ABORTED),
        (Stage.UNMASK, Stage.ABORTED),
    }
)


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(Stage, Stage)))
def test_every_stage_transition(current: Stage, wanted: Stage) -> None:
    """The full product of stages: exactly the moves of ``LEGAL_MOVES`` are allowed."""
    expected = (current, wanted) in LEGAL_MOVES
    assert can_move(current, wanted) is expected
    state = C.setup("agent-000", announce(4, 3))
    state.stage = current
    if expected:
        move(state, wanted)
        assert state.stage is wanted
    else:
        with pytest.raises(StageError):
            move(state, wanted)


def _client_calls(setup: Setup) -> dict[Stage, Callable[[C.ClientState], Any]]:
    """Each client stage function, keyed by the stage it needs the state to be in."""
    keys = PublicKeys(bytes(32), bytes(32))
    return {
        Stage.SETUP: C.advertise_keys,
        Stage.ADVERTISE_KEYS: lambda s: C.share_keys(s, {v: keys for v in s.neighbours}),
        Stage.SHARE_KEYS: lambda s: C.collect_masked_input(s, {}, update=np.zeros(3), weight=1),
        Stage.COLLECT_MASKED_INPUT: lambda s: C.unmask(s, survivors=setup.cohort, dropped=[]),
    }


@pytest.mark.parametrize("current", list(Stage))
def test_client_stage_functions_refuse_wrong_stages(current: Stage) -> None:
    """Each client function runs only from its own stage; from any other it raises."""
    setup = announce(4, 3)
    for needed, call in _client_calls(setup).items():
        state = C.setup("agent-000", setup)
        state.stage = current
        if current is needed:
            continue
        with pytest.raises(StageError):
            call(state)


def _server_calls() -> dict[Stage, list[Callable[[S.ServerState], Any]]]:
    keys = PublicKeys(bytes(32), bytes(32))
    return {
        Stage.SETUP: [S.open_advertise],
        Stage.ADVERTISE_KEYS: [lambda s: S.receive_keys(s, "agent-000", keys), S.close_advertise],
        Stage.SHARE_KEYS: [lambda s: S.receive_shares(s, "agent-000", {}), S.close_share_keys],
        Stage.COLLECT_MASKED_INPUT: [
            lambda s: S.receive_masked_input(s, "agent-000", np.zeros(4, np.uint32)),
            S.close_collect,
        ],
        Stage.UNMASK: [
            lambda s: S.receive_unmask(s, "agent-000", RevealedShares({}, {})),
            S.finish,
        ],
    }


@pytest.mark.parametrize("current", list(Stage))
def test_server_stage_functions_refuse_wrong_stages(current: Stage) -> None:
    """Each server function runs only in its own stage; from any other it raises."""
    setup = announce(4, 3)
    for needed, calls in _server_calls().items():
        if current is needed:
            continue
        for call in calls:
            state = S.setup(setup)
            state.stage = current
            with pytest.raises(StageError):
                call(state)


def test_server_ignores_strangers_repeats_and_wrong_shapes() -> None:
    """Messages from outside the cohort, second copies and wrong-sized vectors change
    nothing."""
    setup = announce(5, 8)
    server = S.setup(setup)
    S.open_advertise(server)
    good = PublicKeys(os.urandom(32), os.urandom(32))
    assert not S.receive_keys(server, "stranger", good)
    assert S.receive_keys(server, setup.cohort[0], good)
    assert not S.receive_keys(server, setup.cohort[0], good)
    assert not S.receive_keys(server, setup.cohort[1], PublicKeys(b"short", bytes(32)))


# -- what the aggregator sees -------------------------------------------------------------


def _chi_square_top_byte(vector: np.ndarray) -> float:
    """Pearson's χ² of the top byte of each word against uniform (255 degrees of freedom)."""
    top = (vector >> np.uint32(24)).astype(np.int64)
    observed = np.bincount(top, minlength=256)
    expected = len(vector) / 256
    return float(((observed - expected) ** 2 / expected).sum())


#: χ²(255) at p = 10⁻⁶ (Wilson-Hilferty): a uniform vector exceeds it once in a million.
CHI2_CRITICAL = 377.2


def test_a_masked_update_is_indistinguishable_from_uniform() -> None:
    """One client's masked input passes a χ² test for uniformity on Z_2^32, while the same
    update unmasked fails it by orders of magnitude."""
    setup = announce(10, 200_000)
    updates, weights = random_inputs(setup, 6)
    masked: dict[str, Any] = {}

    class Keep(Observer):
        def sent(self, sender: str, stage: Stage, message: Any) -> None:
            if stage is Stage.COLLECT_MASKED_INPUT:
                masked[sender] = message

    sim = SecAggRound(setup, updates, weights, observer=Keep())
    sim.collect(sim.share(sim.advertise()))
    one = setup.cohort[0]
    plain = quantize(updates[one], weight=weights[one], params=setup.params)
    assert _chi_square_top_byte(masked[one]) < CHI2_CRITICAL
    assert _chi_square_top_byte(plain) > 100 * CHI2_CRITICAL


def _arrays(value: Any, seen: set[int] | None = None) -> Iterator[np.ndarray]:
    """Every numpy array reachable from a value (dataclasses, mappings, sequences)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _arrays(getattr(value, f.name), seen)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v, seen)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _arrays(v, seen)


def test_aggregator_state_never_holds_an_unmasked_update() -> None:
    """At every point of a round (with a dropout), no array in the aggregator's state equals
    any client's quantized input, masked or not: it holds only the running masked sum."""
    setup = announce(8, 1000)
    updates, weights = random_inputs(setup, 7)
    rngs = {a: np.random.default_rng(i) for i, a in enumerate(setup.cohort)}
    plain = {
        a: np.append(
            quantize(
                updates[a], weight=weights[a], params=setup.params, rng=np.random.default_rng(i)
            ),
            weight_word(weights[a], setup.params),
        ).astype(setup.params.dtype)
        for i, a in enumerate(setup.cohort)
    }
    snapshots = 0

    def inspect(server: S.ServerState) -> None:
        nonlocal snapshots
        snapshots += 1
        for array in _arrays(server):
            for vector in plain.values():
                assert not (array.shape == vector.shape and np.array_equal(array, vector))

    agg = run_round(
        setup,
        updates,
        weights,
        {Stage.COLLECT_MASKED_INPUT: frozenset(setup.cohort[:1])},
        inspect=inspect,
        rngs=rngs,
    )
    assert snapshots > 5
    check(setup, agg, updates, weights, set(setup.cohort[1:]))


# -- the cheap survival model -------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(n=st.integers(5, 20), data=st.data())
def test_survival_predicts_the_real_round(n: int, data: st.DataObject) -> None:
    """For random dropouts at every stage, ``survival`` (the server's bookkeeping on
    placeholder messages) gives the real round's outcome: the same abort reason, or none,
    and the same clients excluded at each stage closed before finish."""
    setup = announce(n, 5)
    updates, weights = random_inputs(setup, data.draw(st.integers(0, 2**32 - 1)))
    lost = data.draw(st.lists(st.sampled_from(setup.cohort), unique=True, max_size=n // 2))
    stages = [data.draw(st.sampled_from(DROP_STAGES)) for _ in lost]
    plan = {
        s: frozenset(a for a, x in zip(lost, stages, strict=True) if x == s) for s in DROP_STAGES
    }
    sim = SecAggRound(setup, updates, weights, plan)
    try:
        sim.play()
        reason = None
    except SecAggAbortError as exc:
        reason = exc.reason
    predicted = survival(setup, plan)
    assert predicted.abort == reason
    closed = {s: v for s, v in sim.server_state.dropouts.items() if s is not Stage.UNMASK}
    assert predicted.excluded == closed
