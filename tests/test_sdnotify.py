"""sd_notify: the protocol against sockets the test owns, and real agent processes under a
stand-in for systemd's notify socket (READY, STATUS, WATCHDOG, STOPPING)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.errors import RoundError
from agent.messages import topics
from agent.messages.bodies import JoinRejected
from agent.runtime.outbox import Outbox
from agent.runtime.sdnotify import Notifier, serve_role

pytestmark = pytest.mark.timeout(60)

EXAMPLE = Path(__file__).resolve().parents[1] / "plugins" / "command-example" / "train.py"
SD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class NotifyListener:
    """A stand-in for systemd's notify socket: an AF_UNIX datagram socket bound to
    ``address`` (a path, or ``@name`` for an abstract socket) whose datagrams a thread
    records as (monotonic time of arrival, {VAR: value})."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self._sock.settimeout(0.05)
        self._lock = threading.Lock()
        self._received: list[tuple[float, dict[str, str]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._lock:
                self._received.append((now, fields))

    @property
    def received(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self._received)

    def times(self, var: str) -> list[float]:
        return [t for t, f in self.received if var in f]

    def statuses(self) -> list[str]:
        """STATUS= values in order, consecutive repeats merged."""
        out: list[str] = []
        for _, f in self.received:
            if "STATUS" in f and (not out or out[-1] != f["STATUS"]):
                out.append(f["STATUS"])
        return out

    async def wait_for(
        self, check: Callable[[dict[str, str]], bool], *, timeout: float = 20.0
    ) -> tuple[float, dict[str, str]]:
        """The first datagram for which ``check`` holds, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.received:
                if check(item[1]):
                    return item
            await asyncio.sleep(0.02)
        raise AssertionError(f"no such notification within {timeout} s: {self.received}")

    async def wait_count(self, var: str, n: int, *, timeout: float = 5.0) -> None:
        """Wait until ``n`` datagrams carrying ``var`` have arrived."""
        deadline = time.monotonic() + timeout
        while len(self.times(var)) < n:
            assert time.monotonic() < deadline, f"fewer than {n} {var} in {self.received}"
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        self._sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fedbus-sd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener(short_dir: Path) -> Iterator[NotifyListener]:
    """A notify socket at a filesystem path, closed afterwards."""
    sock = NotifyListener(str(short_dir / "notify"))
    yield sock
    sock.close()


# -- the protocol -----------------------------------------------------------------------


async def test_ready_status_and_stopping_reach_a_path_socket(listener: NotifyListener) -> None:
    """READY=1 carries the current STATUS in the same datagram; STATUS is one line; STOPPING=1
    goes out once even if asked twice; ERRNO= accompanies an OSError's STATUS."""
    with Notifier(listener.address) as notifier:
        assert notifier.enabled
        assert notifier.ready("idle")
        assert notifier.status("round 3:\n  training")
        assert notifier.failed(FileNotFoundError(2, "No such file", "/state/model.npz"))
        assert notifier.failed(RoundError("no update arrived"))
        assert notifier.stopping("stopping (SIGTERM)")
        assert not notifier.stopping()
    assert not notifier.status("after close")
    await listener.wait_for(lambda f: "STOPPING" in f)
    assert [f for _, f in listener.received] == [
        {"READY": "1", "STATUS": "idle"},
        {"STATUS": "round 3: training"},
        {"STATUS": "failed: [Errno 2] No such file: '/state/model.npz'", "ERRNO": "2"},
        {"STATUS": "failed: no update arrived"},
        {"STOPPING": "1", "STATUS": "stopping (SIGTERM)"},
    ]


async def test_an_abstract_socket_is_addressed_by_at_sign() -> None:
    """NOTIFY_SOCKET=@name is a socket in Linux's abstract namespace (sd_notify(3))."""
    sock = NotifyListener(f"@fedbus-test-{uuid.uuid4().hex}")
    try:
        with Notifier.from_environ({"NOTIFY_SOCKET": sock.address}) as notifier:
            assert notifier.ready("joining")
        _, fields = await sock.wait_for(lambda f: "READY" in f)
        assert fields == {"READY": "1", "STATUS": "joining"}
    finally:
        sock.close()


async def test_without_notify_socket_everything_is_a_no_op() -> None:
    """Outside systemd (no NOTIFY_SOCKET) nothing is sent, no watchdog task is started, and
    serve_role just awaits the work, even with WATCHDOG_USEC set."""
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "100000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("idle")
    assert not notifier.send("WATCHDOG=1")
    assert not notifier.stopping()
    before = len(asyncio.all_tasks())
    async with notifier.watchdog():
        assert len(asyncio.all_tasks()) == before

    async def work() -> str:
        return "done"

    assert await serve_role(FakeRole(), work(), notifier=notifier) == "done"


def test_environment_is_read_once_and_unset(short_dir: Path) -> None:
    """from_environ arms the watchdog only for our pid (WATCHDOG_PID unset or equal to
    os.getpid()), at half of WATCHDOG_USEC, and removes the three variables so that child
    processes do not inherit them; unset=False leaves them."""
    path = str(short_dir / "notify")
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}
    with Notifier.from_environ(env) as notifier:
        assert notifier.watchdog_usec == 400_000
        assert notifier.watchdog_interval == pytest.approx(0.2)
    assert env == {}
    other = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}
    with Notifier.from_environ(other, unset=False) as notifier:
        assert notifier.enabled
        assert notifier.watchdog_interval is None
    assert set(other) == set(SD_VARS)
    for bad in ("0", "-5", "x"):
        with Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": bad}) as notifier:
            assert notifier.watchdog_usec is None
    with Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}) as notifier:
        assert not notifier.enabled


