"""The files of one generated broker configuration directory (``fedbus broker-config --out``).

=====================  ========================================================  =======
file                   what                                                      mode
=====================  ========================================================  =======
``ca.pem``             the federation CA: the only issuer clients may come from  0644
``server.pem``         the broker's certificate (role ``broker``, SAN = hosts)    0644
``server.key``         its private key                                           0600
``crl.pem``            mosquitto: the certificate revocation list                0644
``mosquitto.conf``     mosquitto: the listener, TLS and security settings        0644
``mosquitto.acl``      mosquitto: per-identity access rules                      0644
``nats-server.conf``   nats-server: listener, TLS and the authorization block    0644
=====================  ========================================================  =======
"""

from __future__ import annotations

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
CRL_FILE = "crl.pem"
MOSQUITTO_CONF = "mosquitto.conf"
MOSQUITTO_ACL = "mosquitto.acl"
NATS_CONF = "nats-server.conf"

#: Largest message either broker accepts (see broker_config/README.md): above fedbus's
#: 8 MiB ``max_payload`` default, so a full-size publish is never cut off by the broker.
MAX_PAYLOAD = 16 * 1024 * 1024
#: Seconds nats-server gives a client's TLS handshake (its default: 0.5). A fleet process bounds
#: its concurrent handshakes (``agent.bus.admission``, 16 at a time), but under load a handshake
#: on a busy fleet event loop still takes seconds: at 1,000 agents with 2 s, 262 connects failed
#: and were retried (68 reset by the broker). nats-server's auth timeout follows this (TLS timeout
#: + 1 s). With 10 s, broker tests that refuse or cut off clients once hung past their timeout:
#: that was nats-py swallowing a cancellation during close (``nats_bus.close_client``), since fixed.
TLS_HANDSHAKE_TIMEOUT = 10
