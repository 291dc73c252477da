"""The aggregator renews its own certificate before it expires (ARCHITECTURE.md §6).

Its certificate (``[identity] cert_file``, issued by ``fedbus ca init`` for a year) is
issued by the CA the aggregator holds (``ca_dir``), so no request travels: every
``check_every`` seconds, once less than ``renew_before`` seconds are left, a new key is made
and staged (``agent.identity.keypair``), the CA signs a certificate for it (same agent id,
role aggregator), the registry records it (which supersedes the old one: the CRL lists the
old serial from its next refresh), and the pair is committed to every copy ``[identity]``
and ``[tls]`` name. The TLS context every connection of the process shares is reloaded, and
``adopt`` hands the new ``Signer`` to whatever signs (the current run's outbox and ledger,
the enrollment service): messages and ledger records from then on carry the new
certificate; records signed before stay valid (checked at the time they were made).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.config import AgentConfig
from agent.errors import IdentityError
from agent.identity.ca import CertificateAuthority, build_csr, sign_csr
from agent.identity.certificates import identity_of, verify_issued
from agent.identity.keypair import commit_pair, distinct, stage_key
from agent.identity.pem import load_certificate
from agent.identity.registry import Registry
from agent.messages.signing import Signer
from agent.role import Role

log = structlog.get_logger(__name__)

_DAY = 86400.0


@dataclass(slots=True)
class OwnRenewer:
    """Renews the aggregator's certificate from its own CA (see the module docstring)."""

    authority: CertificateAuthority
    registry: Registry
    config: AgentConfig
    adopt: Callable[[Signer], None]
    tls: ssl.SSLContext | None = None
    renew_before: float = 30 * _DAY
    check_every: float = 3600.0
    valid_days: int = 365
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    def renew_if_due(self) -> Signer | None:
        """One check; the new signer when the certificate was renewed (files written).

        Raises:
            IdentityError: the certificate in use is not the CA's aggregator certificate.
            OSError: the files cannot be written.
        """
        ident, tls = self.config.identity, self.config.tls
        if ident.cert_file is None or ident.key_file is None or self.renew_before <= 0:
            return None
        cert = load_certificate(ident.cert_file)
        left = (cert.not_valid_after_utc - self.clock()).total_seconds()
        if left > self.renew_before:
            return None
        who = verify_issued(self.authority.cert, cert)
        if who.role is not Role.AGGREGATOR:
            raise IdentityError("wrong_role", f"{ident.cert_file} is not an aggregator's")
        certs = distinct(ident.cert_file, tls.cert_file)
        keys = distinct(ident.key_file, tls.key_file)
        key = stage_key(keys)
        csr = build_csr(key, agent_id=who.agent_id, federation=who.federation)
        new = sign_csr(
            self.authority,
            csr,
            agent_id=who.agent_id,
            role=Role.AGGREGATOR,
            valid_days=self.valid_days,
        )
        commit_pair(certs, keys, new, key)
        self.registry.record_enrollment(identity_of(new), new)  # supersedes the old serial
        if self.tls is not None:
            self.tls.load_cert_chain(str(tls.cert_file or certs[0]), str(tls.key_file or keys[0]))
        log.info(
            "aggregator_certificate_renewed",
            serial=new.serial_number,
            superseded=who.serial,
            not_after=new.not_valid_after_utc.isoformat(),
        )
        return Signer(key, new)

    async def run(self) -> None:
        """Check, renew when due, hand the new signer over, sleep; until cancelled."""
        while True:
            try:
                signer = await asyncio.to_thread(self.renew_if_due)
            except (IdentityError, OSError, sqlite3.Error, ssl.SSLError) as exc:
                log.warning("aggregator_certificate_renewal_failed", detail=str(exc))
            else:
                if signer is not None:
                    self.adopt(signer)
            await asyncio.sleep(self.check_every)
