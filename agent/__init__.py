"""fedbus: federated learning for fleets of edge devices, carried over MQTT or NATS.

The import package is ``agent``: one asyncio runtime that plays the trainer or the
aggregator role. See ``agent.runtime`` for the receive loop, ``agent.bus`` for the
transports, ``agent.roles`` for the two roles and ``agent.plugin`` for the plugin API.

Importing ``agent`` first imports structlog without its optional extras (issue 15, a light
device): ``import structlog`` otherwise loads rich (with pygments and attrs) and greenlet
whenever they happen to be installed (they come with flwr and typer), about 4 MB of a
trainer's memory and a tenth of its start-up, for console tracebacks and the deprecated
``structlog.threadlocal``, neither of which fedbus uses (``agent.logs`` renders console
tracebacks with ``structlog.dev.plain_traceback``). The extras are hidden only while
structlog imports: a plugin importing rich later gets it.
"""

import sys as _sys

__version__ = "0.1.0"

#: What ``import structlog`` would load when installed, and fedbus never uses through it.
STRUCTLOG_EXTRAS = ("rich", "better_exceptions", "greenlet")


def _import_structlog_lean() -> None:
    if "structlog" in _sys.modules:
        return
    hidden = [name for name in STRUCTLOG_EXTRAS if name not in _sys.modules]
    for name in hidden:
        _sys.modules[name] = None  # type: ignore[assignment]  # "not installed" (importlib)
    try:
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            del _sys.modules[name]


_import_structlog_lean()
