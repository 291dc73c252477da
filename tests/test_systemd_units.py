"""The systemd units in ``systemd/`` and ``fedbus service install``.

``systemd-analyze verify`` checks that ExecStart's program exists, and the shipped units name
``/opt/fedbus/venv/bin/fedbus``, which a CI machine does not have. So the units are verified
as ``fedbus service install --prefix`` renders them for this test run's own environment, and a
test asserts that the rendering changes that one path and nothing else. ``systemd-analyze
security --offline=true`` reads the shipped files as they are. Both tools come with systemd
(``apt-get install systemd``); without them these tests fail rather than skip.

Nothing here touches the real system: units go to temporary directories, and ``install`` runs
with a recording stand-in for systemctl.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli.service import install, service
from agent.cli.units import TEMPLATE_FEDBUS, UNIT_ROLES, Layout, find_template
from agent.config import AgentConfig, IdentityConfig, PluginConfig, TlsConfig
from agent.errors import ConfigError
from agent.role import Role

pytestmark = pytest.mark.timeout(60)
#: Not a federation any real /etc/fedbus would hold: dry runs read the default layout.
FED = "fedbus-test-plant-3"
ROLES = ("agent", "aggregator")
MAX_EXPOSURE = 2.0


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """The systemd-analyze binary; its absence fails the test, it is not a reason to skip."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    return path


def rendered(role: str, unit_dir: Path, config_dir: Path | None = None) -> tuple[Path, str]:
    """``fedbus service install --dry-run`` for ``role``, running this environment's fedbus
    (and with the default config directory unless ``config_dir``: a dry run only reads it);
    the unit file it wrote and what it printed."""
    args = [
        "install",
        "--federation",
        FED,
        "--role",
        role,
        "--prefix",
        sys.prefix,
        "--unit-dir",
        str(unit_dir),
        "--dry-run",
    ]
    if config_dir is not None:
        args += ["--config-dir", str(config_dir)]
    result = CliRunner().invoke(service, args)
    assert result.exit_code == 0, result.output
    return unit_dir / f"fedbus-{role}@.service", result.output


