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
#: Seconds nats-server gives a client's TLS handshake (its default: 0.5; it was 2 here). A
#: fleet process completes hundreds of handshakes on one event loop, a bounded number at a
#: time (``agent.bus.admission``), and at 2 s most of 1,000 failed on a loaded machine
#: (issue 15); a half-open handshake holds only a socket for this long.
TLS_HANDSHAKE_TIMEOUT = 10