async def test_watchdog_pings_every_half_of_watchdog_usec(listener: NotifyListener) -> None:
    """With a fake clock: a ping at once, then one after each wait of WATCHDOG_USEC/2."""
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 4:
            raise asyncio.CancelledError

    with (
        Notifier(listener.address, watchdog_usec=3_000_000, sleep=fake_sleep) as notifier,
        pytest.raises(asyncio.CancelledError),
    ):
        await notifier.ping_forever()
    assert waits == [1.5] * 4
    await listener.wait_count("WATCHDOG", 4)
    await asyncio.sleep(0.1)  # nothing more arrives
    assert [f for _, f in listener.received] == [{"WATCHDOG": "1"}] * 4


async def test_watchdog_keeps_pinging_while_the_loop_runs(listener: NotifyListener) -> None:
    """On a free event loop the pings come regularly: about one per 0.1 s for
    WATCHDOG_USEC=200000 (generous bounds: the count, not the exact timing, is checked)."""
    with Notifier(listener.address, watchdog_usec=200_000) as notifier:
        async with notifier.watchdog():
            await asyncio.sleep(1.0)
    await asyncio.sleep(0.2)
    count = len(listener.times("WATCHDOG"))
    assert 3 <= count <= 13  # about 10; loose, the machine may be busy


async def test_watchdog_pings_stop_while_the_event_loop_is_blocked(
    listener: NotifyListener,
) -> None:
    """The watchdog task runs on the event loop it guards: while the loop is blocked
    (time.sleep on it, for ten intervals) no ping goes out, so systemd's WatchdogSec would
    fire; once the loop is free again the pings resume."""
    with Notifier(listener.address, watchdog_usec=200_000) as notifier:  # a ping every 0.1 s
        async with notifier.watchdog():
            await asyncio.sleep(0.5)
            blocked_at = time.monotonic()
            time.sleep(1.0)  # blocking the loop is the point
            freed_at = time.monotonic()
            await asyncio.sleep(0.5)
    await asyncio.sleep(0.2)
    pings = listener.times("WATCHDOG")
    before = [t for t in pings if t < blocked_at]
    during = [t for t in pings if blocked_at + 0.05 < t < freed_at]
    after = [t for t in pings if t >= freed_at]
    assert len(before) >= 3
    assert during == []
    assert len(after) >= 3
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= 0.9  # the block, seen from the manager's side
    assert sorted(gaps)[-2] < 0.9  # and only the block (pings every 0.1 s otherwise)


async def test_a_failing_send_is_logged_once_and_never_raises(short_dir: Path) -> None:
    """No socket at the path: sends return False without raising, one sd_notify_failed is
    logged for many failures; when the socket appears, sd_notify_recovered is logged."""
    path = str(short_dir / "late")
    with Notifier(path) as notifier, capture_logs() as logs:
        assert not any(notifier.status(f"s{i}") for i in range(5))
        sock = NotifyListener(path)
        try:
            assert notifier.status("back")
            await sock.wait_for(lambda f: f.get("STATUS") == "back")
        finally:
            sock.close()
    events = [e["event"] for e in logs]
    assert events == ["sd_notify_failed", "sd_notify_recovered"]


