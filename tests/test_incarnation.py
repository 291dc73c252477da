"""A trainer follows the aggregator's incarnation (``roles/trainer/follow.py``): a new one is
joined, the one it left is never followed back, and only a signed ``revoked`` refusal stops
it."""

from __future__ import annotations

import asyncio

import pytest

from agent.errors import AgentRevokedError
from agent.messages.bodies import JoinRejected, RejectCode
from agent.roles.trainer.follow import Follower

pytestmark = pytest.mark.timeout(10)


def test_a_new_incarnation_is_followed_and_an_old_one_never_again() -> None:
    follow = Follower("a1", signed=True)
    assert follow.is_new("aaaa")  # before any admission: join it
    follow.admitted_by("aaaa")
    assert not follow.is_new("aaaa")
    assert not follow.is_new("")  # an aggregator that does not say
    assert follow.is_new("bbbb")  # restarted: rejoin
    follow.admitted_by("bbbb")
    assert not follow.is_new("aaaa")  # a stale retained status of the dead process


async def test_only_a_signed_revoked_refusal_stops_the_trainer() -> None:
    revoked = JoinRejected(agent_id="a1", reason="revoked", code=RejectCode.REVOKED)
    unsigned = Follower("a1", signed=False)
    unsigned.rejected(revoked, aggregator="aggregator")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(unsigned.stop_when_revoked(), 0.1)
    signed = Follower("a1", signed=True)
    signed.rejected(
        JoinRejected(agent_id="a1", reason="x", code=RejectCode.PLUGIN_MISMATCH),
        aggregator="aggregator",
    )
    signed.rejected(revoked, aggregator="aggregator")
    with pytest.raises(AgentRevokedError) as stopped:
        await signed.stop_when_revoked()
    assert stopped.value.exit_code == 78
