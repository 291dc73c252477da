"""When an async buffer that does not fill ends the run (``RunFailedError``).

FedBuff's version loop (``buffered.Buffered``) waits for ``buffer_size`` updates. Two ways it
could wait for ever, each ended here:

- the fleet vanished: no agent training and no update buffered for ``join_timeout`` s;
- fits go out but no update comes back (every agent refuses the model, or every fit is
  given up: late, gone, rejoined) for ``join_timeout + round_timeout`` s: a fit that was
  sent has ``round_timeout`` s, and an agent that left has ``join_timeout`` s to come back.
"""

from __future__ import annotations

import time

from agent.roles.aggregator.schedule import RunFailedError


class FillWatch:
    """Watches one buffer filling (``check`` every poll).

    Args:
        join_timeout, round_timeout: the schedule's, in seconds.
    """

    def __init__(self, join_timeout: float, round_timeout: float) -> None:
        self._join, self._fit = join_timeout, round_timeout
        self._progress = self._update = time.monotonic()
        self._count = 0

    def check(self, *, training: int, buffered: int) -> None:
        """``training`` agents hold a fit, ``buffered`` updates are in the open buffer.

        Raises:
            RunFailedError: the fleet vanished, or no update came back (module docstring).
        """
        now = time.monotonic()
        if buffered != self._count:
            self._count, self._update = buffered, now
        if training or buffered:
            self._progress = now
        if now - self._progress > self._join:
            raise RunFailedError("no agent trained for join_timeout: the fleet vanished")
        if now - self._update > self._join + self._fit:
            raise RunFailedError(
                f"no update reached the buffer in {self._join + self._fit:g} s "
                "(join_timeout + round_timeout) although fits went out: every fit was "
                "refused or given up (the aggregator's log says why: fit_given_up, "
                "update_rejected; the agents': model_rejected)"
            )
