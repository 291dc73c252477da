"""Mutated payloads (of valid signed and sealed messages: bit flips, truncation, splices,
re-signed envelopes and bodies, foreign keys and certificates, wrong topics, hostile values)
through the aggregator's real receive pipeline: no crash, no traceback, every drop a reason.
The long run is ``python bench/faults.py mutation``."""

from __future__ import annotations

import pytest

from bench.fault_scenarios.mutation import fuzz

pytestmark = pytest.mark.timeout(60)


async def test_500_mutated_payloads_are_dropped_or_refused_with_a_reason() -> None:
    result = await fuzz(500, seed=14)
    assert result["crashes"] == 0, result["examples"]
    assert result["tracebacks"] == 0, result["examples"]
    assert result["drops_without_reason"] == 0
    assert result["ok"]
    # the mutations reach every layer: the envelope, the signature, the seal, the round
    for reason in ("malformed", "bad_signature", "unknown_signer", "wrong_topic", "unsealable"):
        assert result["dropped"].get(reason, 0) > 0, result["dropped"]
    assert sum(result["refused"].values()) > 0
