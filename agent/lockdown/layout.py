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
#: Seconds nats-server gives a client's TLS handshake (its default: 0.5). 2 s, as before
#: issue 15: a fleet process bounds its concurrent handshakes instead (``agent.bus.admission``,
#: 16 at a time). 10 s was tried for 1,000-agent fleets; nats-server's auth timeout follows it
#: (TLS timeout + 1 s), and in that setting broker tests that refuse or cut off clients hung
#: past their 60 s timeout in 2 of 3 full suite runs (cause not found), so it went back.
TLS_HANDSHAKE_TIMEOUT = 2
