"""Prometheus metrics (``prometheus-client``), served when ``[metrics] port`` is set.

Every agent counts the messages and bytes it sends and receives by kind, and the messages
its receive loop drops by reason; the aggregator also counts rounds, dropouts, round and
stage durations and the agents it sees online. The names follow Prometheus' conventions
(``_total`` counters, ``_seconds`` histograms, base units).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

MESSAGES_SENT = Counter("fedbus_messages_sent", "Messages published, by kind.", ["kind"])
BYTES_SENT = Counter("fedbus_bytes_sent", "Payload bytes published, by kind.", ["kind"])
MESSAGES_RECEIVED = Counter(
    "fedbus_messages_received", "Messages accepted by the receive loop, by kind.", ["kind"]
)
BYTES_RECEIVED = Counter(
    "fedbus_bytes_received", "Payload bytes accepted by the receive loop, by kind.", ["kind"]
)
MESSAGES_DROPPED = Counter(
    "fedbus_messages_dropped", "Messages the receive loop refused, by reason.", ["reason"]
)
ROUNDS = Counter("fedbus_rounds", "Rounds run by the aggregator, by outcome.", ["outcome"])
DROPOUTS = Counter("fedbus_dropouts", "Cohort members that did not deliver in a round.")
ROUND_SECONDS = Histogram(
    "fedbus_round_seconds", "Wall time of a round, evaluation included.", buckets=_STAGE_BUCKETS
)
STAGE_SECONDS = Histogram(
    "fedbus_stage_seconds",
    "Wall time of each round stage (fit, SecAgg+ stages, evaluate).",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
AGENTS = Gauge("fedbus_agents", "Agents the aggregator knows, by liveness state.", ["state"])


def serve(port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (prometheus-client's own
    server). Returns a function that stops it (an agent serves for its whole life)."""
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
