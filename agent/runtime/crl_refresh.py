"""Keeping the CRLs fresh: the long-lived aggregator re-signs them before they expire.

A CRL (RFC 5280 §5.1.2.5) carries a nextUpdate; past it mosquitto refuses every TLS
handshake, so the federation stops. The aggregator, which holds the CA, checks every
``check_every`` seconds each CRL it keeps (``ca_dir/crl.pem`` and, when configured, the
broker directory's ``crl.pem``, which mosquitto reads): one missing, unreadable, within
``refresh_before`` of its nextUpdate, or listing other serials than the registry's revoked
ones (a revocation, or a certificate superseded by a renewal or re-enrollment, since it was
written) is signed again from the registry's revoked serials, valid ``valid_days`` more, and
written atomically. When the broker's copy changed the broker
is told to reread it: SIGHUP to the pid in ``pid_file`` (mosquitto 2 rereads its CRL on
SIGHUP, ``agent.lockdown.files.reload``), or the ``reload`` callback given.

At each check it also sets the gauges an operator alerts on: the earliest CRL nextUpdate,
and the notAfter of every enrolled agent's current certificate (from the registry).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from prometheus_client import Gauge

from agent.config import AgentConfig
from agent.errors import TransportError
from agent.identity.ca import CertificateAuthority, build_crl
from agent.identity.pem import write_pem
from agent.identity.registry import CRL_FILE, AgentStatus, Registry
from agent.lockdown.files import reload as sighup

log = structlog.get_logger(__name__)

_DAY = 86400.0


def _load(path: Path) -> x509.CertificateRevocationList | None:
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None


def next_update(path: Path) -> dt.datetime | None:
    """The nextUpdate of the CRL in ``path`` (None: no file, not a CRL, or none set)."""
    crl = _load(path)
    return None if crl is None else crl.next_update_utc


@dataclass(slots=True)
class CrlRefresher:
    """Re-signs the CRLs before they expire (see the module docstring).

    Args:
        ca: the federation CA.
        registry: the revoked serials.
        ca_dir: its ``crl.pem`` is kept fresh.
        broker_dir: a broker directory whose ``crl.pem`` is kept fresh too (None: none).
        pid_file: the broker's pid file, for SIGHUP after its CRL changed.
        reload: called instead of the SIGHUP (tests: ``EmbeddedBroker.reload``).
        refresh_before: seconds before nextUpdate from which to re-sign.
        valid_days: the re-signed CRL's lifetime.
        check_every: seconds between checks (how soon a revocation reaches mosquitto).
        metrics_registry: where ``fedbus_crl_next_update_timestamp_seconds`` and
            ``fedbus_agent_certificate_expiry_timestamp_seconds{agent_id}`` go.
    """

    ca: CertificateAuthority
    registry: Registry
    ca_dir: Path
    broker_dir: Path | None = None
    pid_file: Path | None = None
    reload: Callable[[], None] | None = None
    refresh_before: float = 7 * _DAY
    valid_days: float = 30
    check_every: float = 300.0
    metrics_registry: Any = None
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    _gauge: Gauge | None = None
    _agents: Gauge | None = None

    def __post_init__(self) -> None:
        if self.metrics_registry is not None:
            self._gauge = Gauge(
                "fedbus_crl_next_update_timestamp_seconds",
                "nextUpdate of the CRL that expires first (Unix seconds).",
                registry=self.metrics_registry,
            )
            self._agents = Gauge(
                "fedbus_agent_certificate_expiry_timestamp_seconds",
                "notAfter of each enrolled agent's current certificate (Unix seconds).",
                ["agent_id"],
                registry=self.metrics_registry,
            )

    def paths(self) -> list[Path]:
        found = [self.ca_dir / CRL_FILE]
        if self.broker_dir is not None:
            found.append(self.broker_dir / CRL_FILE)
        return found

    def stale(self, path: Path) -> bool:
        """True when ``path`` must be re-signed now (see the module docstring)."""
        crl = _load(path)
        when = None if crl is None else crl.next_update_utc
        if crl is None or when is None:
            return True
        if (when - self.clock()).total_seconds() <= self.refresh_before:
            return True
        listed = {r.serial_number for r in crl}
        return listed != {serial for serial, _ in self.registry.revoked_serials()}

    def refresh(self) -> list[Path]:
        """One check: re-sign what is stale; reload the broker if its copy changed. Returns
        the CRLs written.

        Raises:
            OSError: a CRL that cannot be written.
        """
        written = []
        crl = None
        for path in self.paths():
            if self.stale(path):
                crl = crl or build_crl(
                    self.ca, self.registry.revoked_serials(), valid_days=self.valid_days
                )
                write_pem(path, crl)
                written.append(path)
                log.info("crl_resigned", path=str(path), next_update=crl.next_update_utc)
        if self.broker_dir is not None and self.broker_dir / CRL_FILE in written:
            self._reload_broker()
        if self._gauge is not None:
            updates = [u for u in map(next_update, self.paths()) if u is not None]
            if updates:
                self._gauge.set(min(updates).timestamp())
        if self._agents is not None:
            self._agents.clear()
            for row in self.registry.agents():
                if row.status is AgentStatus.ENROLLED and row.expires_at is not None:
                    self._agents.labels(row.agent_id).set(row.expires_at.timestamp())
        return written

    def _reload_broker(self) -> None:
        if self.reload is not None:
            self.reload()
            return
        if self.pid_file is None:
            log.warning("crl_reload_skipped", reason="no broker_pid_file")
            return
        try:
            pid = int(self.pid_file.read_text().split()[0])
            sighup(pid)
        except (OSError, ValueError, IndexError, TransportError) as exc:
            log.warning("crl_reload_failed", pid_file=str(self.pid_file), detail=str(exc))
            return
        log.info("broker_reloaded", pid=pid, reason="crl_resigned")

    async def run(self) -> None:
        """Check, re-sign, sleep; until cancelled. A failed write is logged and retried."""
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except (OSError, sqlite3.Error) as exc:
                log.warning("crl_refresh_failed", detail=str(exc))
            await asyncio.sleep(self.check_every)


def crl_refresher_for(
    config: AgentConfig, ca: CertificateAuthority, registry: Registry, metrics_registry: Any
) -> CrlRefresher | None:
    """The aggregator's CRL refresher for ``[identity]`` (None without a CA directory or
    with ``crl_refresh_before_days = 0``)."""
    ident = config.identity
    if ident.ca_dir is None or ident.crl_refresh_before_days == 0:
        return None
    return CrlRefresher(
        ca=ca,
        registry=registry,
        ca_dir=ident.ca_dir,
        broker_dir=ident.broker_dir,
        pid_file=ident.broker_pid_file,
        refresh_before=ident.crl_refresh_before_days * _DAY,
        valid_days=ident.crl_valid_days,
        metrics_registry=metrics_registry,
    )
