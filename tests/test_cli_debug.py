"""`fedbus publish` and `fedbus listen` against a real nats-server: signed test messages of
any kind, and a listener that shows each message's signature status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.brokers import EmbeddedBroker
from agent.config import AgentConfig, IdentityConfig, PluginConfig
from agent.identity import ca, pem
from agent.role import Role

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def config(
    tmp_path: Path,
    url: str,
    authority: ca.CertificateAuthority | None,
    agent_id: str,
    role: Role = Role.TRAINER,
) -> Path:
    identity = IdentityConfig()
    if authority is not None:
        key, cert = ca.issue(authority, agent_id, role=role)
        pki = tmp_path / "pki"
        pem.write_private_key(pki / f"{agent_id}.key", key)
        pem.write_pem(pki / f"{agent_id}.pem", cert)
        pem.write_pem(pki / "ca.pem", authority.cert)
        identity = IdentityConfig(
            cert_file=pki / f"{agent_id}.pem",
            key_file=pki / f"{agent_id}.key",
            ca_file=pki / "ca.pem",
        )
    cfg = AgentConfig(
        role=Role.AGGREGATOR if role is Role.AGGREGATOR else Role.TRAINER,
        agent_id=agent_id,
        federation="fed",
        bus_url=url,
        state_dir=tmp_path / agent_id,
        plugin=PluginConfig(name="toy"),
        identity=identity,
    )
    path = tmp_path / f"{agent_id}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cfg.to_toml())
    return path


def fedbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_publish_and_listen_show_signature_status(
    nats_server: EmbeddedBroker, tmp_path: Path
) -> None:
    """A listener (as the aggregator) sees: a join signed by an enrolled agent (valid), a
    finish signed by a trainer (INVALID: wrong_role, it is the aggregator's to send), and a
    join from a config without identity (unsigned); each with kind, sender and round."""
    authority = ca.init_ca("fed")
    agg = config(tmp_path, nats_server.url, authority, "aggregator", Role.AGGREGATOR)
    a1 = config(tmp_path, nats_server.url, authority, "a1")
    anon = config(tmp_path / "anon", nats_server.url, None, "a9")
    listener = subprocess.Popen(
        [sys.executable, "-m", "agent", "listen", "--as", str(agg), "--count", "3", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stderr is not None
        assert "listening on fl/fed/#" in listener.stderr.readline()
        join = '{"agent_id": "a1", "plugin": "toy", "num_examples": 5}'
        sent = fedbus("publish", "join", "--as", str(a1), "--round", "2", "--body", join)
        assert sent.returncode == 0, sent.stderr
        assert "on fl/fed/join" in sent.stdout
        finish = json.dumps({"reason": "test", "final_version": 1, "model_sha256": "0" * 64})
        assert fedbus("publish", "finish", "--as", str(a1), "--body", finish).returncode == 0
        anon_join = '{"agent_id": "a9", "plugin": "toy", "num_examples": 1}'
        assert fedbus("publish", "join", "--as", str(anon), "--body", anon_join).returncode == 0
        out, err = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()
    assert listener.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(x["kind"], x["sender"], x["round"]) for x in lines] == [
        ("join", "a1", 2),
        ("finish", "a1", 0),
        ("join", "a9", 0),
    ]
    assert lines[0]["signature"] == "valid (a1, trainer)"
    assert lines[0]["body"]["agent_id"] == "a1"
    assert lines[1]["signature"] == "INVALID: wrong_role"
    assert lines[2]["signature"] == "unsigned"


def test_publish_refuses_a_body_that_does_not_fit_its_kind(
    nats_server: EmbeddedBroker, tmp_path: Path
) -> None:
    """A body missing required fields is refused with one error line and a non-zero exit,
    before anything is sent."""
    a1 = config(tmp_path, nats_server.url, None, "a1")
    run = fedbus("publish", "join", "--as", str(a1), "--body", '{"agent_id": "a1"}')
    assert run.returncode == 2
    assert "not a valid join body" in run.stderr


def test_status_lines_read_as_sentences() -> None:
    """`fedbus status` without --json: the phase's detail after the round, each agent with
    its liveness (unknown while it never said), and the last round."""
    from agent.cli.debug import status_lines
    from agent.messages.bodies import (
        AgentSummary,
        FederationStatus,
        Liveness,
        RoundPhase,
        RoundSummary,
    )

    summary = FederationStatus(
        round=7,
        phase=RoundPhase.TRAINING,
        detail="training (2 agents)",
        agents={
            "a1": AgentSummary(state=Liveness.ONLINE, detail="round 7: training", admitted=True),
            "a2": AgentSummary(state=None, admitted=True),
        },
        last_round=RoundSummary(round=6, survivors=["a1"], dropouts=["a2"], accuracy=0.5),
    )
    lines = status_lines("demo", summary)
    assert lines[0] == "federation demo: round 7, training (2 agents)"
    assert lines[1] == "agents: 1 online of 2"
    assert lines[2].split()[:3] == ["a1", "online", "admitted"]
    assert lines[3].split()[:3] == ["a2", "unknown", "admitted"]
    assert lines[4].startswith("last round 6: 1 survivors, dropouts a2, accuracy 50.00%")
