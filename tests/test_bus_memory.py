"""The supervised bus against the in-process MemoryBroker: every Bus behaviour, no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from agent.bus import Bus, BusMessage, BusSettings, LastWill
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.bus.topics import TopicError
from agent.errors import BusTimeoutError, NotConnectedError, OversizedError, TransportError

WAIT = 5.0  # generous bound for anything that should happen at once


def settings(client_id: str, **overrides: object) -> BusSettings:
    base: dict[str, object] = {
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "publish_timeout": 2.0,
        "connect_timeout": 1.0,
    }
    base.update(overrides)
    return BusSettings(client_id, **base)  # type: ignore[arg-type]


async def receive(messages: AsyncIterator[BusMessage]) -> BusMessage:
    async with asyncio.timeout(WAIT):
        return await anext(messages)


@pytest.fixture
def hub() -> MemoryBroker:
    """A fresh in-process broker per test."""
    return MemoryBroker()


async def test_memory_bus_implements_the_protocol(hub: MemoryBroker) -> None:
    """MemoryBus is usable wherever a ``Bus`` is expected (static and runtime shape)."""
    bus: Bus = MemoryBus(hub, settings("a"))
    for name in ("wait_connected", "subscribe", "publish", "messages", "on_connect"):
        assert callable(getattr(bus, name))


async def test_publish_subscribe_round_trip(hub: MemoryBroker) -> None:
    """A message published on one bus arrives on another bus subscribed to its topic."""
    async with MemoryBus(hub, settings("a")) as a, MemoryBus(hub, settings("b")) as b:
        await b.subscribe("fl/f/join")
        await b.wait_connected(WAIT)
        await a.publish("fl/f/join", b"hello")
        message = await receive(b.messages())
    assert message == BusMessage("fl/f/join", b"hello", retained=False)


async def test_wildcard_subscriptions_match_like_mqtt(hub: MemoryBroker) -> None:
    """``+`` matches one level and ``#`` the rest, including the parent level itself."""
    async with MemoryBus(hub, settings("a")) as bus:
        await bus.subscribe("fl/+/status")
        await bus.subscribe("m/#")
        await bus.wait_connected(WAIT)
        for topic in ["fl/x/status", "fl/x/y/status", "m", "m/a/b", "other"]:
            await bus.publish(topic, b"")
        messages = bus.messages()
        got = [(await receive(messages)).topic for _ in range(3)]
    assert got == ["fl/x/status", "m", "m/a/b"]


async def test_subscriptions_made_before_entering_are_live_once_connected(
    hub: MemoryBroker,
) -> None:
    """Subscribing before ``async with`` is recorded and in place when wait_connected returns."""
    bus = MemoryBus(hub, settings("a"))
    await bus.subscribe("t/1")
    async with bus:
        await bus.wait_connected(WAIT)
        hub.publish("t/1", b"x")
        assert (await receive(bus.messages())).payload == b"x"


async def test_retained_message_reaches_late_subscriber(hub: MemoryBroker) -> None:
    """A retained message is delivered (flagged retained) to a subscriber that comes later."""
    async with MemoryBus(hub, settings("a")) as a:
        await a.wait_connected(WAIT)
        await a.publish("fl/f/model_para/global", b"v1", retain=True)
        await a.publish("fl/f/model_para/global", b"v2", retain=True)
    async with MemoryBus(hub, settings("b")) as b:
        await b.subscribe("fl/f/model_para/+")
        message = await receive(b.messages())
    assert message == BusMessage("fl/f/model_para/global", b"v2", retained=True)


async def test_empty_retained_payload_clears_the_topic(hub: MemoryBroker) -> None:
    """Publishing an empty retained payload removes the retained message (MQTT rule)."""
    hub.publish("s/a", b"online", retain=True)
    hub.publish("s/a", b"", retain=True)
    assert hub.retained("s/a") is None


async def test_drop_reconnects_resubscribes_and_calls_back(hub: MemoryBroker) -> None:
    """After a dropped connection the bus reconnects by itself, replays its subscriptions,
    calls on_connect with False then True, and receives messages published afterwards."""
    calls: list[bool] = []
    connected_again = asyncio.Event()

    async def on_connect(reconnect: bool) -> None:
        calls.append(reconnect)
        if reconnect:
            connected_again.set()

    bus = MemoryBus(hub, settings("a"))
    bus.on_connect(on_connect)
    async with bus:
        await bus.subscribe("fl/f/agent/a")
        await bus.wait_connected(WAIT)
        with capture_logs() as logs:
            hub.drop("a")
            async with asyncio.timeout(WAIT):
                await connected_again.wait()
        hub.publish("fl/f/agent/a", b"after")
        assert (await receive(bus.messages())).payload == b"after"
    assert calls == [False, True]
    events = [entry["event"] for entry in logs]
    assert events.index("bus_disconnected") < events.index("bus_reconnecting")
    assert events.index("bus_reconnecting") < events.index("bus_connected")


