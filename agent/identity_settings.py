"""``[tls]`` and ``[identity]``: where a node's TLS and identity files are, and how its
certificates and the CRLs are kept fresh (ARCHITECTURE.md §6). A leaf module, re-exported
by ``agent.config``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

Positive = Annotated[float, msgspec.Meta(gt=0)]


class _Table(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    pass


class TlsConfig(_Table, frozen=True):
    """``[tls]``: files for ``mqtts://`` and ``tls://`` bus URLs."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class IdentityConfig(_Table, frozen=True):
    """``[identity]``: this agent's credentials (``fedbus enroll`` writes them).

    When ``cert_file`` is set, every message this agent sends is signed with ``key_file``,
    and every message it receives must be signed by a certificate issued by ``ca_file``'s CA
    (see ``agent.identity``). The aggregator also names its CA directory (``ca.pem``,
    ``ca.key``) and registry (enrolled agents, tokens, revocations).

    Attributes:
        cert_file, key_file: this agent's certificate and ECDSA P-256 key (PEM, key 0600).
        ca_file: the federation CA's certificate (PEM).
        ca_dir: aggregator only: the CA's directory, for enrollment and revocation.
        registry: aggregator only: the registry database (default ``ca_dir/registry.sqlite``).
        max_clock_skew: seconds a message's timestamp may differ from our clock.
        renew_before_days, renew_check_every: trainer: renew the certificate over the bus
            this many days before it expires (0: never), checking every so many seconds.
        crl_refresh_before_days, crl_valid_days, broker_dir, broker_pid_file: aggregator:
            re-sign the CRLs (``ca_dir``'s, ``broker_dir``'s, then SIGHUP that pid) this
            close to nextUpdate (0: never), for so many days (``agent.runtime.crl_refresh``).
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    ca_dir: Path | None = None
    registry: Path | None = None
    max_clock_skew: Positive = 300.0
    renew_before_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    renew_check_every: Positive = 3600.0
    crl_refresh_before_days: Annotated[float, msgspec.Meta(ge=0)] = 7.0
    crl_valid_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30
    broker_dir: Path | None = None
    broker_pid_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None
