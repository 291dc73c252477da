"""A repeated join is cheap to answer (``roles.aggregator.admission``,
``roles.trainer.attempt``): retries of one join attempt get the model once; a rejoin that
holds the model in force is not sent it again; a held model that is not it is dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.messages.bodies import JoinAccepted, JoinRequest
from agent.messages.codec import decode, encode
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.admission import Admission
from agent.roles.aggregator.records import GlobalState
from agent.roles.trainer import Trainer
from agent.roles.trainer.attempt import JoinAttempts, keeps
from agent.roles.trainer.model import HeldModel
from agent.runtime.outbox import Outbox
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


class Sent:
    """An outbox that records the kinds it sends."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    async def try_send(self, spec: Any, body: Any, **_: Any) -> int:
        self.kinds.append(type(body).__name__)
        return 1


async def test_a_rejoin_holding_the_model_in_force_is_not_sent_it_but_is_replayed() -> None:
    state = GlobalState.of(2, [np.zeros(3, dtype=np.float32)])
    outbox, replayed = Sent(), []

    async def replay(agent_id: str) -> None:
        replayed.append(agent_id)

    admission = Admission(
        outbox=cast(Outbox, outbox),
        plugin_name="toy",
        wanted=1,
        seal_key=None,
        current=lambda: (2, state),
        rejoin_interval=0.0,
        on_rejoin=replay,
    )

    async def join(attempt: str, **held: Any) -> list[str]:
        outbox.kinds.clear()
        body = JoinRequest(agent_id="a1", plugin="toy", num_examples=1, attempt=attempt, **held)
        await admission.on_join(decode(encode(body, federation="fed", round=0, sender="a1")))
        return outbox.kinds

    assert await join("x") == ["JoinAccepted", "GlobalModel"]
    assert await join("x") == ["JoinAccepted"]  # a retry
    assert replayed == []
    holds = {"held_version": 2, "held_sha256": state.sha256}
    assert await join("y", **holds) == ["JoinAccepted"]  # a reconnect, model held
    assert replayed == ["a1"]
    assert await join("z") == ["JoinAccepted", "GlobalModel"]  # a reconnect, no model
    assert (admission.answers, admission.models_sent) == (4, 2)