@pytest.mark.parametrize("role", ROLES)
def test_units_verify_without_any_output(role: str, systemd_analyze: str, tmp_path: Path) -> None:
    """``systemd-analyze verify`` prints nothing at all (no error, no warning) for the unit
    as installed for a fedbus that exists, with every referenced unit checked too."""
    path, _ = rendered(role, tmp_path)
    run = subprocess.run(
        [systemd_analyze, "verify", "--recursive-errors=yes", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


@pytest.mark.parametrize("role", ROLES)
def test_rendering_changes_only_the_program_path(role: str, tmp_path: Path) -> None:
    """The verified unit is the shipped one: rendering for another prefix replaces the
    ExecStart program and nothing else (the default config directory is kept as %E)."""
    path, _ = rendered(role, tmp_path)
    shipped = find_template(UNIT_ROLES[role]).read_text().splitlines()
    ours = path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(shipped, ours, strict=True) if a != b]
    fedbus = str(Path(sys.prefix).absolute() / "bin" / "fedbus")
    assert len(changed) == 1
    assert changed[0][0].startswith(f"ExecStart={TEMPLATE_FEDBUS} ")
    assert changed[0][0].replace(TEMPLATE_FEDBUS, fedbus) == changed[0][1]


@pytest.mark.parametrize("role", ROLES)
def test_units_exposure_is_at_most_2(role: str, systemd_analyze: str) -> None:
    """``systemd-analyze security --offline=true`` rates each shipped unit 2.0 or lower (the
    agent: 1.2; what remains is network access, which an agent needs, and the root
    directory and a read-only RTC device)."""
    run = subprocess.run(
        [
            systemd_analyze,
            "security",
            "--offline=true",
            "--no-pager",
            str(find_template(UNIT_ROLES[role])),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", run.stdout)
    assert match is not None, run.stdout
    assert float(match[1]) <= MAX_EXPOSURE, run.stdout


def test_aggregator_unit_mirrors_the_agent_unit() -> None:
    """Below their header comments the two units differ only in the role's names, so a
    setting changed in one cannot be forgotten in the other."""

    def body(role: str) -> str:
        text = find_template(UNIT_ROLES[role]).read_text()
        return text[text.index("[Unit]") :]

    agent = body("agent")
    for a, b in [
        ("agent.toml", "aggregator.toml"),
        ("agent.key", "aggregator.key"),
        ("fedbus/%i/agent", "fedbus/%i/aggregator"),
        ("fedbus-agent@FED", "fedbus-aggregator@FED"),
        ("federated-learning agent", "federated-learning aggregator"),
    ]:
        agent = agent.replace(a, b)
    assert body("aggregator") == agent


@pytest.mark.parametrize("role", ROLES)
def test_units_use_the_paths_service_install_lays_out(role: str) -> None:
    """The credentials, config and state directories the unit names (specifiers expanded
    as systemd does for a system service) are the ones ``Layout`` writes and points the
    config at, and the config and key reach the service as credentials."""
    layout = Layout(UNIT_ROLES[role], FED)
    spec = {"%E": "/etc", "%S": "/var/lib", "%i": FED}
    settings: dict[str, list[str]] = {}
    for line in find_template(UNIT_ROLES[role]).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(re.sub(r"%[ESi]", lambda m: spec[m[0]], value))
    credentials = "${CREDENTIALS_DIRECTORY}"
    assert settings["ExecStart"] == [f"{TEMPLATE_FEDBUS} run --config {credentials}/{role}.toml"]
    assert settings["LoadCredential"] == [
        f"{role}.toml:{layout.config_path}",
        f"{layout.key_path.name}:{layout.key_path}",
    ]
    assert layout.credential_key == Path("/run/credentials", layout.unit, layout.key_path.name)
    assert [Path("/var/lib", d) for d in settings["StateDirectory"]] == [layout.state_dir]
    assert [Path("/etc", d) for d in settings["ConfigurationDirectory"]] == [layout.config_dir]


def enrolled(tmp_path: Path, *, role: Role = Role.TRAINER, **identity: Path) -> Path:
    """A config as ``fedbus enroll`` writes it (state in the unit's state directory, key in
    ``tmp_path``) at ``tmp_path/etc/FED/agent.toml``; returns the key's path."""
    state = Path("/var/lib/fedbus", FED, "agent" if role is Role.TRAINER else "aggregator")
    key = tmp_path / "state" / "identity" / "key.pem"
    key.parent.mkdir(parents=True)
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nfake\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    config = AgentConfig(
        role=role,
        agent_id="dev-17",
        federation=FED,
        bus_url="tls://broker:4222",
        state_dir=state,
        plugin=PluginConfig(name="digits-mlp"),
        tls=TlsConfig(
            ca_file=state / "identity/ca.pem", cert_file=state / "identity/cert.pem", key_file=key
        ),
        identity=IdentityConfig(
            **{
                "cert_file": state / "identity/cert.pem",
                "key_file": key,
                "ca_file": state / "identity/ca.pem",
                **identity,
            }
        ),
    )
    name = "agent" if role is Role.TRAINER else "aggregator"
    path = tmp_path / "etc" / FED / f"{name}.toml"
    path.parent.mkdir(parents=True)
    path.write_bytes(config.to_toml())
    return key


def test_dry_run_writes_the_unit_and_prints_the_rest(tmp_path: Path) -> None:
    """``--dry-run`` writes the unit file into ``--unit-dir`` and only prints the key move and
    the systemctl commands: the key and the config stay as they were."""
    key = enrolled(tmp_path)
    config = tmp_path / "etc" / FED / "agent.toml"
    before = config.read_bytes()
    path, output = rendered("agent", tmp_path / "units", tmp_path / "etc")
    assert sorted(p.name for p in path.parent.iterdir()) == ["fedbus-agent@.service"]
    assert f"would move the private key {key} to {config.with_name('agent.key')}" in output
    assert "would run: systemctl daemon-reload\n" in output
    assert f"would run: systemctl enable --now --no-block fedbus-agent@{FED}.service\n" in output
    assert key.is_file()
    assert config.read_bytes() == before
    assert not config.with_name("agent.key").exists()


def fake_fedbus(tmp_path: Path, interpreter: str = "/usr/bin/python3") -> Path:
    path = tmp_path / "venv" / "bin" / "fedbus"
    path.parent.mkdir(parents=True)
    path.write_text(f"#!{interpreter}\n")
    return path


def test_install_moves_the_key_rewrites_the_config_and_is_idempotent(tmp_path: Path) -> None:
    """``install`` puts the key (0600) beside the config, deletes it from the state
    directory, points [identity] and [tls] at the credential path, writes the config 0600,
    runs daemon-reload and enable --now; run again, it changes nothing."""
    key = enrolled(tmp_path)
    secret = key.read_bytes()
    layout = Layout(Role.TRAINER, FED, tmp_path / "etc")
    fedbus = fake_fedbus(tmp_path)
    ran: list[list[str]] = []
    lines: list[str] = []

    def again() -> None:
        install(
            layout,
            fedbus=fedbus,
            unit_dir=tmp_path / "units",
            dry_run=False,
            enable=True,
            run=lambda argv: ran.append(list(argv)) or 0,
            echo=lines.append,
        )

    again()
    assert not key.exists()
    assert layout.key_path.read_bytes() == secret
    config = AgentConfig.load(layout.config_path)
    credential = Path(f"/run/credentials/fedbus-agent@{FED}.service/agent.key")
    assert (config.identity.key_file, config.tls.key_file) == (credential, credential)
    for path in (layout.key_path, layout.config_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    unit_name = f"fedbus-agent@{FED}.service"
    commands = [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "--no-block", unit_name],
    ]
    assert ran == commands
    unit = (tmp_path / "units" / "fedbus-agent@.service").read_text()
    assert f"ExecStart={tmp_path}/venv/bin/fedbus run" in unit
    assert f"LoadCredential=agent.key:{tmp_path}/etc/%i/agent.key" in unit

    before = layout.config_path.read_bytes()
    lines.clear()
    again()
    assert layout.config_path.read_bytes() == before
    assert not any("private key" in line for line in lines)
    assert any("is up to date" in line for line in lines)
    assert ran == commands * 2


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ({"ca_dir": Path("/etc/fedbus/ca")}, "ca_dir /etc/fedbus/ca must be in"),
        ({"cert_file": Path("/home/me/cert.pem")}, "cannot read /home/me/cert.pem"),
    ],
)
def test_install_refuses_configs_the_sandbox_cannot_run(
    tmp_path: Path, identity: dict[str, Path], message: str
) -> None:
    """A CA directory the aggregator could not write, or a file under /home, is refused
    before anything is moved or any systemctl runs."""
    key = enrolled(tmp_path, role=Role.AGGREGATOR, **identity)
    ran: list[list[str]] = []
    with pytest.raises(ConfigError, match=re.escape(message)):
        install(
            Layout(Role.AGGREGATOR, FED, tmp_path / "etc"),
            fedbus=fake_fedbus(tmp_path),
            unit_dir=tmp_path / "units",
            dry_run=False,
            enable=True,
            run=lambda argv: ran.append(list(argv)) or 0,
            echo=lambda _: None,
        )
    assert key.is_file()
    assert ran == []


def test_install_refuses_the_wrong_role_and_an_interpreter_under_root(tmp_path: Path) -> None:
    """A trainer's config is not installed as the aggregator, and a fedbus whose #! names
    an interpreter under /root (pyenv's, say), which ProtectHome= hides, is refused."""
    enrolled(tmp_path)
    (tmp_path / "etc" / FED / "agent.toml").rename(tmp_path / "etc" / FED / "aggregator.toml")
    args = {
        "unit_dir": tmp_path / "units",
        "dry_run": False,
        "enable": True,
        "run": lambda _: 0,
        "echo": lambda _: None,
    }
    with pytest.raises(
        ConfigError, match="configures a trainer of 'fedbus-test-plant-3', not an aggregator"
    ):
        install(
            Layout(Role.AGGREGATOR, FED, tmp_path / "etc"), fedbus=fake_fedbus(tmp_path), **args
        )
    with pytest.raises(ConfigError, match="ProtectHome=yes hides /root"):
        install(
            Layout(Role.TRAINER, FED, tmp_path / "etc"),
            fedbus=fake_fedbus(tmp_path / "x", "/root/.pyenv/bin/python3"),
            **args,
        )


def test_install_refuses_an_agent_package_the_sandbox_hides(tmp_path: Path) -> None:
    """A venv outside /root and /home whose interpreter imports ``agent`` from a checkout
    under /home (an editable install) is refused: the unit would die on ModuleNotFoundError."""
    enrolled(tmp_path)
    python = tmp_path / "venv" / "python3"
    python.parent.mkdir()
    python.write_text("#!/bin/sh\necho /home/dev/fedbus/agent\n")
    python.chmod(0o755)
    with pytest.raises(ConfigError, match="imports it from /home/dev/fedbus/agent"):
        install(
            Layout(Role.TRAINER, FED, tmp_path / "etc"),
            fedbus=fake_fedbus(tmp_path / "x", str(python)),
            unit_dir=tmp_path / "units",
            dry_run=False,
            enable=True,
            run=lambda _: 0,
            echo=lambda _: None,
        )
