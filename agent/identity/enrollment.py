"""Enrollment over the bus: a device trades a CSR and a one-time token for a certificate.

::

    device (agent.identity.device)                     aggregator (agent.runtime.enrollment)
      key = new_key()          (never leaves the device)
      subscribe fl/{fed}/enroll_reply/{id}
      publish   fl/{fed}/enroll/{id}   EnrollRequest{id, CSR, token}  ──▶
                                          the Dispatcher's checks (size, envelope,
                                          federation, topic, sender), then: check the CSR
                                          (RFC 2986), redeem the token, sign (role
                                          trainer), record in the registry
                ◀── EnrollReply{ok, cert, CA cert}  or  {error, reason, detail}
      check: CA fingerprint == the pinned one, cert issued by that CA (RFC 5280),
             cert's key == our key, CN == our id

Enrollment messages are ordinary *unsigned* envelopes: the device has no identity yet. Their
security rests on the token (256 random bits, single use, expiring, stored only as a SHA-256
in the registry, bound to one agent id) and on the device pinning the CA by the SHA-256
fingerprint of its certificate, which the operator hands over out of band. A man in the
middle can refuse service but cannot obtain a certificate without a token, nor give the
device a certificate from another CA. On a locked-down broker, unenrolled devices reach the
broker with the shared ``enroll`` identity, which may use these two topics only.

A device that enrolls again (a new token from the operator, a new key) gets a new
certificate; its previous one is revoked as superseded (``Registry.record_enrollment``).

Refusal reasons (``EnrollReply.reason``, and ``IdentityError.reason`` on the device): those
of the receive loop's drops (``malformed``, ``oversized``, ``wrong_federation``,
``wrong_topic``, ``sender_mismatch``: the envelope's sender differs from its topic's agent
id), then ``bad_token``, ``expired_token``, ``used_token``, ``wrong_agent`` (the token names
another agent id), ``bad_csr``, ``sender_mismatch`` (the request's agent id differs from its
topic's), ``role_conflict`` (the id belongs to the aggregator or the enroll identity),
``internal_error``; on the device only also ``fingerprint_mismatch``,
``broker_unreachable``, ``no_reply``, ``bad_reply``, ``wrong_key`` and those of
``verify_issued``.
"""

from __future__ import annotations

#: Largest enrollment message accepted, either way (a request is well under 2 KiB).
MAX_ENROLL_PAYLOAD = 32 * 1024
