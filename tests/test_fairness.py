"""Per-sender fairness before decode (``agent.runtime.fairness``), duplicate joins answered
once, over-selection and the liveness rules that keep a straggler from costing more than one
deadline."""

from __future__ import annotations

import asyncio
import random

import numpy as np

from agent.bus.base import BusMessage
from agent.messages import topics
from agent.messages.bodies import AgentStatus, JoinRequest, Liveness, ModelUpdate
from agent.messages.codec import encode
from agent.messages.tensors import to_tensors
from agent.plugin.api import Weights
from agent.roles.aggregator.cohort import over_selected, sample_cohort
from agent.roles.aggregator.plain_round import PlainRound
from agent.roles.aggregator.records import GlobalState
from agent.roles.liveness import LivenessTracker
from agent.runtime.fairness import FairnessLimits, FairQueue

FED = "fed"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def update_from(agent_id: str, i: int = 0) -> BusMessage:
    """A message on the agent's own topic (the sender is read from the topic)."""
    return BusMessage(topics.UPDATE.format(FED, agent_id), f"{agent_id}-{i}".encode())


def join_from(agent_id: str) -> BusMessage:
    body = JoinRequest(agent_id=agent_id, plugin="toy", num_examples=1)
    return BusMessage(
        topics.JOIN.format(FED), encode(body, federation=FED, round=0, sender=agent_id)
    )


def test_a_flood_is_rate_limited_per_sender_before_decode() -> None:
    clock = Clock()
    queue = FairQueue(
        FED, limits=FairnessLimits(rate=10, burst=20, join_rate=1, join_burst=3), clock=clock
    )
    accepted = sum(queue.put(update_from("mallory", i)) for i in range(1000))
    assert accepted == 20  # the burst; the rest shed at once
    assert queue.put(update_from("honest"))
    joins = sum(queue.put(join_from("mallory")) for _ in range(100))
    assert joins == 3  # joins have their own, smaller bucket
    assert queue.put(join_from("honest"))  # claimed sender on the join topic: its own bucket
    clock.now = 1.0
    assert sum(queue.put(update_from("mallory", i)) for i in range(100)) == 10
    assert queue.shed[("mallory", "rate_limited")] == 980 + 97 + 90
    assert not any(sender == "honest" for sender, _ in queue.shed)


def test_queue_shares_and_round_robin_keep_the_quiet_sender_served() -> None:
    """With no rate limit in the way, the flooder fills only its share; a full queue makes
    room by shedding from the longest sender; dequeue alternates between senders."""
    limits = FairnessLimits(rate=1e9, burst=10**9, capacity=8, min_share=1)
    queue = FairQueue(FED, limits=limits)
    for i in range(100):
        queue.put(update_from("mallory", i))
    assert len(queue) == 8
    assert queue.put(update_from("honest", 0))  # the queue is full: mallory's newest goes
    assert queue.put(update_from("honest", 1))
    assert queue.shed[("mallory", "queue_full")] == 2

    async def first_four() -> list[str]:
        return [(await queue.get()).payload.decode() for _ in range(4)]  # type: ignore[union-attr]

    order = asyncio.run(first_four())
    assert order == ["mallory-0", "honest-0", "mallory-1", "honest-1"]


def test_an_unreadable_payload_on_a_shared_topic_gets_a_bucket_of_its_own() -> None:
    queue = FairQueue(FED, limits=FairnessLimits(join_burst=2, join_rate=0.001))
    junk = BusMessage(topics.JOIN.format(FED), b"\x00junk")
    assert [queue.put(junk) for _ in range(3)] == [True, True, False]
    assert queue.put(join_from("honest"))
    assert ("?", "rate_limited") in queue.shed


def test_over_selection_asks_more_and_closes_at_the_quorum() -> None:
    assert over_selected(10, 100, over_selection=0.3) == 13
    assert over_selected(10, 11, over_selection=0.3) == 11
    assert over_selected(0, 11, over_selection=0.3) == 0
    cohort = sample_cohort(
        [f"a{i}" for i in range(20)],
        fraction=0.5,
        min_clients=2,
        max_clients=100,
        rng=random.Random(0),
        over_selection=0.3,
    )
    assert len(cohort) == 13

    weights: Weights = [np.zeros(2, np.float32)]
    model = GlobalState.of(0, weights)
    plain = PlainRound(cohort=frozenset(cohort), model=model, alive=lambda a: True, quorum=10)

    async def run() -> int:
        for a in cohort[:10]:
            plain.on_update(
                a, ModelUpdate(model_version=0, tensors=to_tensors(weights), num_examples=1)
            )
        results = await asyncio.wait_for(plain.wait(30.0), 1.0)  # no deadline wait
        return len(results)

    assert asyncio.run(run()) == 10
    assert plain.late == frozenset()  # the three cut off did not miss a deadline


def test_a_missed_deadline_lasts_until_the_agent_shows_life() -> None:
    clock = Clock()
    tracker = LivenessTracker(timeout=60, clock=clock)
    assert tracker.alive("silent")  # never heard of: judged by its answers
    tracker.missed("silent")
    assert not tracker.alive("silent")
    assert tracker.alive("silent", forgive_late=True)
    tracker.touch("silent")  # any verified message
    assert tracker.alive("silent")
    tracker.update("a1", AgentStatus(state=Liveness.ONLINE))
    clock.now = 59.0
    tracker.touch("a1")  # not a status, but a sign of life: the heartbeat timeout restarts
    clock.now = 100.0
    assert tracker.alive("a1")
