"""The conformance suite's report: one line per check, tracebacks of what failed, a verdict."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """The outcome of one check."""

    PASSED = "PASS"
    FAILED = "FAIL"
    SKIPPED = "SKIP"  # a check it depends on failed, so it could not run


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check.

    Attributes:
        title: what was checked, e.g. ``"fit does not mutate its input"``.
        status: pass, fail, or not run.
        detail: what was seen (on a pass) or which rule was broken (on a failure).
        seconds: wall time of the plugin calls the check made.
        traceback: the formatted traceback of what the plugin raised, if it raised.
    """

    title: str
    status: Status
    detail: str = ""
    seconds: float = 0.0
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class CheckReport:
    """Every check run against one plugin."""

    plugin: str
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        """True when every check passed (a check not run counts as a failure)."""
        return bool(self.results) and all(r.status is Status.PASSED for r in self.results)

    def failures(self) -> list[CheckResult]:
        """The checks that failed or could not run."""
        return [r for r in self.results if r.status is not Status.PASSED]

    def render(self) -> str:
        """The human-readable report: a line per check, tracebacks indented, the verdict."""
        lines = [f"fedbus plugin check: {self.plugin}"]
        width = max((len(r.title) for r in self.results), default=10)
        for r in self.results:
            timing = f"{r.seconds:8.3f} s" if r.status is not Status.SKIPPED else " " * 10
            lines.append(f"  {r.status.value}  {r.title:<{width}}  {timing}  {r.detail}")
            if r.traceback:
                lines.append(textwrap.indent(r.traceback, "        | "))
        counts = {s: sum(r.status is s for r in self.results) for s in Status}
        verdict = "conforms" if self.passed else "DOES NOT CONFORM"
        lines.append(
            f"{verdict}: {counts[Status.PASSED]} checks passed, {counts[Status.FAILED]} "
            f"failed, {counts[Status.SKIPPED]} not run"
        )
        return "\n".join(lines)
