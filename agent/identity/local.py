"""This agent's own credentials, loaded from the ``[identity]`` files, checked for use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.config import IdentityConfig
from agent.errors import IdentityError
from agent.identity.certificates import verify_issued
from agent.identity.keypair import recover_pair
from agent.identity.pem import load_certificate, load_private_key
from agent.identity.verifier import Verifier
from agent.messages.signing import Signer
from agent.role import Identity


@dataclass(frozen=True, slots=True)
class Credentials:
    """A signer for our messages and the CA to check everyone else's against."""

    signer: Signer
    ca: x509.Certificate
    identity: Identity
    max_clock_skew: float

    @classmethod
    def load(cls, config: IdentityConfig, *, agent_id: str, federation: str) -> Credentials:
        """Read and check the files named in ``[identity]``.

        Raises:
            IdentityError: unreadable files (``unreadable``), a certificate the CA did not
                issue or that expired, one naming another agent or federation
                (``wrong_identity``), or a key that does not match it (``key_mismatch``).
        """
        if config.cert_file is None or config.key_file is None or config.ca_file is None:
            raise IdentityError("unreadable", "[identity] needs cert_file, key_file, ca_file")
        recover_pair([config.cert_file], [config.key_file])  # an interrupted key rotation
        key = load_private_key(config.key_file)
        cert = load_certificate(config.cert_file)
        ca = load_certificate(config.ca_file)
        identity = verify_issued(ca, cert)
        if identity.agent_id != agent_id or identity.federation != federation:
            raise IdentityError(
                "wrong_identity",
                f"{config.cert_file} names {identity.agent_id!r} of {identity.federation!r}, "
                f"this config is {agent_id!r} of {federation!r}",
            )
        mine = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        theirs = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        if mine != theirs:
            raise IdentityError("key_mismatch", f"{config.key_file} is not the key of the cert")
        return cls(Signer(key, cert), ca, identity, config.max_clock_skew)

    def verifier(self, *, revoked: Callable[[Identity], bool] | None = None) -> Verifier:
        """A verifier for incoming messages against our CA."""
        return Verifier(self.ca, revoked=revoked, max_clock_skew=self.max_clock_skew)
