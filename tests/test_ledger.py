"""The round ledger (agent.ledger): every round of an identity federation is a signed,
hash-chained record; ``fedbus ledger verify`` names the first tampered, dropped or reordered
record; a trainer refuses a model whose record does not chain to the head it holds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from agent.config import AggregatorConfig
from agent.errors import ConfigError, LedgerChainError, LedgerRecordError
from agent.identity import ca
from agent.identity.local import Credentials
from agent.ledger.book import RoundLedger
from agent.ledger.head import HEAD_FILE, LedgerHead
from agent.ledger.record import canonical_json
from agent.ledger.store import ledger_dir
from agent.ledger.verify import verify_ledger
from agent.messages.bodies import GlobalModel
from agent.messages.envelope import Message, new_envelope
from agent.messages.kinds import Kind
from agent.messages.tensors import digest, to_tensors
from agent.role import Role
from agent.roles.trainer.model import ModelStore
from agent.roles.trainer.status import Progress
from tests.helpers import (
    aggregator_config,
    fedbus,
    federate_in_memory,
    identity_files,
    toy,
    trainer_config,
)

pytestmark = pytest.mark.timeout(60)


def _signer(authority: ca.CertificateAuthority, where: Path) -> Credentials:
    files = identity_files(authority, "aggregator", Role.AGGREGATOR, where)
    return Credentials.load(files, agent_id="aggregator", federation="fed")


async def _ledger(tmp_path: Path, rounds: int) -> tuple[ca.CertificateAuthority, list[bytes]]:
    authority = ca.init_ca("fed")
    book = RoundLedger(tmp_path, _signer(authority, tmp_path / "pki").signer, AggregatorConfig())
    tail: tuple[bytes, ...] = ()
    for r in range(rounds + 1):
        tail = await book.append(
            round=r,
            cohort=["a2", "a1"] if r else [],
            survivors=["a1"] if r else [],
            dropouts=["a2"] if r else [],
            model_version=r,
            model_sha256=f"{r:064x}",
        )
    return authority, list(tail)


async def test_a_ledger_verifies_and_names_a_tampered_byte(tmp_path: Path) -> None:
    """Five records verify; flipping one byte anywhere in record 2 (entry, certificate or
    signature) makes ``verify_ledger`` name record 2, and records 0-1 still count."""
    authority, _ = await _ledger(tmp_path, 4)
    verdict = verify_ledger(tmp_path, authority.cert)
    assert verdict.ok
    assert verdict.records == 5
    assert verdict.head is not None
    assert verdict.head.entry.round == 4
    path = ledger_dir(tmp_path) / "00000002.rec"
    original = path.read_bytes()
    for offset in (5, len(original) // 2, len(original) - 3):
        tampered = bytearray(original)
        tampered[offset] ^= 0x01
        path.write_bytes(bytes(tampered))
        verdict = verify_ledger(tmp_path, authority.cert)
        assert verdict.bad == path, offset
        assert verdict.records == 2
        assert verdict.reason in ("ledger_bad_record", "ledger_broken")
    path.write_bytes(original)
    assert verify_ledger(tmp_path, authority.cert).ok


async def test_a_dropped_or_reordered_record_is_named(tmp_path: Path) -> None:
    """Deleting record 2 names the file after the gap; swapping 1 and 3 names record 1."""
    authority, _ = await _ledger(tmp_path, 4)
    directory = ledger_dir(tmp_path)
    one, three = directory / "00000001.rec", directory / "00000003.rec"
    a, b = one.read_bytes(), three.read_bytes()
    one.write_bytes(b)
    three.write_bytes(a)
    verdict = verify_ledger(tmp_path, authority.cert)
    assert (verdict.bad, verdict.reason) == (one, "ledger_broken")
    one.write_bytes(a)
    three.write_bytes(b)
    (directory / "00000002.rec").unlink()
    verdict = verify_ledger(tmp_path, authority.cert)
    assert (verdict.bad, verdict.reason, verdict.records) == (three, "ledger_broken", 2)


async def test_another_ca_or_a_trainer_signature_is_refused(tmp_path: Path) -> None:
    """A ledger checked against another CA fails at record 0; so does one a trainer signed."""
    authority, _ = await _ledger(tmp_path, 1)
    assert verify_ledger(tmp_path, ca.init_ca("fed").cert).reason == "ledger_bad_record"
    trainer = Credentials.load(
        identity_files(authority, "t1", Role.TRAINER, tmp_path / "t"),
        agent_id="t1",
        federation="fed",
    )
    other = tmp_path / "other"
    book = RoundLedger(other, trainer.signer, AggregatorConfig())
    await book.append(
        round=0, cohort=[], survivors=[], model_version=0, model_sha256="0" * 64, dropouts=[]
    )
    assert verify_ledger(other, authority.cert).reason == "ledger_bad_record"


async def test_an_aggregator_refuses_a_ledger_another_ca_signed(tmp_path: Path) -> None:
    """Reopened under a new CA (a state_dir left by another federation), the ledger is a
    ConfigError naming the directory, not a run whose every model the agents refuse (a
    second ``fedbus demo`` in the same report dir did that); under its own CA it opens."""
    authority, _ = await _ledger(tmp_path, 2)
    ours = _signer(authority, tmp_path / "ours")
    assert RoundLedger(tmp_path, ours.signer, AggregatorConfig(), ca=authority.cert)
    other = _signer(ca.init_ca("fed"), tmp_path / "new")
    with pytest.raises(ConfigError, match="does not verify against this aggregator's CA") as err:
        RoundLedger(tmp_path, other.signer, AggregatorConfig(), ca=other.ca)
    assert str(ledger_dir(tmp_path)) in str(err.value)
    assert RoundLedger(tmp_path / "fresh", other.signer, AggregatorConfig(), ca=other.ca)


async def test_a_round_rerun_after_a_crash_supersedes_its_first_record(tmp_path: Path) -> None:
    """An aggregator killed after round 2's record but before its commit resumes the run:
    the resumed incarnation restates round 1 and re-runs round 2, each as the next attempt
    of its round; the ledger verifies and counts the two superseded records. A record that
    claims a first attempt for a round its run already recorded is named."""
    authority = ca.init_ca("fed")
    signer = _signer(authority, tmp_path / "pki").signer

    async def append(book: RoundLedger, r: int) -> None:
        await book.append(
            round=r, cohort=[], survivors=[], dropouts=[], model_version=r, model_sha256="0" * 64
        )

    first = RoundLedger(tmp_path, signer, AggregatorConfig(), run_id="run1")
    for r in (0, 1, 2):  # 2: recorded, then the process dies before the round commits
        await append(first, r)
    resumed = RoundLedger(tmp_path, signer, AggregatorConfig(), run_id="run1")
    await append(resumed, 1)  # the model this incarnation starts from
    await append(resumed, 2)  # the re-run round
    verdict = verify_ledger(tmp_path, authority.cert)
    assert verdict.ok, verdict.detail
    assert verdict.head is not None
    assert (verdict.head.entry.round, verdict.head.entry.attempt) == (2, 2)
    assert verdict.superseded == 2
    forged = RoundLedger(tmp_path, signer, AggregatorConfig(), run_id="run1")
    forged._attempts.clear()  # an aggregator that does not say it re-ran round 2
    await append(forged, 2)
    verdict = verify_ledger(tmp_path, authority.cert)
    assert (verdict.bad, verdict.reason) == (ledger_dir(tmp_path) / "00000005.rec", "ledger_broken")


def test_the_cli_names_the_bad_record(tmp_path: Path) -> None:
    """``fedbus ledger verify`` exits 0 on a good ledger and 1 naming the bad file."""
    _authority, _ = asyncio.run(_ledger(tmp_path, 2))
    ca_file = tmp_path / "pki" / "ca.pem"
    good = fedbus("ledger", "verify", str(tmp_path), "--ca", str(ca_file), "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["records"] == 3
    path = ledger_dir(tmp_path) / "00000001.rec"
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    bad = fedbus("ledger", "verify", str(tmp_path), "--ca", str(ca_file))
    assert bad.returncode == 1
    assert "00000001.rec" in bad.stderr


def test_canonical_json_sorts_keys() -> None:
    assert canonical_json({"b": 1, "a": [2, {"d": 0, "c": 1}]}) == '{"a":[2,{"c":1,"d":0}],"b":1}'


async def test_a_head_accepts_only_what_chains(tmp_path: Path) -> None:
    """A head held at record 2 accepts the tail up to 4 and refuses a same-run fork, a
    tampered record and a tail naming another model; it persists across restarts."""
    authority, tail = await _ledger(tmp_path / "a", 4)
    head = LedgerHead(tmp_path / HEAD_FILE, authority.cert)
    head.advance(head.check(tail[:3], version=2, sha256=f"{2:064x}"))
    assert LedgerHead(tmp_path / HEAD_FILE, authority.cert).head == head.head
    assert head.check(tail[3:], version=4, sha256=f"{4:064x}").entry.index == 4
    with pytest.raises(LedgerChainError):
        head.check(tail[4:], version=4, sha256=f"{3:064x}")
    with pytest.raises(LedgerChainError):
        head.check(tail[4:], version=4, sha256=f"{4:064x}")  # record 3 missing
    with pytest.raises(LedgerChainError):
        head.check([], version=4, sha256=f"{4:064x}")
    tampered = bytearray(tail[4])
    tampered[len(tampered) // 3] ^= 1
    with pytest.raises((LedgerRecordError, LedgerChainError)):
        head.check([tail[3], bytes(tampered)], version=4, sha256=f"{4:064x}")


def _model_message(
    version: int, weights: list[object], ledger: list[bytes]
) -> Message[GlobalModel]:
    tensors = to_tensors(weights)  # type: ignore[arg-type]
    body = GlobalModel(version=version, sha256=digest(tensors), tensors=tensors, ledger=ledger)
    envelope = new_envelope(
        kind=Kind.MODEL_PARA, federation="fed", round=version, sender="aggregator", body=b""
    )
    return Message(envelope, body, "fl/fed/model_para/global")


async def test_an_identity_federation_keeps_a_ledger_and_trainers_hold_its_head(
    tmp_path: Path,
) -> None:
    """Two trainers, three rounds, identities on: the aggregator's ledger has 4 records
    (round 0 and three rounds) that verify; each trainer holds the last as its head; a model
    whose records belong to another ledger of the same run is refused (ledger_broken)."""
    authority = ca.init_ca("fed")
    pki = tmp_path / "pki"
    config = aggregator_config("mem://", tmp_path, agents=2, rounds=3, round_timeout=5.0)
    config = msgspec.structs.replace(
        config, identity=identity_files(authority, "aggregator", Role.AGGREGATOR, pki)
    )

    def configure(agent_id: str):  # type: ignore[no-untyped-def]
        files = identity_files(authority, agent_id, Role.TRAINER, pki)
        return msgspec.structs.replace(trainer_config(agent_id, "mem://", tmp_path), identity=files)

    plugins = {"a1": toy(1.0, 1), "a2": toy(3.0, 1)}
    summary, _ = await federate_in_memory(plugins, config, configure)
    assert len(summary.rounds) == 3
    verdict = verify_ledger(config.state_dir, authority.cert)
    assert verdict.ok, verdict
    assert verdict.records == 4
    assert verdict.head is not None
    assert verdict.head.entry.model_sha256 == summary.final_sha256
    assert verdict.head.entry.survivors == ["a1", "a2"]
    for agent_id in plugins:
        head = LedgerHead(tmp_path / agent_id / HEAD_FILE, authority.cert)
        assert head.head is not None
        assert head.head.hash == verdict.head.hash.hex()
    # A forged history: another ledger signed by the same aggregator, same run id.
    held = LedgerHead(tmp_path / "a1" / HEAD_FILE, authority.cert)
    assert held.head is not None
    signer = Credentials.load(config.identity, agent_id="aggregator", federation="fed").signer
    fork = RoundLedger(tmp_path / "fork", signer, config.aggregator, run_id=held.head.run_id)
    weights = [w + 1 for w in toy(0, 1).get_weights()]
    message = _model_message(9, weights, [])  # for its digest
    tail: tuple[bytes, ...] = ()
    for r in range(10):
        tail = await fork.append(
            round=r,
            cohort=[],
            survivors=[],
            dropouts=[],
            model_version=r,
            model_sha256=message.body.sha256,
        )
    store = ModelStore(progress=Progress(), wait=1.0, path=tmp_path / "m.npz", ledger=held)
    with capture_logs() as logs:
        await store.on_model(_model_message(9, weights, list(tail)))
    assert store.held is None
    assert any(e.get("reason") == "ledger_broken" for e in logs), logs


async def test_a_newer_run_starts_over_and_an_older_one_is_refused(tmp_path: Path) -> None:
    """A head of run B refuses run A's older records; run C, newer, with no link to the
    head, is taken as a new start."""
    authority, old_run = await _ledger(tmp_path / "a", 2)
    signer = _signer(authority, tmp_path / "pki2").signer
    book = RoundLedger(tmp_path / "b", signer, AggregatorConfig())
    b = await book.append(
        round=0, cohort=[], survivors=[], dropouts=[], model_version=0, model_sha256="0" * 64
    )
    head = LedgerHead(tmp_path / HEAD_FILE, authority.cert)
    head.advance(head.check(b, version=0, sha256="0" * 64))
    with pytest.raises(LedgerChainError):
        head.check(old_run, version=2, sha256=f"{2:064x}")
    book_c = RoundLedger(tmp_path / "c", signer, AggregatorConfig())
    c = await book_c.append(
        round=0, cohort=[], survivors=[], dropouts=[], model_version=0, model_sha256="1" * 64
    )
    assert head.check(c, version=0, sha256="1" * 64).entry.run_id == book_c.run_id
