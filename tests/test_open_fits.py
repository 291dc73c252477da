"""The fits open in async mode (``roles.aggregator.training.OpenFits``): one per agent, closed
by an update from the version it was sent, given up when late, gone or admitted again."""

from __future__ import annotations

import pytest

from agent.errors import RefusedError
from agent.roles.aggregator.records import AgentRecord
from agent.roles.aggregator.training import OpenFits


def test_an_update_closes_only_the_fit_of_the_version_sent() -> None:
    fits, admitted = OpenFits(), {"a": AgentRecord(10, 0.0), "b": AgentRecord(10, 0.0)}
    fits.start(["a", "b"], version=3, deadline=100.0, admitted=admitted)
    with pytest.raises(RefusedError) as wrong:
        fits.close("a", 2)
    assert wrong.value.reason == "wrong_model_version"
    assert "a" in fits  # a refused update leaves the fit open
    assert fits.close("a", 3).base_version == 3
    with pytest.raises(RefusedError) as again:
        fits.close("a", 3)
    assert again.value.reason == "not_training"
    assert list(fits) == ["b"]
    assert fits.versions() == {3}


def test_late_gone_and_readmitted_fits_are_given_up_and_only_late_ones_returned() -> None:
    first = {a: AgentRecord(10, 0.0) for a in ("late", "gone", "back", "fine")}
    fits = OpenFits()
    fits.start(["late"], version=1, deadline=5.0, admitted=first)
    fits.start(["gone", "back", "fine"], version=2, deadline=50.0, admitted=first)
    now_admitted = {**first, "back": AgentRecord(10, 7.0)}  # it restarted and joined again
    late = fits.give_up(now=10.0, alive={"late", "back", "fine"}, admitted=now_admitted)
    assert late == ["late"]
    assert list(fits) == ["fine"]
    assert len(fits) == 1
    assert fits.get("gone") is None
