"""Give a device its identity and a trainer config that ``fedbus run`` needs nothing else for:
the three ways of ``fedbus enroll``.

- ``enroll_online``: over the bus with a one-time token (``agent.identity.device.enroll``);
- ``write_offline_csr`` then, with the certificate from ``fedbus ca sign``,
  ``import_certificate``: air-gapped.

Each writes, under the agent's state directory::

    STATE_DIR/identity/key.pem (0600)   the device key (made here; it never leaves)
    STATE_DIR/identity/cert.pem         its certificate
    STATE_DIR/identity/ca.pem           the federation CA (checked against the pinned
                                        SHA-256 fingerprint)
    STATE_DIR/identity/broker-ca.pem    only when the broker's CA (--tls-ca) is another one

and the config at ``DeviceSetup.config_path`` (TOML, ``[identity]`` naming those files and,
for a TLS broker URL, ``[tls]`` presenting the same certificate).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from agent.atomic import write_atomic
from agent.errors import IdentityError
from agent.identity import ca, certificates, pem
from agent.identity.device import check_issued, enroll, normalize_fingerprint
from agent.role import Identity

if TYPE_CHECKING:
    from cryptography import x509

    from agent.config import AgentConfig

#: A device's identity files, under its state directory.
IDENTITY_DIR = "identity"
KEY_FILE, CERT_FILE, DEVICE_CA_FILE = "key.pem", "cert.pem", "ca.pem"
#: The broker's CA, when the given broker CA is not the federation CA.
BROKER_CA_FILE = "broker-ca.pem"
_PEM = serialization.Encoding.PEM


@dataclass(frozen=True, slots=True)
class DeviceSetup:
    """How the enrolled trainer will run: what its written config says.

    Attributes:
        bus_url: the broker (``mqtt://``, ``mqtts://``, ``nats://``, ``tls://``).
        state_dir: the agent's state directory; the identity goes in its ``identity/``.
        config_path: where the config (TOML) is written.
        plugin: the plugin the trainer trains with.
        plugin_options: its ``[plugin.options]``.
        tls_ca: the CA certificate that verifies the broker (TLS URLs); when it is not the
            federation CA, a copy goes beside the identity and ``[tls]`` trusts it.
    """

    bus_url: str
    state_dir: Path
    config_path: Path
    plugin: str
    plugin_options: Mapping[str, Any] = field(default_factory=dict)
    tls_ca: Path | None = None

    @property
    def identity_dir(self) -> Path:
        return self.state_dir.resolve() / IDENTITY_DIR


@dataclass(frozen=True, slots=True)
class Installed:
    """What an enrollment wrote."""

    identity: Identity
    identity_dir: Path
    config_path: Path


@dataclass(frozen=True, slots=True)
class OfflineCsr:
    """What ``write_offline_csr`` wrote."""

    key_path: Path
    new_key: bool  # False: the key already in ``key_path`` was reused
    csr_path: Path


async def enroll_online(
    setup: DeviceSetup,
    token: str,
    *,
    federation: str,
    agent_id: str,
    ca_fingerprint: str,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - enroll's one deadline for connect and reply
) -> Installed:
    """Enroll over the bus with ``token`` (``agent.identity.device.enroll``), then write the
    identity and config. The fingerprint and the config are checked before any network.

    Args:
        tls_cert, tls_key: the shared enroll identity, for a locked-down broker.
        timeout: seconds in all, for connecting and the reply.

    Raises:
        IdentityError: as ``enroll`` (a refusal, ``broker_unreachable``, ``no_reply``, a
            failed check of the reply).
        ConfigError: a bad broker URL, TLS files for a plaintext URL, or a config that does
            not validate.
    """
    from agent.bus.url import TlsFiles

    normalize_fingerprint(ca_fingerprint)  # fail before any network
    _trainer_config(setup, agent_id=agent_id, federation=federation, broker_ca=None)
    files = TlsFiles(setup.tls_ca, tls_cert, tls_key)
    result = await enroll(
        setup.bus_url,
        federation=federation,
        agent_id=agent_id,
        token=token,
        ca_fingerprint=ca_fingerprint,
        tls=None if files == TlsFiles() else files,
        timeout=timeout,
    )
    # in a worker thread: each file is fsynced (agent.atomic), and a fleet enrolls many
    # devices in one event loop (agent.fleet.enroll)
    return await asyncio.to_thread(
        _install, setup, key=result.key, cert=result.cert, ca_cert=result.ca_cert
    )


def write_offline_csr(out: Path, *, federation: str, agent_id: str, state_dir: Path) -> OfflineCsr:
    """Air-gapped, step 1: make the device key (or reuse the one already in
    ``state_dir/identity/key.pem``) and write a CSR (RFC 2986, PEM) for it to ``out``.

    Raises:
        IdentityError: an unreadable existing key, or a bad ``agent_id``/``federation``.
    """
    key_path = state_dir / IDENTITY_DIR / KEY_FILE
    fresh = not key_path.exists()
    if fresh:
        key = ca.new_key()
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem.write_private_key(key_path, key)
    else:
        key = pem.load_private_key(key_path)
    csr = ca.build_csr(key, agent_id=agent_id, federation=federation)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, csr.public_bytes(_PEM))
    return OfflineCsr(key_path=key_path, new_key=fresh, csr_path=out)


def import_certificate(
    setup: DeviceSetup,
    cert_path: Path,
    *,
    ca_file: Path,
    ca_fingerprint: str,
    agent_id: str | None = None,
    federation: str | None = None,
) -> Installed:
    """Air-gapped, step 2: check the certificate ``fedbus ca sign`` issued for the key that
    ``write_offline_csr`` made (``check_issued``, against the CA in ``ca_file`` pinned by
    ``ca_fingerprint``; against ``agent_id`` and ``federation`` when given), then write the
    identity and config.

    Raises:
        IdentityError: no key in the state directory (reason ``unreadable``), or a failed
            check (``fingerprint_mismatch``, ``wrong_key``, ...).
        ConfigError: a config that does not validate.
    """
    key_path = setup.state_dir / IDENTITY_DIR / KEY_FILE
    if not key_path.is_file():
        raise IdentityError(
            "unreadable",
            f"no device key at {key_path}: run `fedbus enroll csr` with this --state-dir first",
        )
    key = pem.load_private_key(key_path)
    cert = pem.load_certificate(cert_path)
    ca_cert = pem.load_certificate(ca_file)
    check_issued(
        ca_cert,
        cert,
        key=key,
        ca_fingerprint=ca_fingerprint,
        agent_id=agent_id,
        federation=federation,
    )
    return _install(setup, key=key, cert=cert, ca_cert=ca_cert)


def _trainer_config(
    setup: DeviceSetup, *, agent_id: str, federation: str, broker_ca: Path | None
) -> AgentConfig:
    """The trainer's AgentConfig (validated), with [identity] and, for a TLS URL, [tls].

    Raises:
        ConfigError: the config does not validate (a bad plugin option, URL, ...).
    """
    import msgspec

    from agent.bus.url import parse_broker_url
    from agent.config import AgentConfig
    from agent.role import Role

    ident = setup.identity_dir
    data: dict[str, Any] = {
        "role": str(Role.TRAINER),
        "agent_id": agent_id,
        "federation": federation,
        "bus_url": setup.bus_url,
        "state_dir": setup.state_dir.resolve(),
        "plugin": {"name": setup.plugin, "options": dict(setup.plugin_options)},
        "identity": {
            "cert_file": ident / CERT_FILE,
            "key_file": ident / KEY_FILE,
            "ca_file": ident / DEVICE_CA_FILE,
        },
    }
    if parse_broker_url(setup.bus_url).tls:
        data["tls"] = {
            "ca_file": broker_ca or ident / DEVICE_CA_FILE,
            "cert_file": ident / CERT_FILE,
            "key_file": ident / KEY_FILE,
        }
    text = msgspec.toml.encode(data, enc_hook=str)
    return AgentConfig.parse(text, source="the generated config")


def _install(
    setup: DeviceSetup, *, key: pem.PrivateKey, cert: x509.Certificate, ca_cert: x509.Certificate
) -> Installed:
    """Write the identity files and the config (validated first: nothing is written for a
    config that does not parse)."""
    identity = certificates.identity_of(cert)
    ident = setup.identity_dir
    broker_ca = None  # the federation CA verifies the broker, unless tls_ca is another
    if setup.tls_ca is not None and setup.tls_ca.read_bytes() != ca_cert.public_bytes(_PEM):
        broker_ca = ident / BROKER_CA_FILE
    config = _trainer_config(
        setup, agent_id=identity.agent_id, federation=identity.federation, broker_ca=broker_ca
    )
    ident.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem.write_private_key(ident / KEY_FILE, key)
    pem.write_pem(ident / CERT_FILE, cert)
    pem.write_pem(ident / DEVICE_CA_FILE, ca_cert)
    if config.tls.ca_file == ident / BROKER_CA_FILE and setup.tls_ca is not None:
        write_atomic(ident / BROKER_CA_FILE, setup.tls_ca.read_bytes())
    setup.config_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(setup.config_path, config.to_toml())
    return Installed(identity=identity, identity_dir=ident, config_path=setup.config_path)
