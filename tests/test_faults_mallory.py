"""Mallory, an enrolled device running a modified trainer (a separate process), against a
real mosquitto: in plain rounds its huge, NaN, overweight and shifted updates are refused,
each with its reason; under SecAgg+ its input shifted by 2^31 after masking aborts the round
(``secagg_aborted reason=out_of_range``) and the model in force stays; its forged evaluation
results never reach metrics.json. The final accuracy is within 2 points of the same run
without mallory. The long runs (both brokers, more rounds, every attack under SecAgg+) are
``python bench/faults.py mallory``."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fault_scenarios.mallory import compare

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


def _check(result: dict, *, refused: int, aborted: int) -> None:
    assert result["ok"], result
    assert result["stored_accuracies_in_range"]
    assert len(result["updates_refused"]) == refused, result
    assert len(result["rounds_aborted"]) == aborted, result
    assert all(reason for _, reason in result["updates_refused"] + result["rounds_aborted"])


async def test_mallory_in_plain_rounds(tmp_path: Path) -> None:
    """Every attack refused with its reason; the accuracy is the honest run's."""
    result = await compare(
        "mqtt",
        secure=False,
        honest=3,
        rounds=4,
        attacks="huge,nan,overweight,shifted",
        where=tmp_path,
    )
    _check(result, refused=4, aborted=0)
    reasons = {reason for _, reason in result["updates_refused"]}
    assert reasons == {"norm_above_bound", "not_finite", "weight_above_declared"}
    assert result["accuracy_with_mallory"] == pytest.approx(result["accuracy_without_mallory"])


async def test_mallory_under_secagg(tmp_path: Path) -> None:
    """+2^31 after masking aborts round 1 with out_of_range; the rounds after it train, and
    mallory's forged metrics are refused every time it evaluates."""
    result = await compare(
        "mqtt", secure=True, honest=3, rounds=4, attacks="shifted,none,none,none", where=tmp_path
    )
    _check(result, refused=0, aborted=1)
    assert result["rounds_aborted"] == [(1, "out_of_range")]
    assert result["metrics_refused"]
