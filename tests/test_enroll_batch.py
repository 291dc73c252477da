"""Enrollments batched in one registry transaction (``agent.identity.batch``): every request
keeps its own checks and outcome, and a token redeems once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography import x509

from agent.errors import IdentityError
from agent.identity import ca
from agent.identity.batch import EnrollBatcher, Pending, enroll_batch
from agent.identity.registry import Registry
from agent.role import Role

FED = "fed"


def _pending(agent_id: str, token: str, *, cn: str | None = None) -> Pending:
    csr = ca.build_csr(ca.new_key(), agent_id=cn or agent_id, federation=FED)
    return Pending(agent_id, token, csr)


def _signer(authority: ca.CertificateAuthority):  # type: ignore[no-untyped-def]
    def sign(request: Pending) -> x509.Certificate:
        return ca.sign_csr(authority, request.csr, agent_id=request.agent_id, role=Role.TRAINER)

    return sign


def test_a_bad_or_used_token_fails_only_its_own_request(tmp_path: Path) -> None:
    authority = ca.init_ca(FED)
    with Registry.open(tmp_path / "registry.sqlite") as registry:
        tok = {a: registry.create_token(a, 60) for a in ["a", "b", "c", "d", "e", "f"]}
        registry.redeem_token(tok["b"], "b")  # used before its device tries
        batch = [
            _pending("a", tok["a"]),
            _pending("b", tok["b"]),  # used_token
            _pending("c", "not-a-token"),  # bad_token
            _pending("d", tok["d"]),
            _pending("d", tok["d"]),  # the same token twice in one batch: the second fails
            _pending("e", tok["f"]),  # another device's token: wrong_agent
            _pending("f", tok["f"], cn="zz"),  # a CSR naming another id: bad_csr, token used
        ]
        outcomes = enroll_batch(registry, batch, _signer(authority))
        reasons = [o.reason if isinstance(o, IdentityError) else "ok" for o in outcomes]
        assert reasons == [
            "ok",
            "used_token",
            "bad_token",
            "ok",
            "used_token",
            "wrong_agent",
            "bad_csr",
        ]
        assert {r.agent_id for r in registry.agents()} == {"a", "d"}
        with pytest.raises(IdentityError) as used:  # f's token went with its refused CSR
            registry.redeem_token(tok["f"], "f")
        assert used.value.reason == "used_token"
        registry.redeem_token(tok["e"], "e")  # e's own token is still good


async def test_the_batcher_answers_each_request_with_its_own_outcome(tmp_path: Path) -> None:
    authority = ca.init_ca(FED)
    with Registry.open(tmp_path / "registry.sqlite") as registry:
        tok = {f"d{i}": registry.create_token(f"d{i}", 60) for i in range(12)}
        tok["d5"] = "bad"
        batcher = EnrollBatcher(registry, _signer(authority))
        running = asyncio.create_task(batcher.run())
        try:
            async with asyncio.timeout(30):
                results = await asyncio.gather(
                    *(batcher.enroll(_pending(a, t)) for a, t in tok.items()),
                    return_exceptions=True,
                )
        finally:
            running.cancel()
        failed = {a for a, r in zip(tok, results, strict=True) if isinstance(r, IdentityError)}
        assert failed == {"d5"}
        assert sum(batcher.batches) == 12
        assert len(batcher.batches) < 12  # the requests that queued together shared a batch
        assert len(registry.agents()) == 11


def test_fleet_tokens_and_last_seen_are_written_in_one_transaction_each(tmp_path: Path) -> None:
    authority = ca.init_ca(FED)
    with Registry.open(tmp_path / "registry.sqlite") as registry:
        tok = registry.create_tokens(["a", "b"], 60)
        outcomes = enroll_batch(
            registry, [_pending(a, t) for a, t in tok.items()], _signer(authority)
        )
        assert not any(isinstance(o, Exception) for o in outcomes)
        registry.touch_many(["a", "b", "not-registered"])
        assert all(row.last_seen is not None for row in registry.agents())


def test_the_last_seen_batch_pending_at_shutdown_is_flushed(tmp_path: Path) -> None:
    """``enrolled_check`` batches ``last_seen`` (one transaction per 2 s); what is pending when
    the aggregator stops is written by ``flush`` (``run_node`` calls it on exit)."""
    from agent.node import enrolled_check
    from agent.role import Identity

    authority = ca.init_ca(FED)
    with Registry.open(tmp_path / "registry.sqlite") as registry:
        tok = registry.create_tokens(["a"], 60)
        enroll_batch(registry, [_pending(a, t) for a, t in tok.items()], _signer(authority))
        row = registry.agent("a")
        assert row is not None
        check = enrolled_check(registry, flush_every=3600.0)
        assert not check(Identity("a", FED, Role.TRAINER, row.serial))
        assert [r.last_seen for r in registry.agents()] == [None]  # pending
        check.flush()
        assert [r.last_seen is not None for r in registry.agents()] == [True]