async def test_on_connect_callback_can_reannounce(hub: MemoryBroker) -> None:
    """A callback may publish (e.g. re-send join) on every connect; the bus is usable then."""
    seen = MemoryBus(hub, settings("watcher"))
    agent = MemoryBus(hub, settings("agent"))

    async def announce(reconnect: bool) -> None:
        await agent.publish("fl/f/join", b"reconnect" if reconnect else b"first")

    agent.on_connect(announce)
    async with seen:
        await seen.subscribe("fl/f/join")
        await seen.wait_connected(WAIT)
        messages = seen.messages()
        async with agent:
            assert (await receive(messages)).payload == b"first"
            hub.drop("agent")
            assert (await receive(messages)).payload == b"reconnect"


async def test_failing_callback_does_not_stop_the_bus(hub: MemoryBroker) -> None:
    """An exception in one on_connect callback is logged; later callbacks still run."""
    ran = asyncio.Event()

    async def broken(reconnect: bool) -> None:
        raise RuntimeError("boom")

    async def fine(reconnect: bool) -> None:
        ran.set()

    bus = MemoryBus(hub, settings("a"))
    bus.on_connect(broken)
    bus.on_connect(fine)
    with capture_logs() as logs:
        async with bus:
            async with asyncio.timeout(WAIT):
                await ran.wait()
            assert bus.is_connected
    assert any(entry["event"] == "bus_connect_callback_failed" for entry in logs)


async def test_publish_while_broker_down_raises_not_connected(hub: MemoryBroker) -> None:
    """With no broker session, publish gives up with NotConnectedError after publish_timeout."""
    hub.stop()
    async with MemoryBus(hub, settings("a", publish_timeout=0.2)) as bus:
        with pytest.raises(NotConnectedError):
            await bus.publish("t/x", b"lost")


async def test_publish_waits_for_reconnect_within_timeout(hub: MemoryBroker) -> None:
    """A publish issued while disconnected is sent once the bus reconnects (at least once)."""
    hub.stop()
    async with MemoryBus(hub, settings("a", publish_timeout=WAIT)) as bus:
        publishing = asyncio.create_task(bus.publish("t/x", b"late"))
        await asyncio.sleep(0.05)
        assert not publishing.done()
        hub.start()
        await publishing
    assert ("t/x", b"late", False) in hub.published


async def test_reconnect_attempts_back_off_while_broker_is_down(hub: MemoryBroker) -> None:
    """While the broker refuses connections the bus retries with attempts 1, 2, 3… logged."""
    hub.stop()
    with capture_logs() as logs:
        async with MemoryBus(hub, settings("a")) as bus:
            while sum(e["event"] == "bus_reconnecting" for e in logs) < 3:
                await asyncio.sleep(0.01)
            hub.start()
            await bus.wait_connected(WAIT)
    attempts = [e["attempt"] for e in logs if e["event"] == "bus_reconnecting"]
    assert attempts[:3] == [1, 2, 3]
    assert all(0 < e["delay"] <= 0.05 for e in logs if e["event"] == "bus_reconnecting")


async def test_wait_connected_times_out_with_typed_error(hub: MemoryBroker) -> None:
    """wait_connected raises BusTimeoutError (also a TimeoutError) when no session comes."""
    hub.stop()
    async with MemoryBus(hub, settings("a")) as bus:
        with pytest.raises(BusTimeoutError):
            await bus.wait_connected(0.05)
        with pytest.raises(TimeoutError):
            await bus.wait_connected(0.05)


async def test_closed_bus_refuses_publish_and_wait(hub: MemoryBroker) -> None:
    """Outside ``async with`` publish and wait_connected fail at once with NotConnectedError."""
    bus = MemoryBus(hub, settings("a"))
    with pytest.raises(NotConnectedError):
        await bus.publish("t/x", b"")
    with pytest.raises(NotConnectedError):
        await bus.wait_connected(1)


async def test_oversized_publish_is_refused(hub: MemoryBroker) -> None:
    """A payload above max_payload raises OversizedError and reaches nobody."""
    async with MemoryBus(hub, settings("a", max_payload=10)) as bus:
        with pytest.raises(OversizedError) as raised:
            await bus.publish("t/x", b"x" * 11)
    assert (raised.value.size, raised.value.limit) == (11, 10)
    assert hub.published == []


async def test_invalid_topics_are_refused(hub: MemoryBroker) -> None:
    """Publishing to a wildcard or malformed name, or subscribing to a bad filter, fails."""
    async with MemoryBus(hub, settings("a")) as bus:
        with pytest.raises(TopicError):
            await bus.publish("t/+", b"")
        with pytest.raises(TopicError):
            await bus.subscribe("t/#/x")


