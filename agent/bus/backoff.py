"""Capped, jittered exponential backoff for reconnecting to a broker.

The delay before reconnect attempt ``n`` (1-based, counted since the last successful
connect) is ``min(maximum, initial * 2**(n-1))``, jittered uniformly in
``[delay/2, delay]`` so that a fleet of agents does not reconnect in lock step after a
broker restart. The caller owns the attempt counter and resets it after a successful connect.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from agent.bus.base import BusSettings
from agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delay bounds in seconds."""

    initial: float
    maximum: float

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ConfigError(f"backoff_initial must be > 0 seconds, got {self.initial!r}")
        if not self.maximum >= self.initial:
            raise ConfigError(
                f"backoff_max ({self.maximum!r}) must be >= backoff_initial ({self.initial!r})"
            )

    @classmethod
    def from_settings(cls, settings: BusSettings) -> Backoff:
        """The backoff that ``settings.backoff_initial`` / ``backoff_max`` describe."""
        return cls(initial=settings.backoff_initial, maximum=settings.backoff_max)

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay before reconnect attempt ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        # Cap the exponent first: 2**attempt overflows a float after ~1000 attempts.
        doublings = min(attempt - 1, 64)
        return min(self.maximum, self.initial * 2.0**doublings)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A jittered delay in ``[ceiling/2, ceiling]`` before attempt ``attempt``."""
        ceiling = self.ceiling(attempt)
        uniform = rng.uniform if rng is not None else random.uniform
        return min(ceiling, max(ceiling / 2, uniform(ceiling / 2, ceiling)))  # float rounding

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Delays for attempts 1, 2, 3, … (an endless iterator; restart it after success)."""
        attempt = 1
        while True:
            yield self.delay(attempt, rng)
            attempt += 1
