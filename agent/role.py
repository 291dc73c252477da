"""The one vocabulary of roles: who a certificate names, who publishes on a topic, what a
config runs and which service unit the CLI installs; and ``Identity``, the whole of who a
certificate names (a verified message's signer).

A leaf module (it imports nothing from ``agent``), so every layer can use it without cycles.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """Who runs a piece of the runtime, or holds a certificate.

    ``TRAINER`` and ``AGGREGATOR`` are the two runtime roles (an *agent* is a process running
    either; on a device it is a trainer). ``ENROLL`` is the shared identity a new device uses
    only to ask for its own certificate, and ``BROKER`` the broker's TLS server certificate.
    """

    TRAINER = "trainer"
    AGGREGATOR = "aggregator"
    ENROLL = "enroll"
    BROKER = "broker"


#: The roles a config, a process or a service unit can run.
RUNTIME_ROLES = (Role.TRAINER, Role.AGGREGATOR)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate names (``agent.identity.certificates.identity_of``).

    Attributes:
        agent_id: the subject's CN.
        federation: the subject's O.
        role: the subject's OU.
        serial: the certificate's serial number.
    """

    agent_id: str
    federation: str
    role: Role
    serial: int
