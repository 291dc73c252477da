"""What every agent process shares, whatever its role: its bus (settings, adapter, TLS
context), its metrics, and the event loop that SIGTERM / SIGINT stop (``run_until_signal``).

Nothing here imports a role: ``agent.node_trainer`` (a device) and ``agent.node`` (the
aggregator) both build on it, so a trainer never loads the aggregator role.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

from agent.bus.base import Bus, BusSettings, LastWill
from agent.bus.url import TlsFiles, bus_from_url, parse_broker_url
from agent.config import AgentConfig
from agent.messages.chunks import ENVELOPE_MARGIN
from agent.runtime.metrics import Metrics
from agent.runtime.sdnotify import process_notifier

log = structlog.get_logger(__name__)
T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def bus_settings(
    config: AgentConfig, *, suffix: str = "", will: Callable[[], LastWill] | None = None
) -> BusSettings:
    """Transport settings for ``config``'s agent (``suffix`` keeps the client id of a tool
    acting as the agent, e.g. ``fedbus listen``, from displacing the agent's own session)."""
    client_id = f"{config.federation}-{config.agent_id}" + (f"-{suffix}" if suffix else "")
    chunk_size = config.transfer.chunk_size
    return BusSettings(
        client_id=client_id,
        max_payload=config.max_payload,
        will=will,
        required_payload=chunk_size + ENVELOPE_MARGIN,
        required_by=f"[transfer] chunk_size = {chunk_size}",
    )


def open_bus(
    config: AgentConfig, settings: BusSettings, context: ssl.SSLContext | None = None
) -> Bus:
    """The bus adapter for ``config.bus_url`` with its ``[tls]`` files (not yet entered),
    connecting with ``context`` when given (``tls_context``)."""
    tls = TlsFiles(config.tls.ca_file, config.tls.cert_file, config.tls.key_file)
    return bus_from_url(config.bus_url, settings, tls=tls, context=context)


def tls_context(config: AgentConfig) -> ssl.SSLContext | None:
    """The TLS context of ``[tls]`` for a TLS bus URL (None for plaintext)."""
    if not parse_broker_url(config.bus_url).tls:
        return None
    return TlsFiles(config.tls.ca_file, config.tls.cert_file, config.tls.key_file).ssl_context()


def node_metrics(config: AgentConfig, *, always: bool = False) -> Metrics:
    """This node's own series (whatever else runs in the process), served on
    ``[metrics] port`` when set; ``Metrics.off()`` when the port is unset and not ``always``
    (a trainer: prometheus-client is then not even imported)."""
    if not config.metrics.port:
        return Metrics() if always else Metrics.off()
    from agent.runtime.metrics import serve

    metrics = Metrics()
    assert metrics.registry is not None
    serve(config.metrics.port, config.metrics.host, registry=metrics.registry)
    log.info("metrics_serving", host=config.metrics.host, port=config.metrics.port)
    return metrics


def run_until_signal(coro: Coroutine[Any, Any, T]) -> T | None:
    """Run ``coro`` on a new event loop; SIGTERM and SIGINT cancel it cleanly.

    Under systemd (``agent.runtime.sdnotify``) the loop feeds the watchdog while ``coro``
    runs, a signal sends ``STOPPING=1`` before the cancellation unwinds, and a failure
    ``STATUS=failed: …``.

    Returns the coroutine's result, or None when a signal stopped it.
    """

    async def main() -> T | None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        stopped: list[str] = []
        notifier = process_notifier()

        def stop(signame: str) -> None:
            stopped.append(signame)
            notifier.stopping(f"stopping ({signame})")
            log.info("agent_stopping", signal=signame)
            task.cancel()

        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop, sig.name)
        try:
            async with notifier.watchdog():
                result = await coro
        except asyncio.CancelledError:
            if not stopped:
                raise
            return None
        except Exception as exc:
            notifier.failed(exc)
            raise
        else:
            notifier.stopping()
            return result
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)

    return asyncio.run(main())
