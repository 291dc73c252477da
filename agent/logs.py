"""structlog configuration, done once at the process entry point.

JSON lines when stdout is not a TTY (systemd/journald, files, CI), a console renderer on a
TTY. Context bound with ``structlog.contextvars`` (e.g. ``round``) appears on every line
logged inside that context. Event names are snake_case facts; never log keys or weights.
Every string value passes ``agent.redact`` last, so a URL's credentials never reach a line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
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
        # plain tracebacks: rich is not imported by fedbus (agent/__init__.py)
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if console
        else structlog.processors.JSONRenderer()
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


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents) as a directory; the last one, if new, is created 0700
    (the mode given at creation: never readable by others, not even for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def open_log_file(path: Path) -> TextIO:
    """Open ``path`` for writing log lines, truncated; a new file is created 0600 (logs name
    agents, rounds and peers)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8")
