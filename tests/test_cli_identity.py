"""`fedbus ca|token|agents|revoke|enroll`, run as the operator and the device would run them."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.cli.identity import parse_duration
from agent.config import AgentConfig
from agent.identity.ca import init_ca, load_ca
from agent.identity.certificates import fingerprint, verify_issued
from agent.identity.local import Credentials
from agent.identity.pem import load_certificate
from agent.identity.registry import Registry
from agent.runtime.enrollment import EnrollmentService

pytestmark = pytest.mark.timeout(60)
FED = "fed"


def fedbus(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        input=stdin,
    )


def ok(*args: str | Path) -> str:
    run = fedbus(*args)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode != 0, run.stdout
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("fedbus: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `fedbus ca init` shared by the tests that only read it or add agents."""
    path = tmp_path_factory.mktemp("ca") / "ca"
    ok("ca", "init", "--federation", FED, "--dir", path)
    return path


def test_ca_init_creates_the_ca_identities_and_registry_and_refuses_to_overwrite(
    tmp_path: Path,
) -> None:
    """`ca init` writes the CA (key 0600), the aggregator and enroll identities issued by it,
    the registry listing both and an empty CRL, and prints the CA fingerprint; run again on
    the same directory it exits non-zero, says why, and changes nothing."""
    path = tmp_path / "ca"
    out = ok("ca", "init", "--federation", FED, "--dir", path, "--aggregator-id", "agg")
    authority = load_ca(path)
    assert authority.fingerprint in out
    for key in ("ca.key", "aggregator.key", "enroll.key"):
        assert stat.S_IMODE((path / key).stat().st_mode) == 0o600
    agg = verify_issued(authority.cert, load_certificate(path / "aggregator.pem"))
    enr = verify_issued(authority.cert, load_certificate(path / "enroll.pem"))
    assert (agg.agent_id, str(agg.role)) == ("agg", "aggregator")
    assert (enr.agent_id, str(enr.role)) == ("enroll", "enroll")
    crl = x509.load_pem_x509_crl((path / "crl.pem").read_bytes())
    assert len(list(crl)) == 0
    with Registry.open(path / "registry.sqlite") as registry:
        assert [r.agent_id for r in registry.agents()] == ["agg", "enroll"]

    before = (path / "ca.pem").read_bytes()
    line = one_error_line(fedbus("ca", "init", "--federation", FED, "--dir", path))
    assert "refusing to overwrite" in line
    assert (path / "ca.pem").read_bytes() == before


def test_ca_fingerprint_prints_the_pin_ca_init_printed(ca_dir: Path, tmp_path: Path) -> None:
    """An operator who did not keep `ca init`'s output gets the fingerprint back (from ca.pem
    alone); without a CA there it is one error line."""
    assert ok("ca", "fingerprint", "--dir", ca_dir).strip() == load_ca(ca_dir).fingerprint
    line = one_error_line(fedbus("ca", "fingerprint", "--dir", tmp_path / "none"))
    assert "ca.pem" in line


def test_token_create_prints_only_a_token_that_the_registry_redeems(ca_dir: Path) -> None:
    """`token create` prints one line, the token, which redeems once for its agent id;
    --ttl takes s/m/h/d suffixes and refuses nonsense; a bad agent id, and the aggregator's
    id, are refused."""
    out = ok("token", "create", "--agent-id", "tok1", "--ttl", "15m", "--dir", ca_dir)
    token = out.strip()
    assert len(out.splitlines()) == 1
    assert len(token) == 43
    with Registry.open(ca_dir / "registry.sqlite") as registry:
        registry.redeem_token(token, "tok1")
    assert (
        fedbus("token", "create", "--agent-id", "x", "--ttl", "soon", "--dir", ca_dir).returncode
        != 0
    )
    one_error_line(fedbus("token", "create", "--agent-id", "bad id", "--dir", ca_dir))
    assert "aggregator identity" in one_error_line(
        fedbus("token", "create", "--agent-id", "aggregator", "--dir", ca_dir)
    )
    assert [parse_duration(t) for t in ("90", "90s", "15m", "24h", "7d", "1.5h")] == [
        90,
        90,
        900,
        86400,
        604800,
        5400,
    ]


