"""What a trainer loads only with identities on (``[identity] enabled``): its credentials,
the ledger head each model's records are checked against, the certificate renewer.

Their modules are imported here when first asked for, so a trainer without identities never
imports X.509 (``cryptography.x509`` and fedbus's certificate code: about 0.03 s of CPU at
every start; ``tests/test_light_agent.py`` checks it).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.identity.local import Credentials
    from agent.ledger.head import LedgerHead
    from agent.runtime.outbox import Outbox
    from agent.runtime.renewer import CertificateRenewer


def credentials(config: AgentConfig) -> Credentials | None:
    """The checked ``[identity]`` files, or None with identities off.

    Raises:
        IdentityError: as ``Credentials.load``.
    """
    if not config.identity.enabled:
        return None
    from agent.identity.local import Credentials

    return Credentials.load(config.identity, agent_id=config.agent_id, federation=config.federation)


def ledger_head(config: AgentConfig, creds: Credentials | None) -> LedgerHead | None:
    """The ledger head in ``state_dir`` checked against the CA (None with identities off)."""
    if creds is None:
        return None
    from agent.ledger.head import HEAD_FILE, LedgerHead

    return LedgerHead(config.state_dir / HEAD_FILE, creds.ca)


def renewer(
    config: AgentConfig, outbox: Outbox, creds: Credentials | None, tls: ssl.SSLContext | None
) -> CertificateRenewer | None:
    """The certificate renewer (``runtime.renewer.renewer_for``; None with identities off)."""
    if creds is None:
        return None
    from agent.runtime.renewer import renewer_for

    return renewer_for(config, outbox, creds.ca, tls)
