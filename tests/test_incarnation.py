"""A trainer follows the aggregator's incarnation (``roles/trainer/follow.py``): a new one is
joined, the one it left is never followed back, and only a signed ``revoked`` refusal stops
it."""

from __future__ import annotations

import asyncio

import pytest

from agent.errors import AgentRevokedError
from agent.messages.bodies import JoinAccepted, JoinRejected, RejectCode
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


def test_an_earlier_join_accepted_of_the_admission_held_is_stale() -> None:
    """A copy resent or replayed after the current admission must not take the trainer back
    to its round (and model); another run's or incarnation's admission is followed."""
    follow = Follower("a1", signed=False)
    follow.admitted_by("aaaa", run_id="r1", round=5)

    def accepted(incarnation: str, run_id: str, round_: int) -> JoinAccepted:
        return JoinAccepted(agent_id="a1", round=round_, incarnation=incarnation, run_id=run_id)

    assert follow.stale(accepted("aaaa", "r1", 3))
    assert not follow.stale(accepted("aaaa", "r1", 5))
    assert not follow.stale(accepted("aaaa", "r2", 0))  # the next run
    assert not follow.stale(accepted("bbbb", "r1", 0))  # a new aggregator
    assert not follow.stale(accepted("", "", 0))  # one that does not say


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
