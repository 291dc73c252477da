"""The shared receive budget of chunk uploads (``runtime.credit_pool``): whatever the number of
senders, the chunks granted and not yet kept stay within ``[transfer] in_flight``, every
transfer keeps progressing, and a transfer that ends gives its credit back; through the real
``Outbox`` + ``Credits`` and ``Dispatcher``, and over real brokers."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusMessage
from agent.config import TransferConfig
from agent.messages import Kind, topics
from agent.messages.bodies import ChunkAck, ModelUpdate
from agent.messages.chunks import is_chunk
from agent.messages.tensors import to_tensors
from agent.plugin.loader import CheckedPlugin
from agent.runtime.credit_pool import STALL, CreditPool
from agent.runtime.credits import Credits
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy
from agent.runtime.outbox import Outbox
from agent.runtime.reassembly import Limits, Pending, Reassembly, Transfer
from tests.helpers import (
    LOOSE,
    Recorder,
    SizedToy,
    aggregator_config,
    federate_over,
    trainer_config,
)

pytestmark = pytest.mark.timeout(60)

CHUNK = 64 * 1024


def test_the_pool_bounds_chunks_in_flight_across_many_senders_and_starves_none() -> None:
    """40 senders of 12 chunks each against a budget of 5 chunks, chunks kept in a random
    order across senders: never more than 5 granted and not kept, never more than
    ``per_transfer`` for one sender, and every transfer completes."""
    pool: CreditPool[int] = CreditPool(5 * 10, per_transfer=3)
    rng = random.Random(7)
    count = 12
    for key in range(40):
        pool.open(key, chunk_size=10, count=count)
    allowed = dict.fromkeys(range(40), 0)  # what each sender was told
    sent = dict.fromkeys(range(40), 0)
    kept = dict.fromkeys(range(40), 0)
    wire: list[int] = []  # senders' chunks on their way
    done: set[int] = set()
    for _ in range(10_000):
        for key in pool.due():
            grant = pool.get(key)
            assert grant is not None
            allowed[key] = grant.announced
        for key in range(40):  # each sender sends what it was granted
            while sent[key] < allowed[key]:
                sent[key] += 1
                wire.append(key)
        assert len(wire) <= 5
        assert all(sent[k] - kept[k] <= 3 for k in range(40))
        if not wire:
            break
        key = wire.pop(rng.randrange(len(wire)))
        kept[key] += 1
        pool.kept(key, kept[key])
        if kept[key] == count:
            pool.close(key)
            done.add(key)
    assert done == set(range(40))
    assert pool.in_flight == 0
    assert pool.peak <= 5 * 10


def test_a_transfer_that_ends_gives_its_credit_to_the_others() -> None:
    """A holds the whole budget; once it is dropped (its chunks never came), B is granted."""
    pool: CreditPool[str] = CreditPool(2 * 10, per_transfer=2)
    pool.open("A", chunk_size=10, count=5)
    assert pool.due() == ["A"]
    pool.open("B", chunk_size=10, count=5)
    assert pool.due() == []
    grant_b = pool.get("B")
    assert grant_b is not None
    assert grant_b.granted == 0
    pool.close("A")
    assert pool.due() == ["B"]
    assert grant_b.granted == 2
    assert pool.in_flight == 20


def test_by_default_one_sender_may_fill_the_budget_and_several_share_it() -> None:
    """Without a per-transfer cap, a sender alone is granted the whole budget (32 chunks,
    well beyond the 8 a fixed window allowed); three senders share it round robin."""
    pool: CreditPool[str] = CreditPool(32 * 10)
    pool.open("A", chunk_size=10, count=100)
    assert pool.due() == ["A"]
    alone = pool.get("A")
    assert alone is not None
    assert alone.granted == 32
    for key in "BC":
        pool.open(key, chunk_size=10, count=100)
    pool.kept("A", 32)  # A's window comes back: the three now share the budget
    pool.due()
    granted = [g.outstanding for g in map(pool.get, "ABC") if g is not None]
    assert sum(granted) == 32
    assert max(granted) - min(granted) <= 1


def test_a_budget_below_one_chunk_still_lets_every_transfer_progress() -> None:
    """A 1-byte budget grants one chunk at a time, never none."""
    pool: CreditPool[str] = CreditPool(1)
    for key in "AB":
        pool.open(key, chunk_size=10, count=2)
    order = []
    for _ in range(4):
        (key,) = pool.due()
        order.append(key)
        grant = pool.get(key)
        assert grant is not None
        assert grant.outstanding == 1
        pool.kept(key, grant.kept + 1)
    assert sorted(order) == ["A", "A", "B", "B"]


class Wire:
    """A bus for the senders: every publish lands in the receiver's queue. Counts the chunk
    frames published and not yet kept by ``reassembly`` (its ``add`` wrapped)."""

    def __init__(self, reassembly: Reassembly) -> None:
        self.queue: asyncio.Queue[BusMessage] = asyncio.Queue()
        self.sent = self.kept = self.peak = 0
        add = reassembly.add

        def counted(*a: Any, **k: Any) -> Transfer | None:
            transfer = add(*a, **k)
            if transfer is not None:
                self.kept += 1
            return transfer

        reassembly.add = counted  # type: ignore[method-assign]

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if is_chunk(payload):
            self.sent += 1
            self.peak = max(self.peak, self.sent - self.kept)
        self.queue.put_nowait(BusMessage(topic, payload))


async def test_twelve_senders_share_one_budget_through_outbox_and_dispatcher() -> None:
    """12 real ``Outbox``es with ``Credits`` upload 10-chunk updates at once to one
    ``Dispatcher`` whose acknowledgements carry the shared grant (3 chunks): every update
    arrives, and never more than 3 chunks were on their way (without the pool each sender
    could have had 8 in flight: 96)."""
    registry = ListenerRegistry()
    rec = Recorder()
    registry.register(Kind.MODEL_UPDATE, rec, rounds=RoundPolicy.CURRENT)
    senders = [f"a{i}" for i in range(12)]
    credits = {a: Credits(wait=20.0) for a in senders}

    async def ack(transfer: Transfer, kept: int) -> None:
        body = ChunkAck(transfer=transfer.manifest.transfer, received=kept, grant=transfer.grant)
        await credits[transfer.sender].on_ack(body)

    dispatcher = Dispatcher(
        federation="fed",
        registry=registry,
        current_round=lambda: 1,
        max_payload=1 << 20,
        transfer=Limits(in_flight=3 * CHUNK),
        on_chunk=ack,
    )
    wire = Wire(dispatcher.reassembly)
    weights = [np.ones(10 * CHUNK // 4, np.float32)]
    body = ModelUpdate(model_version=1, num_examples=1, tensors=to_tensors(weights))

    async def upload(agent_id: str) -> None:
        outbox = Outbox(wire, federation="fed", sender=agent_id, chunk_size=CHUNK)  # type: ignore[arg-type]
        outbox.credits = credits[agent_id]
        await outbox.send(topics.UPDATE, body, round=1, agent_id=agent_id)

    async def receive() -> None:
        while len(rec.seen) < len(senders):
            await dispatcher.dispatch(await wire.queue.get())

    async with asyncio.timeout(40), asyncio.TaskGroup() as tg:
        for agent_id in senders:
            tg.create_task(upload(agent_id))
        tg.create_task(receive())
    assert sorted(m.sender for m in rec.seen) == sorted(senders)
    assert wire.sent == 12 * 10
    assert wire.peak <= 3
    pool = dispatcher.reassembly.credit
    assert pool is not None
    assert pool.peak <= 3 * CHUNK
    assert pool.in_flight == 0


@pytest.mark.broker
async def test_over_a_real_broker_the_cohort_never_has_more_than_the_budget_in_flight(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 trainers upload 19-chunk updates through a real broker to an aggregator whose
    ``[transfer] in_flight`` is 2 chunks: the round has every survivor, and the chunks the
    trainers published and the aggregator had not kept were never more than 2."""
    chunks = TransferConfig(chunk_size=CHUNK, timeout=30.0, in_flight=2 * CHUNK)
    counts = {"sent": 0, "kept": 0, "peak": 0}
    settle = Reassembly.settle

    def counted(self: Reassembly, pending: Pending, *, kept: bool) -> Transfer | None:
        transfer = settle(self, pending, kept=kept)
        if transfer is not None and "/update/" in transfer.topic:
            counts["kept"] += 1
        return transfer

    def sending(topic: str, payload: bytes) -> list[tuple[str, bytes, float]]:
        counts["sent"] += 1
        counts["peak"] = max(counts["peak"], counts["sent"] - counts["kept"])
        return [(topic, payload, 0.0)]

    monkeypatch.setattr(Reassembly, "settle", counted)
    agents = [f"a{i}" for i in range(6)]
    plugins = {
        a: CheckedPlugin("toy", SizedToy(i + 1, 1, [(600, 500), (7,)]))
        for i, a in enumerate(agents)
    }
    config = msgspec.structs.replace(
        aggregator_config(
            broker.url, tmp_path, agents=6, rounds=1, round_timeout=30.0, robust=LOOSE
        ),
        transfer=chunks,
    )
    summary, _ = await federate_over(
        broker.url,
        plugins,
        config,
        lambda a: msgspec.structs.replace(trainer_config(a, broker.url, tmp_path), transfer=chunks),
        wrap=dict.fromkeys(agents, sending),
    )
    (record,) = summary.rounds
    assert record.survivors == agents
    assert counts["sent"] == 6 * 19
    assert counts["peak"] <= 2


def test_credit_held_by_chunks_lost_on_the_way_is_written_off_after_a_stall() -> None:
    """A's granted chunks never arrive: after ``STALL`` seconds without progress its credit
    goes to B, and A's late chunks then refund nothing twice."""
    pool: CreditPool[str] = CreditPool(2 * 10, per_transfer=2)
    pool.open("A", chunk_size=10, count=5, now=0.0)
    assert pool.due(now=0.0) == ["A"]
    pool.open("B", chunk_size=10, count=5, now=1.0)
    assert pool.due(now=1.0 + STALL / 2) == []
    assert pool.due(now=1.0 + 2 * STALL) == ["B"]
    assert pool.in_flight == 20
    pool.kept("A", 2, now=1.0 + 2 * STALL)  # the lost chunks came late after all
    assert pool.in_flight == 20
