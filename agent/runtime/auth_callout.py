"""nats-server's auth callout, served by the aggregator: a device enrolled a moment ago can
connect at once, and a revoked or superseded certificate is refused by the broker itself.

nats-server (>= 2.10, config ``authorization.auth_callout``, rendered by
``agent.lockdown.nats``) verifies a client's TLS certificate against the federation CA and,
for every client but the aggregator (``auth_users``), sends an authorization request JWT on
``$SYS.REQ.USER.AUTH`` (the format: ``agent.lockdown.nats_jwt``). ``CalloutAuthority.decide``
answers it: the client certificate (``client_tls.verified_chains[0][0]``) must be issued by
the CA to a trainer or the enroll identity, valid now, and the registry's *current*
certificate of that agent (``Registry.cert_status``: not revoked, not superseded by a
renewal or re-enrollment); then the answer is a user JWT with that identity's permissions
(the same allow-lists as the static config, ``agent.lockdown.access``), valid until the
certificate expires or ``ttl`` seconds pass, whichever is first (nats-server then closes the
connection and the client's reconnect asks again, so a revocation reaches open sessions
within ``ttl``). Anything else is answered with an error, which refuses the connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import nats
import nkeys
import structlog
from cryptography import x509
from nats.errors import Error as NatsError

from agent.bus.backoff import Backoff
from agent.bus.url import parse_broker_url
from agent.config import AgentConfig
from agent.errors import IdentityError
from agent.identity.certificates import verify_issued
from agent.identity.registry import CertStatus, Registry
from agent.lockdown import nats_jwt
from agent.lockdown.access import aggregator_rules, enroll_rules, trainer_rules
from agent.lockdown.nats import CALLOUT_SUBJECT, subjects
from agent.role import Role

log = structlog.get_logger(__name__)


class CalloutAuthority:
    """Decides authorization requests (see the module docstring).

    Args:
        ca: the federation CA.
        registry: current, revoked and superseded certificates.
        issuer: the account NKey the broker config names as ``issuer``.
        ttl: the longest a user JWT lives (s).
    """

    def __init__(
        self, ca: x509.Certificate, registry: Registry, issuer: nkeys.KeyPair, *, ttl: float
    ) -> None:
        self._ca = ca
        self._registry = registry
        self._issuer = issuer
        self._ttl = ttl
        names = ca.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
        self._federation = str(names[0].value) if names else ""

    def decide(self, request: str) -> str:
        """The authorization response JWT for the request JWT ``request``: a user JWT, or an
        error. Never raises for a bad request (a refusal names why)."""
        try:
            claims = nats_jwt.decode(request)
            nats_part = claims["nats"]
            user_nkey, server_id = str(nats_part["user_nkey"]), str(nats_part["server_id"]["id"])
        except (IdentityError, KeyError, TypeError) as exc:
            log.warning("nats_auth_refused", reason="bad_request", detail=str(exc)[:200])
            return ""  # no subject to answer to: the server times the client out
        try:
            jwt = self._user_jwt(nats_part, user_nkey)
        except IdentityError as exc:
            log.warning("nats_auth_refused", reason=exc.reason, detail=str(exc)[:200])
            response = nats_jwt.response_claims(user_nkey, server_id, error=exc.reason)
        else:
            response = nats_jwt.response_claims(user_nkey, server_id, jwt=jwt)
        return nats_jwt.encode(response, self._issuer)

    def _user_jwt(self, request: dict[str, Any], user_nkey: str) -> str:
        try:
            pem = request["client_tls"]["verified_chains"][0][0]
            cert = x509.load_pem_x509_certificate(str(pem).encode())
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise IdentityError("no_certificate", "no verified client certificate") from exc
        identity = verify_issued(self._ca, cert)
        status = self._registry.cert_status(identity.agent_id, identity.serial)
        if status is not CertStatus.CURRENT:
            raise IdentityError(str(status), f"{identity.agent_id}: certificate {status}")
        if identity.role is Role.TRAINER:
            rules, who = trainer_rules(), identity.agent_id
        elif identity.role is Role.ENROLL:
            rules, who = enroll_rules(), "+"
        elif identity.role is Role.AGGREGATOR:
            rules, who = aggregator_rules(), identity.agent_id
        else:
            raise IdentityError("wrong_role", f"a {identity.role} certificate has no client rights")
        publish, subscribe = subjects(rules, self._federation, agent_id=who)
        expires = min(cert.not_valid_after_utc.timestamp(), time.time() + self._ttl)
        claims = nats_jwt.user_claims(
            user_nkey,
            name=identity.agent_id,
            publish=publish,
            subscribe=subscribe,
            expires=int(expires),
        )
        log.info("nats_auth_granted", agent_id=identity.agent_id, role=str(identity.role))
        return nats_jwt.encode(claims, self._issuer)


async def serve_callout(
    authority: CalloutAuthority,
    url: str,
    *,
    tls: ssl.SSLContext,
    ready: asyncio.Event | None = None,
) -> None:
    """Answer authorization requests on ``url`` (``tls://host:port``, or every node of a
    cluster comma-separated; connecting as the
    aggregator, an ``auth_users`` identity) until cancelled; ``ready`` is set once
    subscribed. Each decision runs in a worker thread (the registry is SQLite)."""

    async def handle(msg: Any) -> None:
        try:
            response = await asyncio.to_thread(authority.decide, msg.data.decode(errors="replace"))
            if response and msg.reply:
                await msg.respond(response.encode())
        except Exception:  # one request must not stop the service
            log.exception("nats_auth_callout_failed")

    servers = [entry.strip() for entry in url.split(",")]  # a cluster: every node
    host = servers[0].split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    backoff = Backoff(initial=0.5, maximum=30.0)
    attempt = 0
    while True:  # the broker may start after us: keep trying, never end the aggregator
        attempt += 1
        try:
            connection = await nats.connect(
                servers,
                tls=tls,
                tls_hostname=host if len(servers) == 1 else None,
                name="fedbus-auth-callout",
                max_reconnect_attempts=-1,
                allow_reconnect=True,
            )
            break
        except (NatsError, OSError, TimeoutError) as exc:
            delay = backoff.ceiling(attempt)
            log.warning("nats_auth_callout_connect_failed", detail=repr(exc)[:200], retry_in=delay)
            await asyncio.sleep(delay)
    try:
        await connection.subscribe(CALLOUT_SUBJECT, cb=handle)
        await connection.flush()
        log.info("nats_auth_callout_serving", url=url)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()  # until cancelled
    finally:
        await connection.close()


def callout_for(
    config: AgentConfig, ca: x509.Certificate, registry: Registry, *, ttl: float = 3600.0
) -> CalloutAuthority | None:
    """The aggregator's callout, when its bus is NATS over TLS and its CA directory holds
    the callout key (``nats_jwt.CALLOUT_SEED``); None otherwise."""
    ca_dir = config.identity.ca_dir
    address = parse_broker_url(config.bus_url)
    if ca_dir is None or address.transport != "nats" or not address.tls:
        return None
    seed = ca_dir / nats_jwt.CALLOUT_SEED
    if not seed.is_file():
        return None
    return CalloutAuthority(ca, registry, nats_jwt.load_or_create_issuer(seed), ttl=ttl)