def test_a_manager_that_does_not_read_never_blocks_the_sender(short_dir: Path) -> None:
    """When the manager's socket queue is full the datagram is dropped at once (non-blocking
    socket): sending thousands of pings to a socket nobody reads returns promptly, and the
    failure is logged once."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(short_dir / "full"))
    try:
        with Notifier(str(short_dir / "full")) as notifier, capture_logs() as logs:
            results = [notifier.send("WATCHDOG=1") for _ in range(5000)]
        assert results[0] is True
        assert results[-1] is False
        assert [e["event"] for e in logs] == ["sd_notify_failed"]
    finally:
        receiver.close()


@dataclass
class FakeRole:
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    status_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _status: str = "starting"

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, text: str) -> None:
        self._status = text
        self.status_changed.set()


async def test_serve_role_sends_ready_after_the_role_is_ready_then_status_changes(
    listener: NotifyListener,
) -> None:
    """serve_role sends nothing before role.ready is set, then READY=1 with the status, then
    each new status once (pushed: one that lasts a single turn of the loop is seen), and the
    final status when the work returns."""
    role = FakeRole()

    async def work() -> int:
        await asyncio.sleep(0.2)
        assert listener.received == []
        role.status = "joining"
        role.ready.set()
        await listener.wait_for(lambda f: "READY" in f)
        for status in ("idle", "idle", "round 1: training", "idle"):
            role.status = status
            await asyncio.sleep(0)
        role.status = "finished"
        return 7

    with Notifier(listener.address) as notifier:
        assert await serve_role(role, work(), notifier=notifier) == 7
    await listener.wait_for(lambda f: f.get("STATUS") == "finished")
    assert listener.received[0][1] == {"READY": "1", "STATUS": "joining"}
    assert listener.statuses() == ["joining", "idle", "round 1: training", "idle", "finished"]


# -- real agent processes -----------------------------------------------------------------

SLOW_PROGRAM = """
    # The command-example program, slowed down so that every state lasts long enough to be
    # seen, and recording whether the agent let systemd's variables through to its children.
    import json, os, runpy, sys, time

    with open(os.environ["PROBE"], "a") as probe:
        probe.write(json.dumps({{k: os.environ.get(k) for k in {sd_vars!r}}}) + "\\n")
    if sys.argv[1] in ("fit", "evaluate"):
        time.sleep(1.5)
    sys.argv = [{example!r}, *sys.argv[1:]]
    runpy.run_path({example!r}, run_name="__main__")
"""

CONFIG = """
role = "{role}"
agent_id = "{agent_id}"
federation = "plant"
bus_url = "{url}"
state_dir = "{state}"
[plugin]
name = "command"
[plugin.options]
command = ["{{python}}", "{program}"]
env = {{ PROBE = "{probe}" }}
[trainer]
join_retry = 0.2
[aggregator]
rounds = 1
min_fit_clients = 1
min_available_clients = 1
join_timeout = 30
round_timeout = 20
"""


def agent_process(config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m agent run --config`` with ``env`` added and its output in ``log``."""
    clean = {k: v for k, v in os.environ.items() if k not in SD_VARS}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean, "PYTHONUNBUFFERED": "1", **env},
        )


