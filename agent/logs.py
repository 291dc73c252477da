"""structlog configuration, done once at the process entry point.

JSON lines when stdout is not a TTY (systemd/journald, files, CI), a console renderer on a
TTY. Context bound with ``structlog.contextvars`` (e.g. ``round``) appears on every line
logged inside that context. Event names are snake_case facts; never log keys or weights.
Every string value passes ``agent.redact`` last, so a URL's credentials never reach a line.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from agent.errors import ConfigError
from agent.redact import redact_event

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog for this process.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        fmt: ``auto`` (console on a TTY, else JSON), ``json`` or ``console``.
        stream: where lines go (default stdout).

    Raises:
        ConfigError: unknown level or format.
    """
    out = stream if stream is not None else sys.stdout
    if level not in LEVELS:
        raise ConfigError(f"logging level {level!r} is not one of {sorted(LEVELS)}")
    if fmt not in {"auto", "json", "console"}:
        raise ConfigError(f"logging format {fmt!r} is not one of auto, json, console")
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if not console:
        processors.append(structlog.processors.format_exc_info)
    processors += [redact_event, renderer]  # after format_exc_info: the rendered traceback too
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
