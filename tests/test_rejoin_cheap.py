"""A repeated join is cheap to answer (``roles.aggregator.admission``,
``roles.trainer.attempt``): retries of one join attempt get the model once; a rejoin that
holds the model in force is not sent it again; a held model that is not it is dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.messages.bodies import JoinAccepted
from agent.roles.aggregator import Aggregator
from agent.roles.trainer import Trainer
from agent.roles.trainer.attempt import JoinAttempts, keeps
from agent.roles.trainer.model import HeldModel
from tests.helpers import aggregator_config, toy, trainer_config

pytestmark = pytest.mark.timeout(60)

SHA = "ab" * 32


@pytest.mark.broker
async def test_retried_joins_get_the_model_once_each(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Every join sent three times (the retries of a fleet whose acknowledgements are late),
    and no duplicate window: each retry is answered, but with ``join_accepted`` alone, and
    every agent trains every round."""
    agents = [f"a{i}" for i in range(4)]
    config = aggregator_config(broker.url, tmp_path, agents=len(agents), rounds=2)
    async with bus_from_url(broker.url, BusSettings(client_id="aggregator")) as bus:
        aggregator = Aggregator(
            config=config, bus=bus, plugin_name="toy", initial_weights=toy(0, 1).get_weights()
        )
        aggregator.admission._rejoin_interval = 0.0  # answer every repeat
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_trainer(agent, broker.url, tmp_path)) for agent in agents]
            summary = await aggregator.run()
            for task in tasks:
                task.cancel()
    assert [r.survivors for r in summary.rounds] == [agents, agents]
    assert aggregator.admission.models_sent == len(agents)
    assert aggregator.admission.answers > len(agents)  # the retries were answered


async def _trainer(agent_id: str, url: str, state: Path) -> None:
    async with bus_from_url(url, BusSettings(client_id=agent_id)) as bus:
        trainer = Trainer(config=trainer_config(agent_id, url, state), bus=bus, plugin=toy(1, 1))
        send = trainer._send_join

        async def thrice() -> None:
            for _ in range(3):
                await send()
                await asyncio.sleep(0.05)

        trainer._send_join = thrice  # type: ignore[method-assign]
        await trainer.run()


def _accepted(attempt: str, incarnation: str = "i1", version: int = 3) -> JoinAccepted:
    return JoinAccepted(
        agent_id="a1",
        round=3,
        incarnation=incarnation,
        attempt=attempt,
        version=version,
        sha256=SHA,
    )


def test_a_second_answer_to_the_admitting_attempt_is_ignored_a_new_one_is_not() -> None:
    attempts = JoinAttempts()
    first = attempts.current
    assert not attempts.answered_again(_accepted(first), admitted=False)
    assert attempts.answered_again(_accepted(first), admitted=True)
    assert not attempts.answered_again(_accepted(first, incarnation="i2"), admitted=True)
    attempts.renew()
    assert attempts.current != first
    assert not attempts.answered_again(_accepted(attempts.current), admitted=True)


def test_a_held_model_is_kept_only_if_it_is_the_one_in_force() -> None:
    held = HeldModel(3, SHA, [])
    assert keeps(held, _accepted("x"))
    assert not keeps(held, _accepted("x", version=4))
    assert not keeps(None, _accepted("x"))
    assert not keeps(held, JoinAccepted(agent_id="a1", round=3))  # an older aggregator
