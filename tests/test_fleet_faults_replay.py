"""What a NATS bus re-publishes after a reconnect (``agent.bus.replay``): the last seconds of
its own publishes, bounded, and for a retained topic only the newest message."""

from __future__ import annotations

from agent.bus.replay import CHUNK_MAGIC, ReplayLog
from agent.messages.chunks import MAGIC, frame


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_log_keeps_the_window_and_the_newest_retained_message() -> None:
    clock = Clock()
    log = ReplayLog(10.0, max_bytes=100, clock=clock)
    log.record("a/update", b"u1", retain=False)
    log.record("a/model", b"m1", retain=True)
    clock.now = 5.0
    log.record("a/model", b"m2", retain=True)  # replaces m1: a replay never restores m1
    log.record("a/update", b"u2", retain=False)
    assert [s.payload for s in log.recent()] == [b"u1", b"m2", b"u2"]
    clock.now = 12.0
    assert [s.payload for s in log.recent()] == [b"m2", b"u2"]  # u1 is 12 s old
    log.record("a/big", b"x" * 97, retain=False)  # 101 bytes held: the oldest goes
    assert [s.payload for s in log.recent()] == [b"u2", b"x" * 97]


def test_chunk_frames_are_not_kept() -> None:
    """Model-sized chunk frames would hold the byte budget in memory: only the rest is kept."""
    assert CHUNK_MAGIC == MAGIC
    log = ReplayLog(10.0, clock=Clock())
    log.record("a/update", frame(bytes(16), 0, b"x" * 1000), retain=False)
    log.record("a/update", b"manifest", retain=False)
    assert [s.payload for s in log.recent()] == [b"manifest"]
