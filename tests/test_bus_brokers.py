"""MqttBus and NatsBus against real brokers (mosquitto, nats-server) started by fixtures."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.brokers import BrokerNotFoundError, EmbeddedBroker, find_broker_binary
from agent.bus import Bus, BusMessage, BusSettings, LastWill
from agent.bus.mqtt import MqttBus
from agent.bus.nats_bus import NatsBus
from agent.bus.url import TlsFiles, bus_from_url, parse_broker_url
from agent.errors import ConfigError, NotConnectedError, OversizedError, TransportError

pytestmark = pytest.mark.broker

WAIT = 10.0  # bound for anything that should happen promptly; never asserted as a duration
REPO = Path(__file__).resolve().parent.parent


def settings(client_id: str, **overrides: object) -> BusSettings:
    base: dict[str, object] = {
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "publish_timeout": 5.0,
        "connect_timeout": 2.0,
    }
    base.update(overrides)
    return BusSettings(client_id, **base)  # type: ignore[arg-type]


async def receive(messages: AsyncIterator[BusMessage]) -> BusMessage:
    async with asyncio.timeout(WAIT):
        return await anext(messages)


async def test_round_trip(broker: EmbeddedBroker) -> None:
    """A message published by one bus is received by another subscribed bus."""
    async with (
        bus_from_url(broker.url, settings("pub")) as pub,
        bus_from_url(broker.url, settings("sub")) as sub,
    ):
        await sub.subscribe("fl/f1/join")
        await sub.wait_connected(WAIT)
        await pub.publish("fl/f1/join", b"\x00binary\xff")
        message = await receive(sub.messages())
    assert message == BusMessage("fl/f1/join", b"\x00binary\xff", retained=False)


async def test_wildcards_match_the_same_on_both_brokers(broker: EmbeddedBroker) -> None:
    """``+`` and ``#`` filters (mapped to ``*``/``>`` on NATS) match MQTT-style, including
    ``a/#`` matching ``a``; received topics are canonical."""
    async with bus_from_url(broker.url, settings("w")) as bus:
        await bus.subscribe("fl/+/status")
        await bus.subscribe("m/#")
        await bus.wait_connected(WAIT)
        for topic in ["fl/a1/status", "fl/a1/x/status", "m", "m/a/b", "other", "end/marker"]:
            await bus.publish(topic, topic.encode())
        await bus.subscribe("end/marker")
        await bus.publish("end/marker", b"")
        messages = bus.messages()
        topics = [(await receive(messages)).topic for _ in range(4)]
    assert topics == ["fl/a1/status", "m", "m/a/b", "end/marker"]


async def test_qos1_publishes_are_all_delivered_in_order(broker: EmbeddedBroker) -> None:
    """Every acknowledged publish (PUBACK on MQTT, flushed on NATS) is delivered, in order."""
    count = 50
    async with (
        bus_from_url(broker.url, settings("pub")) as pub,
        bus_from_url(broker.url, settings("sub")) as sub,
    ):
        await sub.subscribe("fl/f/update/+")
        await sub.wait_connected(WAIT)
        for n in range(count):
            await pub.publish(f"fl/f/update/a{n}", n.to_bytes(2, "big"))
        messages = sub.messages()
        got = [int.from_bytes((await receive(messages)).payload, "big") for _ in range(count)]
    assert got == list(range(count))


async def test_eight_mebibyte_payload_round_trips(broker: EmbeddedBroker) -> None:
    """The broker templates accept the default max_payload (8 MiB) end to end."""
    payload = os.urandom(8 * 1024 * 1024)
    async with bus_from_url(broker.url, settings("big")) as bus:
        await bus.subscribe("fl/f/model_para/global")
        await bus.wait_connected(WAIT)
        await bus.publish("fl/f/model_para/global", payload)
        assert (await receive(bus.messages())).payload == payload


async def test_retained_message_reaches_late_subscriber_on_mqtt(
    broker: EmbeddedBroker,
) -> None:
    """MQTT keeps a retained message for a later subscriber (flagged retained); NATS core
    has no retention, so its late subscriber sees only what is published afterwards."""
    async with bus_from_url(broker.url, settings("early")) as early:
        await early.wait_connected(WAIT)
        await early.publish("fl/f/model_para/global", b"v1", retain=True)
    async with bus_from_url(broker.url, settings("late")) as late:
        await late.subscribe("fl/f/model_para/+")
        await late.wait_connected(WAIT)
        await late.publish("fl/f/model_para/marker", b"marker")
        first = await receive(late.messages())
    if broker.kind == "mqtt":
        assert first == BusMessage("fl/f/model_para/global", b"v1", retained=True)
    else:
        assert first == BusMessage("fl/f/model_para/marker", b"marker", retained=False)


