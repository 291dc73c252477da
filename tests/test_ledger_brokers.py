"""The round ledger over each real broker: a trainer keeps a signed model whose records
chain, and refuses one that an aggregator-signed fork of the same run carries."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus import BusSettings
from agent.bus.url import bus_from_url
from agent.config import AggregatorConfig
from agent.identity import ca
from agent.identity.local import Credentials
from agent.ledger.book import RoundLedger
from agent.messages import topics
from agent.messages.bodies import GlobalModel
from agent.messages.kinds import Kind
from agent.messages.tensors import digest, to_tensors
from agent.role import Role
from agent.roles.aggregator.ledger_replies import LedgerReplies
from agent.roles.trainer import Trainer
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security
from agent.runtime.outbox import Outbox
from tests.helpers import identity_files, toy, trainer_config

pytestmark = [pytest.mark.timeout(60), pytest.mark.broker]
WAIT = 10.0  # bound for what should happen promptly; never asserted as a duration


async def _model(book: RoundLedger, version: int, value: float) -> GlobalModel:
    weights = [w + value for w in toy(0, 1).get_weights()]
    tensors = to_tensors(weights)
    tail: tuple[bytes, ...] = ()
    for r in range(version + 1):
        tail = await book.append(
            round=r,
            cohort=[],
            survivors=[],
            dropouts=[],
            model_version=r,
            model_sha256=digest(tensors),
        )
    return GlobalModel(version=version, sha256=digest(tensors), tensors=tensors, ledger=[*tail])


async def test_a_trainer_refuses_a_model_whose_record_does_not_chain(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Model 1 of ledger A is kept; model 3 of a fork (same run id, signed by the same
    aggregator) is dropped with reason ledger_broken; model 3 of ledger A is kept."""
    authority = ca.init_ca("fed")
    pki = tmp_path / "pki"
    agg = Credentials.load(
        identity_files(authority, "aggregator", Role.AGGREGATOR, pki),
        agent_id="aggregator",
        federation="fed",
    )
    config = msgspec.structs.replace(
        trainer_config("a1", broker.url, tmp_path),
        identity=identity_files(authority, "a1", Role.TRAINER, pki),
    )
    good = RoundLedger(tmp_path / "a", agg.signer, AggregatorConfig())
    fork = RoundLedger(tmp_path / "b", agg.signer, AggregatorConfig(), run_id=good.run_id)
    first = await _model(good, 1, 1.0)
    forged = await _model(fork, 3, 2.0)

    def settings(name: str) -> BusSettings:
        return BusSettings(name, backoff_initial=0.05, backoff_max=0.3)

    async with (
        bus_from_url(broker.url, settings("a1")) as bus,
        bus_from_url(broker.url, settings("agg")) as agg_bus,
    ):
        trainer = Trainer(config=config, bus=bus, plugin=toy(1.0, 1))
        outbox = Outbox(agg_bus, federation="fed", sender="aggregator", signer=agg.signer)
        task = asyncio.create_task(trainer.run())
        try:
            await asyncio.wait_for(trainer.ready.wait(), WAIT)
            await agg_bus.wait_connected(timeout=WAIT)

            async def until(version: int) -> None:
                while trainer.model is None or trainer.model.version < version:
                    await asyncio.sleep(0.05)

            with capture_logs() as logs:
                await outbox.send(topics.GLOBAL_MODEL, first, round=1)
                await asyncio.wait_for(until(1), WAIT)
                await outbox.send(topics.GLOBAL_MODEL, forged, round=3)
                async with asyncio.timeout(WAIT):
                    while not any(e.get("reason") == "ledger_broken" for e in logs):
                        await asyncio.sleep(0.05)
                assert trainer.model is not None
                assert trainer.model.version == 1
                tail: tuple[bytes, ...] = ()
                for r in (2, 3):
                    tail = await good.append(
                        round=r,
                        cohort=[],
                        survivors=[],
                        dropouts=[],
                        model_version=r,
                        model_sha256=first.sha256,
                    )
                third = msgspec.structs.replace(first, version=3, ledger=[*tail])
                await outbox.send(topics.GLOBAL_MODEL, third, round=3)
                await asyncio.wait_for(until(3), WAIT)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_trainer_more_than_a_tail_behind_catches_up_over_the_bus(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A trainer that holds record 1 and is sent the model of record 21 (its tail: the last
    8) asks the aggregator for the records after its head (a signed ledger_request, the
    signed answer on its inbox), checks the whole chain and keeps the model."""
    authority = ca.init_ca("fed")
    pki = tmp_path / "pki"
    agg = Credentials.load(
        identity_files(authority, "aggregator", Role.AGGREGATOR, pki),
        agent_id="aggregator",
        federation="fed",
    )
    config = msgspec.structs.replace(
        trainer_config("a1", broker.url, tmp_path),
        identity=identity_files(authority, "a1", Role.TRAINER, pki),
    )
    book = RoundLedger(tmp_path / "agg", agg.signer, AggregatorConfig())
    first = await _model(book, 1, 1.0)
    tail: tuple[bytes, ...] = ()
    for r in range(2, 22):
        tail = await book.append(
            round=r,
            cohort=[],
            survivors=[],
            dropouts=[],
            model_version=r,
            model_sha256=first.sha256,
        )
    late = msgspec.structs.replace(first, version=21, ledger=[*tail])
    assert len(late.ledger) < 20  # the tail alone does not reach record 1

    async with (
        bus_from_url(broker.url, BusSettings("a1", backoff_initial=0.05)) as bus,
        bus_from_url(broker.url, BusSettings("agg", backoff_initial=0.05)) as agg_bus,
    ):
        trainer = Trainer(config=config, bus=bus, plugin=toy(1.0, 1))
        outbox = Outbox(agg_bus, federation="fed", sender="aggregator", signer=agg.signer)
        listeners = ListenerRegistry()
        replies = LedgerReplies(book, outbox)
        listeners.register(Kind.LEDGER_REQUEST, replies.on_request, rounds=RoundPolicy.ANY)
        serving = Dispatcher(
            federation="fed",
            registry=listeners,
            current_round=lambda: 21,
            max_payload=1 << 20,
            security=Security(agg.verifier()),
        )
        await agg_bus.subscribe(topics.LEDGER.filter("fed"))
        tasks = [asyncio.create_task(trainer.run()), asyncio.create_task(serving.run(agg_bus))]
        try:
            await asyncio.wait_for(trainer.ready.wait(), WAIT)
            await agg_bus.wait_connected(timeout=WAIT)

            async def until(version: int) -> None:
                while trainer.model is None or trainer.model.version < version:
                    await asyncio.sleep(0.05)

            await outbox.send(topics.GLOBAL_MODEL, first, round=1)
            await asyncio.wait_for(until(1), WAIT)
            with capture_logs() as logs:
                await outbox.send(topics.GLOBAL_MODEL, late, round=21)
                await asyncio.wait_for(until(21), WAIT)
            assert any(e["event"] == "ledger_caught_up" for e in logs)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
