"""Build a ``Bus`` from a broker URL.

==========  =====================  ============
scheme      transport              default port
==========  =====================  ============
``mqtt``    MQTT 5, plain TCP      1883
``mqtts``   MQTT 5 over TLS        8883
``nats``    NATS, plain TCP        4222
``tls``     NATS over TLS          4222
==========  =====================  ============

Credentials never go in the URL (they would end up in logs and process listings); TLS
client certificates come from :class:`TlsFiles`.

Several servers, comma-separated (``tls://a:4222,tls://b:4222``; spaces around the commas are
allowed), are the nodes of one NATS cluster: all of one scheme, no duplicates. The NATS
adapter dials the first, and each reconnect the next one in the list, so an agent whose node
died reconnects to another (``agent.bus.nats_bus``). MQTT takes one broker: mosquitto has no
cluster, and independent brokers would split the federation (``ConfigError``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agent.bus.base import Bus, BusSettings
from agent.errors import ConfigError
from agent.redact import redact_url

#: scheme → (transport, TLS?, default port)
SCHEMES: dict[str, tuple[str, bool, int]] = {
    "mqtt": ("mqtt", False, 1883),
    "mqtts": ("mqtt", True, 8883),
    "nats": ("nats", False, 4222),
    "tls": ("nats", True, 4222),
}
_ACCEPTED = ", ".join(f"{scheme}://" for scheme in SCHEMES)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for TLS. No ``ca_file`` means the system trust store; ``cert_file`` (with
    ``key_file``, unless the key is inside the cert file) is our client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the server (certificate and host name)."""
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError("TLS key_file given without cert_file")
        try:
            cafile = str(self.ca_file) if self.ca_file is not None else None
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
            if self.cert_file is not None:
                keyfile = str(self.key_file) if self.key_file is not None else None
                context.load_cert_chain(str(self.cert_file), keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load TLS files {self}: {exc}") from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A parsed broker URL."""

    transport: str  # "mqtt" or "nats"
    host: str
    port: int
    tls: bool


def parse_broker_urls(url: str) -> list[BrokerAddress]:
    """Parse and check ``url``: one broker URL or several, comma-separated (the module
    docstring). Returns them in order (at least one), all of one transport and TLS.

    Raises:
        ConfigError: a bad entry (naming it and the accepted schemes), an empty entry,
            mixed schemes, a server listed twice, or several servers for MQTT.
    """
    entries = [entry.strip() for entry in url.split(",")]
    if len(entries) > 1 and not all(entries):
        raise ConfigError(f"bad broker URL list {redact_url(url)!r}: an empty entry")
    addresses = [_parse_one(entry) for entry in entries]
    if len({(a.transport, a.tls) for a in addresses}) > 1:
        raise ConfigError(
            f"bad broker URL list {redact_url(url)!r}: every server needs the same scheme"
        )
    if len({(a.host, a.port) for a in addresses}) < len(addresses):
        raise ConfigError(f"bad broker URL list {redact_url(url)!r}: a server is listed twice")
    if len(addresses) > 1 and addresses[0].transport == "mqtt":
        raise ConfigError(
            f"{redact_url(url)!r} names {len(addresses)} MQTT brokers, but an MQTT bus_url "
            "takes one: mosquitto has no cluster, and independent brokers would split the "
            "federation (several servers are for a NATS cluster: tls://a:4222,tls://b:4222)"
        )
    return addresses


def parse_broker_url(url: str) -> BrokerAddress:
    """The first server of ``url`` (:func:`parse_broker_urls` checks them all); every server
    of a list shares its transport and TLS."""
    return parse_broker_urls(url)[0]


def _parse_one(url: str) -> BrokerAddress:
    """Parse and check one URL; :class:`ConfigError` names it and the accepted schemes."""

    def bad(why: str) -> ConfigError:
        shown = redact_url(url)  # never repeat a password or token the user typed
        return ConfigError(f"bad broker URL {shown!r}: {why} (accepted: {_ACCEPTED}host[:port])")

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise bad("bad port" if "port" in str(exc).lower() else "unparsable") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise bad(f"unknown scheme {parts.scheme!r}" if scheme else "no scheme")
    if parts.username is not None or parts.password is not None:
        raise bad("credentials do not belong in the URL")
    if not parts.hostname:
        raise bad("no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("unexpected path, query or fragment")
    transport, tls, default_port = SCHEMES[scheme]
    if port == 0:
        raise bad("port 0")
    return BrokerAddress(transport, parts.hostname, port or default_port, tls)


def bus_from_url(
    url: str,
    settings: BusSettings,
    *,
    tls: TlsFiles | None = None,
    context: ssl.SSLContext | None = None,
) -> Bus:
    """The ``Bus`` adapter for ``url`` (not yet connected: enter it with ``async with``);
    a NATS ``url`` may list several servers of one cluster.

    ``context``: a TLS context built by the caller from ``tls`` (``TlsFiles.ssl_context``),
    which the adapter then connects with every time: reloading a certificate into it (a
    renewal) changes what the next session presents."""
    addresses = parse_broker_urls(url)
    address = addresses[0]
    if address.tls:
        context = context or (tls or TlsFiles()).ssl_context()
    elif tls is not None and tls != TlsFiles():
        raise ConfigError(
            f"TLS files given but {redact_url(url)!r} is plaintext; use mqtts:// or tls://"
        )
    # Only the adapter in use is imported: a device loads one client library, not both.
    if address.transport == "mqtt":
        from agent.bus.mqtt import MqttBus

        return MqttBus(address.host, address.port, settings, tls=context)
    from agent.bus.nats_bus import NatsBus

    others = [(a.host, a.port) for a in addresses[1:]]
    return NatsBus(address.host, address.port, settings, tls=context, fallbacks=others)