def test_agents_list_json(ca_dir: Path) -> None:
    """`agents list --json` is a JSON array with id, role, status, serial (a string),
    enrolled at, last seen and revoked at for every identity; the table has a header."""
    records = json.loads(ok("agents", "list", "--dir", ca_dir, "--json"))
    by_id = {r["agent_id"]: r for r in records}
    assert by_id["aggregator"]["role"] == "aggregator"
    assert by_id["enroll"]["status"] == "enrolled"
    assert by_id["aggregator"]["last_seen"] is None
    assert by_id["aggregator"]["revoked_at"] is None
    assert (
        int(by_id["aggregator"]["serial"])
        == load_certificate(ca_dir / "aggregator.pem").serial_number
    )
    assert by_id["aggregator"]["enrolled_at"].endswith("Z")
    table = ok("agents", "list", "--dir", ca_dir)
    assert table.splitlines()[0].split()[:3] == ["AGENT", "ROLE", "STATUS"]


def test_offline_csr_sign_import_then_revoke(ca_dir: Path, tmp_path: Path) -> None:
    """The air-gapped path: `enroll csr` writes a 0600 key and a CSR;
    `ca sign` issues and records the certificate; `enroll import` checks it against
    the pinned CA and writes the identity and a trainer config whose [identity] loads. Then
    `revoke` marks the agent revoked and writes a CRL listing its serial; revoking an unknown
    agent fails with one error line."""
    state, csr, cert = tmp_path / "state", tmp_path / "dev.csr", tmp_path / "dev.pem"
    ok(
        "enroll",
        "csr",
        csr,
        "--agent-id",
        "off1",
        "--federation",
        FED,
        "--state-dir",
        state,
    )
    key = state / "identity" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE" not in csr.read_bytes()
    ok("ca", "sign", csr, "--dir", ca_dir, "--out", cert)
    fp = fingerprint(load_certificate(ca_dir / "ca.pem"))

    wrong = fedbus(
        "enroll",
        "import",
        cert,
        "--ca-file",
        ca_dir / "ca.pem",
        "--ca-fingerprint",
        "00" * 32,
        "--state-dir",
        state,
        "--config",
        tmp_path / "off1.toml",
        "--bus-url",
        "nats://127.0.0.1:4222",
        "--plugin",
        "toy",
    )
    assert "fingerprint" in one_error_line(wrong)
    assert not (tmp_path / "off1.toml").exists()

    config_path = tmp_path / "off1.toml"
    ok(
        "enroll",
        "import",
        cert,
        "--ca-file",
        ca_dir / "ca.pem",
        "--ca-fingerprint",
        fp,
        "--state-dir",
        state,
        "--config",
        config_path,
        "--bus-url",
        "nats://127.0.0.1:4222",
        "--plugin",
        "toy",
        "-o",
        "value=2",
    )
    config = AgentConfig.load(config_path)
    assert (config.agent_id, config.federation, config.bus_url) == (
        "off1",
        FED,
        "nats://127.0.0.1:4222",
    )
    assert config.plugin.options == {"value": 2}
    creds = Credentials.load(config.identity, agent_id="off1", federation=FED)
    serial = creds.identity.serial
    assert serial == load_certificate(cert).serial_number

    out = ok("revoke", "off1", "--dir", ca_dir)
    assert str(serial) in out
    assert "reload" in out
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    with Registry.open(ca_dir / "registry.sqlite") as registry:
        assert registry.is_revoked("off1", serial)
    assert "no agent 'ghost'" in one_error_line(fedbus("revoke", "ghost", "--dir", ca_dir))