async def test_oversized_incoming_message_is_dropped_and_logged(hub: MemoryBroker) -> None:
    """An incoming payload above our max_payload is dropped with a log line, never raised."""
    async with MemoryBus(hub, settings("a", max_payload=10)) as bus:
        await bus.subscribe("t/#")
        await bus.wait_connected(WAIT)
        with capture_logs() as logs:
            hub.publish("t/big", b"x" * 11)
            hub.publish("t/small", b"ok")
        assert (await receive(bus.messages())).topic == "t/small"
    dropped = [e for e in logs if e["event"] == "bus_message_dropped"]
    assert dropped == [
        {
            "event": "bus_message_dropped",
            "log_level": "warning",
            "reason": "oversized",
            "topic": "t/big",
            "size": 11,
            "limit": 10,
            "transport": "memory",
            "client_id": "a",
        }
    ]


async def test_full_queue_drops_newest_and_logs(hub: MemoryBroker) -> None:
    """When the bounded queue is full, new messages are dropped and ``bus_queue_full`` logged."""
    async with MemoryBus(hub, settings("a", queue_size=2)) as bus:
        await bus.subscribe("t/+")
        await bus.wait_connected(WAIT)
        with capture_logs() as logs:
            for n in range(3):
                hub.publish(f"t/{n}", b"")
        messages = bus.messages()
        assert [(await receive(messages)).topic for _ in range(2)] == ["t/0", "t/1"]
    assert [e["topic"] for e in logs if e["event"] == "bus_queue_full"] == ["t/2"]


async def test_will_is_published_on_drop_not_on_clean_exit(hub: MemoryBroker) -> None:
    """The last will goes out when the connection dies, and not when the bus exits cleanly."""
    will = LastWill("fl/f/status/a", b"offline", retain=True)
    async with MemoryBus(hub, settings("a", will=will)) as bus:
        await bus.wait_connected(WAIT)
        hub.drop("a")
        await bus.wait_connected(WAIT)
    assert hub.published.count(("fl/f/status/a", b"offline", True)) == 1
    assert hub.retained("fl/f/status/a") == b"offline"


async def test_messages_ends_after_exit(hub: MemoryBroker) -> None:
    """``messages()`` yields what was queued, then stops once the bus has exited."""
    bus = MemoryBus(hub, settings("a"))
    async with bus:
        await bus.subscribe("t/x")
        await bus.wait_connected(WAIT)
        hub.publish("t/x", b"queued")
    async with asyncio.timeout(WAIT):
        assert [m.payload async for m in bus.messages()] == [b"queued"]


async def test_bus_is_reusable_but_not_reentrant(hub: MemoryBroker) -> None:
    """Entering an open bus raises; after exit the same bus can be entered again."""
    bus = MemoryBus(hub, settings("a"))
    async with bus:
        with pytest.raises(RuntimeError, match="re-entrant"):
            await bus.__aenter__()
    async with bus:
        await bus.wait_connected(WAIT)
        assert hub.client_ids == ["a"]
    assert hub.client_ids == []


async def test_session_takeover_reconnects_the_older_bus(hub: MemoryBroker) -> None:
    """A second connection with the same client id takes over; the first bus reconnects."""
    async with MemoryBus(hub, settings("same")) as first:
        await first.wait_connected(WAIT)
        with capture_logs() as logs:
            hub.connect("same", lambda *_: None)
            while not any(e["event"] == "bus_disconnected" for e in logs):
                await asyncio.sleep(0.01)
        await first.wait_connected(WAIT)
    assert any(e.get("reason") == "session taken over" for e in logs)


async def test_refused_subscription_raises_and_is_not_replayed(hub: MemoryBroker) -> None:
    """A subscription the broker refuses (ACL) raises TransportError to the caller and is
    forgotten, so it is not replayed after a reconnect."""
    hub.denied.add("fl/f/agent/other")
    async with MemoryBus(hub, settings("a")) as bus:
        await bus.wait_connected(WAIT)
        with pytest.raises(TransportError, match="not authorized"):
            await bus.subscribe("fl/f/agent/other")
        with capture_logs() as logs:
            hub.drop("a")
            while not any(e["event"] == "bus_connected" for e in logs):
                await asyncio.sleep(0.01)
    assert not any(e["event"] == "bus_subscribe_refused" for e in logs)


async def test_refusal_during_replay_is_logged_and_others_still_work(hub: MemoryBroker) -> None:
    """A filter refused while replaying is logged; the bus still connects and the other
    subscriptions work."""
    hub.denied.add("secret/#")
    bus = MemoryBus(hub, settings("a"))
    await bus.subscribe("secret/#")
    await bus.subscribe("open/x")
    with capture_logs() as logs:
        async with bus:
            await bus.wait_connected(WAIT)
            hub.publish("open/x", b"ok")
            assert (await receive(bus.messages())).topic == "open/x"
    refused = [e["topic_filter"] for e in logs if e["event"] == "bus_subscribe_refused"]
    assert refused == ["secret/#"]
