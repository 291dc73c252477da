"""The aggregator's registry: one-time tokens, enrollments, revocation (agent.identity.registry)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import IdentityError
from agent.identity.ca import CertificateAuthority, init_ca, issue, save_ca
from agent.identity.ca_dir import revoke_agent
from agent.identity.certificates import identity_of
from agent.identity.pem import load_certificate
from agent.identity.registry import (
    CRL_FILE,
    REGISTRY_FILE,
    AgentStatus,
    CertStatus,
    Registry,
)
from agent.identity.tokens import hash_token
from agent.role import Role

pytestmark = pytest.mark.timeout(30)
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return init_ca("fed")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry.open(tmp_path / REGISTRY_FILE) as reg:
        yield reg


def enroll(registry: Registry, ca: CertificateAuthority, agent_id: str) -> x509.Certificate:
    _, cert = issue(ca, agent_id)
    registry.record_enrollment(identity_of(cert), cert)
    return cert


def reason(excinfo: pytest.ExceptionInfo[IdentityError]) -> str:
    return excinfo.value.reason


def test_a_token_is_single_use(registry: Registry) -> None:
    """A fresh token redeems once for its agent; the second redemption is `used_token`."""
    token = registry.create_token("a1", 3600)
    registry.redeem_token(token, "a1")
    with pytest.raises(IdentityError) as excinfo:
        registry.redeem_token(token, "a1")
    assert reason(excinfo) == "used_token"


def test_an_expired_token_is_refused_and_not_consumed(registry: Registry) -> None:
    """Past its ttl a token is `expired_token`; just before, it redeems."""
    token = registry.create_token("a1", 60, now=NOW)
    with pytest.raises(IdentityError) as excinfo:
        registry.redeem_token(token, "a1", now=NOW + dt.timedelta(seconds=60))
    assert reason(excinfo) == "expired_token"
    registry.redeem_token(token, "a1", now=NOW + dt.timedelta(seconds=59))


def test_a_token_for_another_agent_is_refused_and_stays_usable(registry: Registry) -> None:
    """A token issued for a1 presented as a2 is `wrong_agent`, and a1 can still use it."""
    token = registry.create_token("a1", 3600)
    with pytest.raises(IdentityError) as excinfo:
        registry.redeem_token(token, "a2")
    assert reason(excinfo) == "wrong_agent"
    registry.redeem_token(token, "a1")


def test_an_unknown_token_is_bad_token(registry: Registry) -> None:
    """A token the registry never issued is `bad_token`; a non-positive ttl is refused."""
    registry.create_token("a1", 3600)
    with pytest.raises(IdentityError) as excinfo:
        registry.redeem_token("not-a-token", "a1")
    assert reason(excinfo) == "bad_token"
    with pytest.raises(ValueError, match="positive"):
        registry.create_token("a1", 0)


def test_two_threads_redeeming_one_token_only_one_wins(tmp_path: Path) -> None:
    """Two connections (as two aggregator workers would hold) redeem the same token at the
    same moment from two threads, twenty times over: each time exactly one succeeds and the
    other gets `used_token`."""
    path = tmp_path / REGISTRY_FILE
    with Registry.open(path) as r1, Registry.open(path) as r2:
        for _ in range(20):
            token = r1.create_token("a1", 3600)
            barrier = threading.Barrier(2)
            results: list[str] = []

            def redeem(
                reg: Registry,
                token: str = token,
                barrier: threading.Barrier = barrier,
                results: list[str] = results,
            ) -> None:
                barrier.wait()
                try:
                    reg.redeem_token(token, "a1")
                    results.append("ok")
                except IdentityError as exc:
                    results.append(exc.reason)

            threads = [threading.Thread(target=redeem, args=(r,)) for r in (r1, r2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert sorted(results) == ["ok", "used_token"]


def test_tokens_are_hashed_at_rest(tmp_path: Path) -> None:
    """The database files hold the SHA-256 of a token, never the token itself."""
    path = tmp_path / REGISTRY_FILE
    with Registry.open(path) as reg:
        tokens = [reg.create_token(f"a{i}", 3600) for i in range(3)]
        stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
        for token in tokens:
            assert token.encode() not in stored
        assert hash_token(tokens[0]).encode() in stored
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert all(token.encode() not in stored for token in tokens)
    assert hash_token(tokens[0]).encode() in stored


def test_revoke_marks_the_agent_and_lists_its_serial(
    registry: Registry, ca: CertificateAuthority
) -> None:
    """Revoking an enrolled agent returns its serial, flips its status, makes is_revoked true
    for its certificate (and leaves other agents alone), lists it in revoked_serials, deletes
    its unused tokens, and is idempotent; an unknown agent is `unknown_agent`."""
    cert = enroll(registry, ca, "a1")
    other = enroll(registry, ca, "a2")
    pending = registry.create_token("a1", 3600)
    assert not registry.is_revoked("a1", cert.serial_number)
    assert registry.revoke("a1", now=NOW) == [cert.serial_number]
    assert registry.is_revoked("a1", cert.serial_number)
    assert not registry.is_revoked("a2", other.serial_number)
    assert registry.revoked_serials() == [(cert.serial_number, NOW)]
    row = registry.agent("a1")
    assert row is not None
    assert row.status is AgentStatus.REVOKED
    assert row.revoked_at == NOW
    with pytest.raises(IdentityError) as excinfo:
        registry.redeem_token(pending, "a1")
    assert reason(excinfo) == "bad_token"
    assert registry.revoke("a1") == [cert.serial_number]
    with pytest.raises(IdentityError) as excinfo:
        registry.revoke("nobody")
    assert reason(excinfo) == "unknown_agent"


def test_reenrollment_supersedes_the_old_certificate(
    registry: Registry, ca: CertificateAuthority
) -> None:
    """An agent that enrolls again gets its new serial recorded; the old one is revoked
    (superseded) and stays in revoked_serials; a revoked agent re-admitted with a new
    certificate is enrolled again while its revoked serials stay revoked; a revoked
    certificate cannot be recorded again."""
    old = enroll(registry, ca, "a1")
    _, new = issue(ca, "a1")
    assert registry.record_enrollment(identity_of(new), new) == [old.serial_number]
    assert registry.cert_status("a1", old.serial_number) is CertStatus.SUPERSEDED
    assert registry.cert_status("a1", new.serial_number) is CertStatus.CURRENT
    assert [s for s, _ in registry.revoked_serials()] == [old.serial_number]

    registry.revoke("a1")
    _, third = issue(ca, "a1")
    assert registry.record_enrollment(identity_of(third), third) == []
    assert registry.cert_status("a1", third.serial_number) is CertStatus.CURRENT
    assert registry.is_revoked("a1", new.serial_number)
    assert registry.is_revoked("a1", old.serial_number)
    with pytest.raises(IdentityError) as excinfo:
        registry.record_enrollment(identity_of(new), new)
    assert reason(excinfo) == "revoked"


def test_unknown_serials_and_agents(registry: Registry, ca: CertificateAuthority) -> None:
    """A certificate the registry never recorded is revoked for a known agent
    (`unknown_serial`) but not for an agent it has never seen (`unknown_agent`); another
    agent's serial presented under a different id is untrusted."""
    cert = enroll(registry, ca, "a1")
    _, stray = issue(ca, "a1")
    assert registry.cert_status("a1", stray.serial_number) is CertStatus.UNKNOWN_SERIAL
    assert registry.is_revoked("a1", stray.serial_number)
    assert registry.cert_status("zz", 12345) is CertStatus.UNKNOWN_AGENT
    assert not registry.is_revoked("zz", 12345)
    assert registry.is_revoked("zz", cert.serial_number)


