"""The timings of one SecAgg+ stage on the aggregator, logged as ``secagg_stage_closed`` when
the stage ends (``SecureRound``): the first place to look when a large round is slow."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from agent.secagg.state import Stage

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class StageLog:
    """What one stage's ``secagg_stage_closed`` line reports (seconds: ``time.monotonic``).

    Attributes:
        stage: the stage.  started: when its collecting began.
        expected: the members whose message it waited for.  answered: those whose came.
        collect_seconds: waiting for the messages; close_seconds: the server's ``close_*``
            (``finish`` for unmask: reconstruction and mask removal); relay_seconds: sending
            the next stage's relays, ``relayed`` messages of ``relay_bytes`` in all.
        timed_out: the deadline passed before every expected member answered.
    """

    stage: Stage
    started: float
    expected: int
    answered: int = 0
    collect_seconds: float = 0.0
    close_seconds: float = 0.0
    relay_seconds: float = 0.0
    relayed: int = 0
    relay_bytes: int = 0
    timed_out: bool = False

    def relayed_by(self, sizes: list[int | None], seconds: float) -> None:
        """The next stage's relays went out in ``seconds``: ``sizes`` are the bytes of each
        publish (None: not sent)."""
        self.relay_seconds = seconds
        self.relayed = sum(1 for size in sizes if size is not None)
        self.relay_bytes = sum(size for size in sizes if size is not None)

    def report(self, now: float, dropouts: frozenset[str]) -> None:
        """Log the stage, ended at ``now`` (``time.monotonic``), with its ``dropouts``."""
        log.info(
            "secagg_stage_closed",
            stage=str(self.stage),
            seconds=round(now - self.started, 6),
            collect_seconds=round(self.collect_seconds, 6),
            close_seconds=round(self.close_seconds, 6),
            relay_seconds=round(self.relay_seconds, 6),
            expected=self.expected,
            answered=self.answered,
            relayed=self.relayed,
            relay_bytes=self.relay_bytes,
            timed_out=self.timed_out,
            dropout_count=len(dropouts),
            dropouts=sorted(dropouts),
        )
