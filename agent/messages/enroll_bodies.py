"""The enrollment and certificate-renewal bodies (``enroll``, ``enroll_reply``, ``renew``,
``renew_reply``; ARCHITECTURE.md §6), re-exported by ``agent.messages.bodies``."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from agent.messages.base import Body, Name, Text

#: A PEM CSR or certificate (a P-256 one is under 1 KiB; the bound keeps junk out).
Pem = Annotated[bytes, msgspec.Meta(max_length=8192)]
#: A one-time enrollment token (``secrets.token_urlsafe(32)`` is 43 characters).
Token = Annotated[str, msgspec.Meta(max_length=256)]
#: A snake_case refusal reason (``bad_token``, ``expired_token``, ...), empty when ok.
Reason = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{0,64}$")]


class EnrollRequest(Body, frozen=True):
    """device → aggregator on ``enroll/{agent_id}``: a CSR (RFC 2986, PEM) for ``agent_id``
    and the one-time token that authorises it (the private key never travels), and the CA
    SHA-256 the device pinned: a wrong pin is refused before the token is redeemed."""

    agent_id: Name
    csr: Pem
    token: Token
    ca_fingerprint: Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{64})?$")] = ""


class EnrollReply(Body, frozen=True):
    """aggregator → device on ``enroll_reply/{agent_id}``: the certificate and the CA
    certificate (PEM) when ``status`` is ``"ok"``, else the refusal ``reason`` and ``detail``.

    ``request`` is the message id of the request it answers (empty when the request could not
    be read): a device takes only the answer to its own request, so junk that someone else
    sends on its enroll topic cannot end its enrollment with a refusal."""

    agent_id: Name
    status: Literal["ok", "error"]
    reason: Reason = ""
    detail: Text = ""
    cert: Pem | None = None
    ca: Pem | None = None
    request: Annotated[bytes, msgspec.Meta(max_length=16)] = b""


class RenewRequest(Body, frozen=True):
    """trainer → aggregator on ``renew/{agent_id}``, signed with the certificate it renews
    (no token): a CSR (PEM) for ``agent_id``; ``nonce`` comes back in the reply."""

    agent_id: Name
    csr: Pem
    nonce: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]


class RenewReply(Body, frozen=True):
    """aggregator → the trainer's inbox: the new certificate (PEM) when ``status`` is
    ``"ok"`` (the old one is superseded), else why not; ``nonce`` is the request's."""

    agent_id: Name
    status: Literal["ok", "error"]
    nonce: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    reason: Reason = ""
    detail: Text = ""
    cert: Pem | None = None