async def test_reconnects_after_broker_restart(broker: EmbeddedBroker) -> None:
    """Broker stopped (for several failed reconnect attempts) and restarted on the same
    port: the bus reconnects by itself, resubscribes, calls on_connect with False then
    True, and receives a message published after the restart."""
    calls: list[bool] = []
    reconnected = asyncio.Event()

    async def on_connect(reconnect: bool) -> None:
        calls.append(reconnect)
        if reconnect:
            reconnected.set()

    bus = bus_from_url(broker.url, settings("agent-1"))
    bus.on_connect(on_connect)
    async with bus:
        await bus.subscribe("fl/f/agent/agent-1")
        await bus.wait_connected(WAIT)
        with capture_logs() as logs:
            await asyncio.to_thread(broker.stop)
            async with asyncio.timeout(WAIT):  # down long enough for failed reconnects
                while sum(e["event"] == "bus_connect_failed" for e in logs) < 2:
                    await asyncio.sleep(0.02)
            await asyncio.to_thread(broker.start)
            async with asyncio.timeout(WAIT):
                await reconnected.wait()
        async with bus_from_url(broker.url, settings("aggregator")) as aggregator:
            await aggregator.publish("fl/f/agent/agent-1", b"after restart")
            message = await receive(bus.messages())
    assert message.payload == b"after restart"
    assert calls == [False, True]
    events = [entry["event"] for entry in logs]
    assert {"bus_disconnected", "bus_reconnecting", "bus_connected"} <= set(events)
    attempts = [e["attempt"] for e in logs if e["event"] == "bus_reconnecting"]
    assert attempts[:3] == [1, 2, 3]


async def test_connects_when_broker_starts_after_the_bus(broker: EmbeddedBroker) -> None:
    """A bus entered while its broker is down keeps retrying and connects once it is up."""
    await asyncio.to_thread(broker.stop)
    with capture_logs() as logs:
        async with bus_from_url(broker.url, settings("early-bird")) as bus:
            async with asyncio.timeout(WAIT):
                while not any(e["event"] == "bus_connect_failed" for e in logs):
                    await asyncio.sleep(0.02)
            await asyncio.to_thread(broker.start)
            await bus.wait_connected(WAIT)
            await bus.subscribe("fl/f/x")
            await bus.publish("fl/f/x", b"up")
            assert (await receive(bus.messages())).payload == b"up"


async def test_publish_while_broker_down_raises_not_connected(broker: EmbeddedBroker) -> None:
    """With the broker gone, publish raises NotConnectedError after publish_timeout."""
    async with bus_from_url(broker.url, settings("p", publish_timeout=0.5)) as bus:
        await bus.wait_connected(WAIT)
        await asyncio.to_thread(broker.stop)
        with pytest.raises(NotConnectedError):
            await bus.publish("fl/f/join", b"nobody home")


async def test_oversized_publish_is_refused(broker: EmbeddedBroker) -> None:
    """A payload above max_payload raises OversizedError before touching the broker."""
    async with bus_from_url(broker.url, settings("o", max_payload=1024)) as bus:
        await bus.wait_connected(WAIT)
        with pytest.raises(OversizedError):
            await bus.publish("fl/f/join", b"x" * 1025)


async def test_oversized_incoming_message_is_dropped(broker: EmbeddedBroker) -> None:
    """A message larger than the receiver's max_payload is dropped and logged, and the
    receiver keeps working."""
    async with (
        bus_from_url(broker.url, settings("small", max_payload=1024)) as small,
        bus_from_url(broker.url, settings("sender")) as sender,
    ):
        await small.subscribe("fl/f/+")
        await small.wait_connected(WAIT)
        with capture_logs() as logs:
            await sender.publish("fl/f/big", b"x" * 2048)
            await sender.publish("fl/f/small", b"ok")
            message = await receive(small.messages())
    assert message.topic == "fl/f/small"
    assert [e["topic"] for e in logs if e["event"] == "bus_message_dropped"] == ["fl/f/big"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1883",
        "mqtt:/missing-host",
        "127.0.0.1:1883",
        "mqtt://127.0.0.1:notaport",
        "mqtt://127.0.0.1:99999",
        "nats://127.0.0.1:4222/path",
        "",
    ],
)
def test_bad_url_raises_config_error(url: str) -> None:
    """A URL with an unknown scheme, no host, a bad port or a path is refused with a
    ConfigError that names the URL and the accepted schemes (credentials: test_redact.py)."""
    with pytest.raises(ConfigError) as raised:
        bus_from_url(url, settings("x"))
    assert repr(url) in str(raised.value)
    assert "mqtt://" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "kind", "port", "tls"),
    [
        ("mqtt://broker.local", MqttBus, 1883, False),
        ("mqtts://broker.local", MqttBus, 8883, True),
        ("nats://127.0.0.1", NatsBus, 4222, False),
        ("tls://127.0.0.1:7422", NatsBus, 7422, True),
        ("MQTT://[::1]:1884", MqttBus, 1884, False),
    ],
)
def test_url_schemes_pick_adapter_port_and_tls(
    url: str, kind: type[Bus], port: int, tls: bool
) -> None:
    """Each scheme selects its adapter, default port and TLS; explicit ports win."""
    bus = bus_from_url(url, settings("x"))
    assert isinstance(bus, kind)
    assert bus.port == port  # type: ignore[attr-defined]
    assert parse_broker_url(url).tls is tls