async def logged_events(log: Path, *, until: str, timeout: float = 5.0) -> list[str]:
    """The events of a JSON-lines log, once ``until`` is among them."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().splitlines()
        events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
        if until in events:
            return events
        assert time.monotonic() < deadline, f"no {until} in {log.read_text()}"
        await asyncio.sleep(0.02)


@pytest.mark.broker
async def test_a_trainer_process_under_a_notify_socket(
    nats_server: EmbeddedBroker, tmp_path: Path, short_dir: Path
) -> None:
    """A real trainer process (`fedbus run`, command plugin) with NOTIFY_SOCKET and
    WATCHDOG_USEC=1000000, and a real aggregator process, on nats-server:

    - READY=1 is sent after the bus_connected log line (the trainer's own log order), and a
      message published to the trainer's inbox right after READY is handled
      (STATUS=rejected): its subscriptions were in place;
    - STATUS follows a round: joining → rejected → (idle) → round 1: training → idle
      (STATUS is pushed on each change, but a state that ends within one turn of the event
      loop, like idle before fit_ins, may coalesce into the next: it is not a log);
    - WATCHDOG=1 arrives regularly, about every 0.5 s, from start to stop, never a full
      WATCHDOG_USEC apart;
    - SIGTERM: STOPPING=1 arrives and the process exits 0;
    - the plugin's program does not inherit NOTIFY_SOCKET or WATCHDOG_USEC.
    The aggregator process reports READY, its rounds and STOPPING=1 when it finishes."""
    program = tmp_path / "slow_train.py"
    program.write_text(textwrap.dedent(SLOW_PROGRAM.format(example=str(EXAMPLE), sd_vars=SD_VARS)))
    probe = tmp_path / "probe.jsonl"

    def config(role: str, agent_id: str) -> Path:
        path = tmp_path / f"{agent_id}.toml"
        path.write_text(
            CONFIG.format(
                role=role,
                agent_id=agent_id,
                url=nats_server.url,
                state=tmp_path / agent_id,
                program=program,
                probe=probe,
            )
        )
        return path

    trainer_sd = NotifyListener(str(short_dir / "trainer"))
    aggregator_sd = NotifyListener(str(short_dir / "aggregator"))
    trainer_log, aggregator_log = tmp_path / "trainer.log", tmp_path / "aggregator.log"
    trainer = agent_process(
        config("trainer", "dev-0"),
        trainer_log,
        NOTIFY_SOCKET=trainer_sd.address,
        WATCHDOG_USEC="1000000",
    )
    aggregator: subprocess.Popen[bytes] | None = None
    try:
        ready_at, ready = await trainer_sd.wait_for(lambda f: "READY" in f)
        assert ready == {"READY": "1", "STATUS": "joining"}
        events = await logged_events(trainer_log, until="sd_notify_ready")
        # bus_connected is logged once every subscription is acknowledged (SupervisedBus).
        assert events.index("bus_connected") < events.index("sd_notify_ready")

        # Right after READY: a message on the trainer's inbox must be handled.
        bus = bus_from_url(nats_server.url, BusSettings(client_id="test-sd"))
        async with bus:
            outbox = Outbox(bus, federation="plant", sender="aggregator")
            await outbox.send(
                topics.INBOX,
                JoinRejected(agent_id="dev-0", reason="not yet"),
                round=0,
                agent_id="dev-0",
            )
        await trainer_sd.wait_for(lambda f: f.get("STATUS") == "rejected", timeout=5)

        aggregator = agent_process(
            config("aggregator", "aggregator"), aggregator_log, NOTIFY_SOCKET=aggregator_sd.address
        )
        assert await asyncio.to_thread(aggregator.wait, 40) == 0
        await logged_events(trainer_log, until="federation_finished")
        await aggregator_sd.wait_for(lambda f: "STOPPING" in f, timeout=5)

        trainer.send_signal(signal.SIGTERM)
        await trainer_sd.wait_for(lambda f: "STOPPING" in f, timeout=10)
        assert await asyncio.to_thread(trainer.wait, 15) == 0
    finally:
        for proc in (trainer, aggregator):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        trainer_sd.close()
        aggregator_sd.close()

    log = trainer_log.read_text()
    statuses = trainer_sd.statuses()
    if statuses[2:3] == ["idle"]:  # admitted: idle for the few ms until fit_ins, often unseen
        del statuses[2]
    assert statuses[:4] == ["joining", "rejected", "round 1: training", "idle"], log
    assert statuses[-1] == "stopping (SIGTERM)"
    # After finish the trainer re-joins at once; the exiting aggregator may still admit it
    # (idle again) within milliseconds, so "finished" itself may go unseen.
    assert set(statuses[4:-1]) <= {"finished", "idle"}, statuses
    stopping_at, stopping = next((t, f) for t, f in trainer_sd.received if "STOPPING" in f)
    assert stopping == {"STOPPING": "1", "STATUS": "stopping (SIGTERM)"}
    assert '"agent_stopping"' in log

    pings = trainer_sd.times("WATCHDOG")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert pings[0] < ready_at  # fed from the start of the event loop, before READY
    assert len(pings) >= (stopping_at - pings[0]) / 0.5 * 0.5
    assert 0.35 <= statistics.median(gaps) <= 0.75
    # The bound that matters: systemd acts after WATCHDOG_USEC (1 s) without a ping.
    assert max(gaps) < 1.0, f"a {max(gaps):.3f} s gap between pings: systemd would act"

    agg_statuses = aggregator_sd.statuses()
    assert aggregator_sd.received[0][1]["READY"] == "1"
    assert any(s.startswith("round 1: training") for s in agg_statuses), agg_statuses
    assert agg_statuses[-1] == "finished after 1 rounds"
    assert aggregator_sd.times("WATCHDOG") == []  # no WATCHDOG_USEC, no pings

    inherited = [json.loads(line) for line in probe.read_text().splitlines()]
    assert len(inherited) == 3  # the aggregator's get_weights, the trainer's fit and evaluate
    assert all(env == dict.fromkeys(SD_VARS) for env in inherited)