def test_agents_and_touch(registry: Registry, ca: CertificateAuthority) -> None:
    """agents() lists every identity by id with role, status and serial; touch() records
    the latest last_seen and is False for an unknown id."""
    enroll(registry, ca, "b")
    _, agg = issue(ca, "aggregator", role=Role.AGGREGATOR)
    registry.record_enrollment(identity_of(agg), agg)
    assert registry.touch("b", NOW)
    assert registry.touch("b", NOW - dt.timedelta(days=1))  # older: last_seen stays
    assert not registry.touch("nobody", NOW)
    rows = registry.agents()
    assert [(r.agent_id, r.role, r.status) for r in rows] == [
        ("aggregator", Role.AGGREGATOR, AgentStatus.ENROLLED),
        ("b", Role.TRAINER, AgentStatus.ENROLLED),
    ]
    assert rows[1].last_seen == NOW
    assert rows[0].last_seen is None
    assert rows[0].serial == agg.serial_number


def test_revoke_agent_writes_the_crl(tmp_path: Path, ca: CertificateAuthority) -> None:
    """revoke_agent(ca_dir, id) revokes in the CA directory's registry and writes crl.pem,
    signed by the CA and listing the agent's serial."""
    save_ca(ca, tmp_path)
    with Registry.open(tmp_path / REGISTRY_FILE) as reg:
        cert = enroll(reg, ca, "a1")
    assert revoke_agent(tmp_path, "a1") == [cert.serial_number]
    crl = x509.load_pem_x509_crl((tmp_path / CRL_FILE).read_bytes())
    ca_key = load_certificate(tmp_path / "ca.pem").public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(ca_key)
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    with pytest.raises(IdentityError) as excinfo:
        revoke_agent(tmp_path / "missing", "a1")
    assert reason(excinfo) == "unreadable"


def test_a_file_that_is_not_a_registry_is_refused(tmp_path: Path) -> None:
    """Opening a file that is not SQLite fails with IdentityError `unreadable`."""
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(IdentityError) as excinfo:
        Registry.open(path)
    assert reason(excinfo) == "unreadable"


def test_a_trainer_cannot_take_over_another_roles_id(
    registry: Registry, ca: CertificateAuthority
) -> None:
    """Recording a trainer certificate for the id of the registered aggregator is refused
    (`role_conflict`) and the aggregator's certificate stays current."""
    _, agg = issue(ca, "aggregator", role=Role.AGGREGATOR)
    registry.record_enrollment(identity_of(agg), agg)
    _, fake = issue(ca, "aggregator")
    with pytest.raises(IdentityError) as excinfo:
        registry.record_enrollment(identity_of(fake), fake)
    assert reason(excinfo) == "role_conflict"
    assert registry.cert_status("aggregator", agg.serial_number) is CertStatus.CURRENT
