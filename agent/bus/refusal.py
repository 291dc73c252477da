"""A broker that refuses this agent: what each library reports, and when the bus gives up.

What a refusal looks like, per broker (measured against mosquitto 2.0 and nats-server 2.10+,
``tests/test_refusal_brokers.py``):

- **mosquitto, certificate in its CRL** (``crlfile``, after the SIGHUP that
  ``runtime.crl_refresh`` sends): the broker ends the TLS handshake with the alert
  ``certificate_revoked`` (RFC 8446 §6.2, alert 44). Under TLS 1.3 the client's handshake
  has already returned when the alert arrives, so OpenSSL raises it on the first read:
  ``ssl.SSLError`` with ``reason == "SSLV3_ALERT_CERTIFICATE_REVOKED"``. paho-mqtt logs it
  (``failed to receive on socket``, the error object in the log record's args) and drops
  the connection; aiomqtt, not connected yet, ignores that disconnect and waits for a
  CONNACK that never comes (a connect timeout). The MQTT adapter therefore gives paho its
  own logger and reads the error from it (``TlsAlertWatch``). Final: only a re-enrollment
  helps. An expired CRL gets the alert ``certificate_expired`` instead, whatever our
  certificate: not a refusal, retried for as long as it takes (the aggregator re-signs the
  CRL; giving up would stop a whole fleet for good while the aggregator is down).
- **mosquitto, ACL**: the CONNACK is accepted (the ACL denies publishes, 0x87 PUBACKs).
- **nats-server, auth callout or a static user list**: ``-ERR 'Authorization Violation'``
  (``nats.errors.AuthorizationError``) whatever the callout's ``error`` said: the server
  logs that string but never sends it to the client (nats-io/nats-server#6254). It means
  revoked or superseded, but also enrolled a moment ago on a server not reloaded yet, or a
  callout service that is down (the aggregator restarting). Not final: the bus retries for
  ``BusSettings.refusal_grace`` seconds of refusals in a row, then stops.

``RefusalWatch`` holds that decision for the supervisor; ``BrokerRefusedError`` (exit status
78, ``RestartPreventExitStatus=``) is what the role then raises.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from enum import StrEnum

from agent.errors import BrokerRefusedError, ConnectRefusedError


class Refusal(StrEnum):
    """Why a broker refused a connection (``ConnectRefusedError.reason``)."""

    CERTIFICATE_REVOKED = "certificate_revoked"
    NOT_AUTHORIZED = "not_authorized"

    @property
    def final(self) -> bool:
        """Whether retrying cannot help: ``certificate_revoked``."""
        return self is Refusal.CERTIFICATE_REVOKED


#: OpenSSL's reasons for the TLS alerts a broker sends about our certificate
_TLS_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_REVOKED": Refusal.CERTIFICATE_REVOKED,
}


def tls_refusal(error: BaseException) -> Refusal | None:
    """The refusal an ``ssl.SSLError`` (a TLS alert from the broker) stands for, if any."""
    if isinstance(error, ssl.SSLError):
        return _TLS_ALERTS.get(str(getattr(error, "reason", "") or ""))
    return None


class TlsAlertWatch(logging.Handler):
    """A logging handler for paho-mqtt's logger that notices a TLS alert refusing our
    certificate (paho logs the ``ssl.SSLError`` in the record's args, then drops the
    connection without telling aiomqtt why). ``refused`` resolves with the error; it is
    set from paho's callbacks, which run on the event loop (``call_soon_threadsafe`` all
    the same: paho's connect runs in an executor thread)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._loop = asyncio.get_running_loop()
        self.refused: asyncio.Future[ConnectRefusedError] = self._loop.create_future()
        # private (not in the manager), but passing paho's lines on to aiomqtt's "mqtt" logger
        self.logger = logging.Logger("mqtt.fedbus")
        self.logger.parent = logging.getLogger("mqtt")
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, BaseException) and (reason := tls_refusal(arg)) is not None:
                error = ConnectRefusedError(str(reason), f"the broker refused our TLS: {arg}")
                self._loop.call_soon_threadsafe(self._set, error)
                return

    def _set(self, error: ConnectRefusedError) -> None:
        if not self.refused.done():
            self.refused.set_result(error)


class RefusalWatch:
    """Whether the bus should stop after a refused connect.

    Args:
        grace: seconds of ``not_authorized`` refusals in a row (no session in between)
            after which the bus stops; a final refusal stops it at once.
        clock: monotonic seconds (tests inject one).
    """

    def __init__(self, grace: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace = grace
        self._clock = clock
        self._since: float | None = None

    def connected(self) -> None:
        """A session came up: the refusals in a row start over."""
        self._since = None

    def refused(self, error: ConnectRefusedError, where: str) -> BrokerRefusedError | None:
        """The error to stop with after ``error`` from the broker at ``where``, or None to
        go on retrying."""
        now = self._clock()
        if self._since is None:
            self._since = now
        reason = Refusal(error.reason)
        if reason.final:
            return BrokerRefusedError(
                str(reason),
                f"the broker at {where} refuses this agent's certificate ({reason}: "
                f"{error}): stopping; re-enroll (a new token from the operator) to take part",
            )
        if now - self._since < self._grace:
            return None
        return BrokerRefusedError(
            str(reason),
            f"the broker at {where} has refused this agent ({error}) for "
            f"{now - self._since:.0f} s: revoked, or never enrolled there; stopping",
        )
