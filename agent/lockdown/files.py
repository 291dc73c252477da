"""Write a locked-down broker's directory, rewrite it when the members change, reload.

::

    files = write_broker_config("mqtt", ca, out_dir, Members("aggregator", ("agent-1",)),
                                port=8883)
    ...                                             # later: an agent is revoked
    regenerate(files, ca, members.revoke("agent-1", serial))
    reload(pid)                                     # or EmbeddedBroker.reload(), which waits

Every file is written atomically (temporary file, fsync, rename), so a broker that reloads
meanwhile reads the old or the new version, never half of one; the server key is 0600.
The broker's certificate is kept across rewrites while it is still valid for the hosts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.atomic import write_text
from agent.brokers import HOST, BrokerKind, EmbeddedBroker
from agent.errors import ConfigError, IdentityError, TransportError
from agent.identity.ca import CertificateAuthority, build_crl, issue
from agent.identity.certificates import verify_issued
from agent.identity.pem import load_certificate, load_private_key, write_pem, write_private_key
from agent.lockdown import layout, mosquitto, nats
from agent.lockdown.members import Members
from agent.role import Role

#: The broker's certificate is reissued when it has less than this left.
RENEW_BEFORE = dt.timedelta(days=30)
_SCHEMES: dict[str, str] = {"mqtt": "mqtts", "nats": "tls"}
#: Characters the config files could not carry in a path (mosquitto: none quoted at all).
_UNQUOTABLE = "\"'\\#$"


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """A generated broker directory and the settings it was written with."""

    kind: BrokerKind
    directory: Path
    host: str
    port: int
    server_names: tuple[str, ...] = ()
    mosquitto_user: str | None = None
    callout_issuer: str | None = None
    #: nats with the callout: the system account's NKey user (``agent.runtime.evict``)
    system_user: str | None = None
    #: nats: the blocks of a cluster node or leaf node, and the users listed besides the
    #: identities (``agent.lockdown.nats_cluster``, ``agent.lockdown.topology``)
    topology: tuple[str, ...] = ()
    extra_users: tuple[tuple[str, str], ...] = ()
    #: the CN of the broker's certificate (a site's name for a leaf node)
    cert_name: str = "broker"

    @property
    def config(self) -> Path:
        """The file to start the broker with (``-c``)."""
        name = layout.MOSQUITTO_CONF if self.kind == "mqtt" else layout.NATS_CONF
        return self.directory / name

    @property
    def ca_file(self) -> Path:
        return self.directory / layout.CA_FILE

    @property
    def cert_file(self) -> Path:
        return self.directory / layout.CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.directory / layout.KEY_FILE

    @property
    def url(self) -> str:
        """The bus URL clients dial (``mqtts://`` or ``tls://``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{_SCHEMES[self.kind]}://{host}:{self.port}"


def write_broker_config(
    kind: BrokerKind,
    ca: CertificateAuthority,
    directory: Path,
    members: Members,
    *,
    port: int,
    host: str = HOST,
    server_names: Sequence[str] = (),
    mosquitto_user: str | None = None,
    crl_valid_days: int = 30,
    callout_issuer: str | None = None,
    system_user: str | None = None,
    topology: Sequence[str] = (),
    extra_users: Sequence[tuple[str, str]] = (),
    cert_name: str = "broker",
) -> BrokerFiles:
    """Write everything ``kind``'s broker needs to admit ``members`` of ``ca``'s federation.

    Args:
        directory: created if needed; the files are named in :mod:`agent.lockdown.layout`.
        port, host: the listener (``0.0.0.0`` listens everywhere).
        server_names: extra DNS names / addresses for the broker certificate's SAN (it
            always has ``host`` unless unspecified, ``127.0.0.1`` and ``localhost``).
        mosquitto_user: the account mosquitto drops to when started as root; it must be
            able to read the files (``chown`` the key). :func:`local_mosquitto_user` for a
            broker this process starts.
        crl_valid_days: the CRL's lifetime: regenerate and reload before it ends, or
            mosquitto refuses every client (the aggregator re-signs it:
            ``agent.runtime.crl_refresh``).
        callout_issuer: nats only: the account NKey of the aggregator's auth callout, which
            then admits every client but the aggregator (``agent.lockdown.nats``).
        system_user: nats with ``callout_issuer`` only: the user NKey of the system account,
            with which the aggregator closes revoked agents' connections (``runtime.evict``).
        topology, extra_users, cert_name: nats only: a cluster node's or leaf node's blocks,
            its site users, and its certificate's CN (``agent.lockdown.topology``).

    Raises:
        ConfigError: an unknown kind, a bad port, or a directory the configs cannot name.
    """
    if kind not in _SCHEMES:
        raise ConfigError(f"unknown broker kind {kind!r}; expected 'mqtt' or 'nats'")
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is not a TCP port")
    directory = directory.resolve()
    if any(char.isspace() or char in _UNQUOTABLE for char in str(directory)):
        raise ConfigError(
            f"{directory}: the broker configs cannot name a path with whitespace "
            f"or any of {_UNQUOTABLE}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    files = BrokerFiles(
        kind,
        directory,
        host,
        port,
        tuple(server_names),
        mosquitto_user,
        callout_issuer,
        system_user,
        tuple(topology),
        tuple(extra_users),
        cert_name,
    )
    write_pem(files.ca_file, ca.cert)
    _ensure_server_certificate(ca, files, _san_hosts(host, server_names))
    fed = ca.federation
    if kind == "mqtt":
        crl = build_crl(ca, members.revoked_serials, valid_days=crl_valid_days)
        write_pem(directory / layout.CRL_FILE, crl)
        acl = mosquitto.render_acl(
            fed, aggregator=members.aggregator, revoked=members.revoked_ids, enroll=members.enroll
        )
        write_text(directory / layout.MOSQUITTO_ACL, acl)
        text = mosquitto.render_conf(
            host=host, port=port, directory=str(directory), user=mosquitto_user
        )
    else:
        text = nats.render_conf(
            fed,
            host=host,
            port=port,
            directory=str(directory),
            aggregator=members.aggregator,
            agents=members.trainers,
            revoked=members.revoked_ids,
            enroll=members.enroll,
            callout_issuer=callout_issuer,
            system_user=system_user,
            topology=topology,
            extra_users=extra_users,
        )
    write_text(files.config, text)
    return files


def regenerate(files: BrokerFiles, ca: CertificateAuthority, members: Members) -> BrokerFiles:
    """Rewrite ``files`` for new ``members`` (an enrollment, a revocation) with the same
    listener; then reload the broker (:func:`reload`, ``EmbeddedBroker.reload``)."""
    return write_broker_config(
        files.kind,
        ca,
        files.directory,
        members,
        port=files.port,
        host=files.host,
        server_names=files.server_names,
        mosquitto_user=files.mosquitto_user,
        callout_issuer=files.callout_issuer,
        system_user=files.system_user,
        topology=files.topology,
        extra_users=files.extra_users,
        cert_name=files.cert_name,
    )


def reload(pid: int) -> None:
    """Ask a running broker to reread its files: SIGHUP, for both. mosquitto 2.0 then rereads
    its config, ACL file, CRL and server certificate; nats-server its config (users,
    permissions, TLS), disconnecting clients whose user is gone. Returns at once: the broker
    applies it shortly after (``EmbeddedBroker.reload`` waits for the log line).

    Raises:
        TransportError: no process ``pid`` (or not ours to signal).
    """
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise TransportError(f"cannot signal broker pid {pid}: {exc}") from exc


def local_mosquitto_user() -> str | None:
    """``mosquitto_user`` for a broker started by this process (tests, the demo): ``root``
    when we are root, so that mosquitto can read the files we own (0600 key, private temp
    directory); otherwise None, as mosquitto then runs as us anyway."""
    return "root" if os.geteuid() == 0 else None


def embedded_broker(
    files: BrokerFiles, *, start_timeout: float = 10.0, stop_grace: float = 5.0
) -> EmbeddedBroker:
    """An ``EmbeddedBroker`` (not started) running ``files``' config on their port.

    Raises:
        ConfigError: ``files`` listen elsewhere than 127.0.0.1.
    """
    if files.host != HOST:
        raise ConfigError(f"an embedded broker listens on {HOST}, not {files.host}")
    return EmbeddedBroker(
        files.kind,
        port=files.port,
        config_file=files.config,
        tls=True,
        start_timeout=start_timeout,
        stop_grace=stop_grace,
    )


# -- helpers ---------------------------------------------------------------------------------


def _san_hosts(host: str, server_names: Sequence[str]) -> list[str]:
    names = list(server_names)
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            names.append(host)
    except ValueError:
        names.append(host)
    names += ["127.0.0.1", "localhost"]
    return list(dict.fromkeys(names))


def _san_of(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return ips | set(san.get_values_for_type(x509.DNSName))


def _ensure_server_certificate(
    ca: CertificateAuthority, files: BrokerFiles, hosts: list[str]
) -> None:
    """Keep the broker's certificate if it is ours, current and names every host."""
    try:
        cert = load_certificate(files.cert_file)
        key = load_private_key(files.key_file)
        identity = verify_issued(ca.cert, cert)
    except IdentityError:
        pass
    else:
        left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
        names = {_normal(host) for host in hosts}
        if (
            identity.role is Role.BROKER
            and identity.agent_id == files.cert_name
            and _dials_brokers(cert)
            and left > RENEW_BEFORE
            and key.public_key() == cert.public_key()
            and names <= _san_of(cert)
        ):
            return
    key, cert = issue(ca, files.cert_name, role=Role.BROKER, hosts=hosts)
    write_private_key(files.key_file, key)
    write_pem(files.cert_file, cert)


def _dials_brokers(cert: x509.Certificate) -> bool:
    """The certificate may also be a TLS client (routes, leaf remotes): older broker
    certificates were server-only and are reissued."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage


def _normal(host: str) -> str:
    """An address as ``_san_of`` spells it (``::1``, not ``0::1``); a DNS name as is."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