@pytest.mark.broker
async def test_enroll_over_the_bus_writes_a_config_that_needs_nothing_else(
    mosquitto: EmbeddedBroker, ca_dir: Path, tmp_path: Path
) -> None:
    """`fedbus enroll` with a token from `token create` (read from a file) against a running
    enrollment service writes key.pem (0600), cert.pem and ca.pem under the state dir and a
    trainer config whose [identity] loads and names the agent; the same token used again
    makes a second `fedbus enroll` exit non-zero with one line naming the reuse."""
    token_file = tmp_path / "token"
    token_file.write_text(ok("token", "create", "--agent-id", "bus1", "--dir", ca_dir))
    token_file.chmod(0o600)
    state, config_path = tmp_path / "state", tmp_path / "bus1.toml"
    fp = fingerprint(load_certificate(ca_dir / "ca.pem"))
    args = [
        "enroll",
        "--federation",
        FED,
        "--agent-id",
        "bus1",
        "--token-file",
        str(token_file),
        "--ca-fingerprint",
        fp,
        "--bus-url",
        mosquitto.url,
        "--state-dir",
        str(state),
        "--config",
        str(config_path),
        "--plugin",
        "toy",
        "--timeout",
        "10",
    ]

    async def cli() -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    with Registry.open(ca_dir / "registry.sqlite") as registry:
        async with bus_from_url(mosquitto.url, BusSettings(client_id="agg-enroll")) as bus:
            service = EnrollmentService(bus, load_ca(ca_dir), registry, FED, ca_dir=ca_dir)
            task = asyncio.create_task(service.run())
            await asyncio.wait_for(service.ready.wait(), 10)
            first = await cli()
            second = await cli()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    code, out, err = first
    assert code == 0, out + err
    assert f"fedbus run --config {config_path}" in out
    ident = state / "identity"
    assert stat.S_IMODE((ident / "key.pem").stat().st_mode) == 0o600
    config = AgentConfig.load(config_path)
    assert config.bus_url == mosquitto.url
    assert config.state_dir == state.resolve()
    assert config.tls.cert_file is None  # a plain mqtt:// URL takes no [tls]
    creds = Credentials.load(config.identity, agent_id="bus1", federation=FED)
    assert str(creds.identity.role) == "trainer"

    code, out, err = second
    line = one_error_line(subprocess.CompletedProcess([], code, out, err))
    assert "used_token" in line
    assert "already used" in line


def test_a_tls_bus_url_gets_a_tls_table_with_the_agents_own_identity(
    ca_dir: Path, tmp_path: Path
) -> None:
    """For an mqtts:// broker the written config's [tls] presents the agent's own certificate
    and key and trusts the federation CA; with --tls-ca naming another CA (the broker's),
    that CA is copied beside the identity and trusted instead. A plain URL with TLS files
    is refused with one line."""
    state, csr, cert = tmp_path / "state", tmp_path / "dev.csr", tmp_path / "dev.pem"
    ok(
        "enroll",
        "csr",
        csr,
        "--agent-id",
        "tls1",
        "--federation",
        FED,
        "--state-dir",
        state,
    )
    ok("ca", "sign", csr, "--dir", ca_dir, "--out", cert)
    fp = fingerprint(load_certificate(ca_dir / "ca.pem"))
    common = [
        "import",
        cert,
        "--ca-file",
        ca_dir / "ca.pem",
        "--ca-fingerprint",
        fp,
        "--state-dir",
        state,
        "--plugin",
        "toy",
    ]
    ok("enroll", *common, "--config", tmp_path / "a.toml", "--bus-url", "mqtts://broker:8883")
    ident = (state / "identity").resolve()
    tls = AgentConfig.load(tmp_path / "a.toml").tls
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (
        ident / "ca.pem",
        ident / "cert.pem",
        ident / "key.pem",
    )

    other = tmp_path / "other-ca.pem"
    other.write_bytes(init_ca("x").cert.public_bytes(serialization.Encoding.PEM))
    ok(
        "enroll",
        *common,
        "--config",
        tmp_path / "b.toml",
        "--bus-url",
        "tls://broker:4222",
        "--tls-ca",
        other,
    )
    tls = AgentConfig.load(tmp_path / "b.toml").tls
    assert tls.ca_file == ident / "broker-ca.pem"
    assert tls.ca_file.read_bytes() == other.read_bytes()
    assert tls.cert_file == ident / "cert.pem"

    run = fedbus(
        "enroll",
        "--federation",
        FED,
        "--agent-id",
        "tls1",
        "--token",
        "t",
        "--ca-fingerprint",
        fp,
        "--bus-url",
        "mqtt://127.0.0.1:1",
        "--state-dir",
        state,
        "--config",
        tmp_path / "c.toml",
        "--plugin",
        "toy",
        "--tls-ca",
        other,
    )
    assert "plaintext" in one_error_line(run)