def test_tls_files_with_plaintext_url_are_refused(tmp_path: Path) -> None:
    """Giving TLS files with a plaintext scheme is a ConfigError, not a silent downgrade."""
    with pytest.raises(ConfigError, match="plaintext"):
        bus_from_url("mqtt://127.0.0.1", settings("x"), tls=TlsFiles(ca_file=tmp_path / "ca"))


def test_missing_tls_file_is_a_config_error(tmp_path: Path) -> None:
    """An unreadable CA file surfaces as ConfigError when the bus is built."""
    with pytest.raises(ConfigError, match="TLS"):
        bus_from_url("mqtts://127.0.0.1", settings("x"), tls=TlsFiles(ca_file=tmp_path / "no"))


_WILL_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from agent.bus import BusSettings, LastWill
    from agent.bus.url import bus_from_url

    async def main() -> None:
        will = LastWill("fl/f/status/child", b"offline", retain=False)
        async with bus_from_url(sys.argv[1], BusSettings("child", will=will)) as bus:
            await bus.wait_connected(10)
            print("ready", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_mqtt_last_will_is_sent_when_client_is_killed(mosquitto: EmbeddedBroker) -> None:
    """An MqttBus in a process killed with SIGKILL leaves; the broker publishes its will."""
    async with bus_from_url(mosquitto.url, settings("watcher")) as watcher:
        await watcher.subscribe("fl/f/status/+")
        await watcher.wait_connected(WAIT)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WILL_CHILD,
            mosquitto.url,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            assert child.stdout is not None
            async with asyncio.timeout(WAIT):
                while (line := await child.stdout.readline()) != b"ready\n":
                    assert line, "the child exited before it was connected"
            child.send_signal(signal.SIGKILL)
            message = await receive(watcher.messages())
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()
    assert message == BusMessage("fl/f/status/child", b"offline", retained=False)


async def test_mqtt_clean_exit_sends_no_will(mosquitto: EmbeddedBroker) -> None:
    """A clean exit sends DISCONNECT, so the broker discards the will."""
    will = LastWill("fl/f/status/a", b"offline", retain=False)
    async with bus_from_url(mosquitto.url, settings("watcher")) as watcher:
        await watcher.subscribe("fl/f/status/+")
        await watcher.wait_connected(WAIT)
        async with bus_from_url(mosquitto.url, settings("a", will=will)) as bus:
            await bus.wait_connected(WAIT)
        await watcher.publish("fl/f/status/marker", b"")
        assert (await receive(watcher.messages())).topic == "fl/f/status/marker"


async def test_nats_publishes_will_on_clean_exit(nats_server: EmbeddedBroker) -> None:
    """NATS has no will; NatsBus publishes it itself when it exits cleanly."""
    will = LastWill("fl/f/status/a", b"offline")
    async with bus_from_url(nats_server.url, settings("watcher")) as watcher:
        await watcher.subscribe("fl/f/status/+")
        await watcher.wait_connected(WAIT)
        async with bus_from_url(nats_server.url, settings("a", will=will)) as bus:
            await bus.wait_connected(WAIT)
        message = await receive(watcher.messages())
    assert message == BusMessage("fl/f/status/a", b"offline", retained=False)


def test_embedded_broker_restart_keeps_port_and_stops_cleanly() -> None:
    """restart() reuses the port; stop() reaps the process; close() removes the temp dir."""
    with EmbeddedBroker("nats") as broker:
        port, first_pid = broker.port, broker.pid
        broker.restart()
        assert broker.port == port
        assert broker.pid != first_pid
        assert broker.running
        directory = broker.config_path.parent
    assert not broker.running
    assert not directory.exists()


def test_broker_that_cannot_start_reports_its_log(nats_server: EmbeddedBroker) -> None:
    """A broker that cannot bind its port fails with TransportError quoting its log."""
    clash = EmbeddedBroker("nats", port=nats_server.port, start_timeout=5)
    try:
        with pytest.raises(TransportError, match="log"):
            clash.start()
        assert not clash.running
    finally:
        clash.close()


def test_missing_binary_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without mosquitto the error says how to install it (fixtures fail, never skip)."""
    monkeypatch.setattr("agent.brokers._EXTRA_DIRS", ())
    monkeypatch.setattr("sysconfig.get_path", lambda name: "/nonexistent")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BrokerNotFoundError, match="apt-get install mosquitto"):
        find_broker_binary("mqtt")
