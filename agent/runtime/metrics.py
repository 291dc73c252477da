"""Prometheus metrics (``prometheus-client``), served when ``[metrics] port`` is set.

Every agent counts the messages and bytes it sends and receives by kind, and the messages
its receive loop drops by reason; the aggregator also counts rounds, dropouts, round and
stage durations and the agents it sees online. The names follow Prometheus' conventions
(``_total`` counters, ``_seconds`` histograms, base units).

Each role instance (one per process in production, several in a test or an in-process demo)
holds its own ``Metrics`` over its own ``CollectorRegistry``, injected into what counts for
it, so two roles in one process never add their counts together.

``Metrics.off()`` is the same series counting nothing, for a trainer whose ``[metrics] port``
is unset: prometheus-client is imported only by a ``Metrics`` that counts (``agent.node``),
so a device that serves no metrics neither loads it nor keeps its series.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """One role's series, registered in ``registry`` (default: a fresh one of its own).

    Attributes:
        messages_sent, bytes_sent: published messages and payload bytes, by ``kind``.
        messages_received, bytes_received: accepted by the receive loop, by ``kind``.
        messages_dropped: refused by the receive loop, by ``reason``.
        messages_shed: shed before decode by ``runtime.fairness``, by ``sender`` and ``reason``.
        publishes_refused: publishes the broker refused (ACL), by ``kind``.
        rounds: rounds run by the aggregator, by ``outcome`` (completed, failed).
        dropouts: cohort members that did not deliver.
        round_seconds: wall time of a round (s), evaluation included.
        stage_seconds: wall time (s) of each round ``stage`` (fit, SecAgg+ stages, evaluate).
        agents: agents the aggregator knows, by liveness ``state`` (online, offline, unknown).

    Raises:
        ValueError: ``registry`` already holds fedbus's series (one ``Metrics`` per registry).
    """

    registry: CollectorRegistry | None
    messages_sent: Counter
    bytes_sent: Counter
    messages_received: Counter
    bytes_received: Counter
    messages_dropped: Counter
    messages_shed: Counter
    publishes_refused: Counter
    rounds: Counter
    dropouts: Counter
    round_seconds: Histogram
    stage_seconds: Histogram
    agents: Gauge

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.messages_sent = Counter(
            "fedbus_messages_sent", "Messages published, by kind.", ["kind"], registry=r
        )
        self.bytes_sent = Counter(
            "fedbus_bytes_sent", "Payload bytes published, by kind.", ["kind"], registry=r
        )
        self.messages_received = Counter(
            "fedbus_messages_received",
            "Messages accepted by the receive loop, by kind.",
            ["kind"],
            registry=r,
        )
        self.bytes_received = Counter(
            "fedbus_bytes_received",
            "Payload bytes accepted by the receive loop, by kind.",
            ["kind"],
            registry=r,
        )
        self.messages_dropped = Counter(
            "fedbus_messages_dropped",
            "Messages the receive loop refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.messages_shed = Counter(
            "fedbus_messages_shed",
            "Messages shed before decode by the per-sender fairness, by sender and reason.",
            ["sender", "reason"],
            registry=r,
        )
        self.publishes_refused = Counter(
            "fedbus_publishes_refused",
            "Publishes the broker refused (MQTT PUBACK >= 0x80, NATS permissions), by kind.",
            ["kind"],
            registry=r,
        )
        self.rounds = Counter(
            "fedbus_rounds", "Rounds run by the aggregator, by outcome.", ["outcome"], registry=r
        )
        self.dropouts = Counter(
            "fedbus_dropouts", "Cohort members that did not deliver in a round.", registry=r
        )
        self.round_seconds = Histogram(
            "fedbus_round_seconds",
            "Wall time of a round, evaluation included.",
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "fedbus_stage_seconds",
            "Wall time of each round stage (fit, SecAgg+ stages, evaluate).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.agents = Gauge(
            "fedbus_agents",
            "Agents the aggregator knows, by liveness state.",
            ["state"],
            registry=r,
        )

    @classmethod
    def off(cls) -> Self:
        """Series that count nothing (``registry`` None, every ``value`` 0.0), without
        importing prometheus-client."""
        off = cls.__new__(cls)
        off.registry = None
        series: Any = _Off()
        for name in cls.__annotations__:
            if name != "registry":
                setattr(off, name, series)
        return off

    def value(self, name: str, **labels: str) -> float:
        """The current value of sample ``name`` (e.g. ``fedbus_rounds_total``) with
        ``labels``; 0.0 when it was never observed (always, for ``Metrics.off()``)."""
        if self.registry is None:
            return 0.0
        return self.registry.get_sample_value(name, labels) or 0.0


class _Off:
    """A counter, gauge and histogram at once, that keeps nothing."""

    def labels(self, *values: str, **labels: str) -> Self:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


def serve(port: int, host: str = "127.0.0.1", *, registry: CollectorRegistry) -> Callable[[], None]:
    """Serve ``registry`` on ``/metrics`` at ``host:port`` from a daemon thread
    (prometheus-client's own server). Returns a function that stops it (an agent serves for
    its whole life).

    Raises:
        OSError: the address cannot be bound.
    """
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
