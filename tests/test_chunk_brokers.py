"""Chunked messages over a real mosquitto and a real nats-server: chunks out of order,
duplicated, tampered, misplaced on another sender's topic or never sent; a sender beyond the
reassembly budget; a chunk size the broker cannot carry."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.config import AgentConfig, PluginConfig, TransferConfig
from agent.errors import ConfigError
from agent.messages import Kind
from agent.messages.bodies import Body, Manifest, ModelUpdate
from agent.messages.chunks import build, frame, parse_frame
from agent.messages.codec import encode
from agent.messages.tensors import to_tensors
from agent.node import bus_settings, run_node
from agent.plugin.loader import CheckedPlugin
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy
from agent.runtime.reassembly import Limits
from tests.helpers import (
    LOOSE,
    Recorder,
    SizedToy,
    aggregator_config,
    chunk_index,
    federate_over,
    trainer_config,
)


def built(body: Body, chunk_size: int, *, sealed: bool) -> tuple[Manifest, list[bytes]]:
    """``chunks.build`` with its frames as a list."""
    manifest, frames = build(body, chunk_size, sealed=sealed)
    return manifest, list(frames)


pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

CHUNKS = TransferConfig(chunk_size=64 * 1024, timeout=3.0)
SHAPES = [(600, 500), (7,)]  # 300 007 float32: 19 chunks of 64 KiB


def _flip(payload: bytes) -> bytes:
    transfer, index, data = parse_frame(payload)
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x10
    return frame(transfer, index, bytes(tampered))


def _rss() -> int:
    """This process's resident set, bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_chunk_faults_end_as_drops_or_dropouts(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """a1's chunks come out of order and twice, a4 also puts a chunk on a1's topic: both
    count. a2's one tampered chunk (one bit) and a3's lost chunk make them dropouts at the
    deadline; the round aggregates a1 and a4 (mean of 1 and 4)."""
    a1_topic = "fl/fed/model_para/update/a1"
    faults = {
        "a1": lambda t, p: [(t, p, 0.3 if chunk_index(p) == 0 else 0.0), (t, p, 0.0)],
        "a2": lambda t, p: [(t, _flip(p) if chunk_index(p) == 1 else p, 0.0)],
        "a3": lambda t, p: [] if chunk_index(p) == 2 else [(t, p, 0.0)],
        "a4": lambda t, p: [(t, p, 0.0)] + ([(a1_topic, p, 0.0)] if chunk_index(p) == 0 else []),
    }
    plugins = {
        a: CheckedPlugin("toy", SizedToy(v, 1, SHAPES))
        for a, v in zip(faults, (1, 2, 3, 4), strict=True)
    }
    config = msgspec.structs.replace(
        aggregator_config(
            broker.url, tmp_path, agents=4, rounds=1, round_timeout=5.0, robust=LOOSE
        ),
        transfer=CHUNKS,
    )
    with capture_logs() as logs:
        summary, _ = await federate_over(
            broker.url,
            plugins,
            config,
            lambda a: msgspec.structs.replace(
                trainer_config(a, broker.url, tmp_path), transfer=CHUNKS
            ),
            wrap=faults,
        )
    (record,) = summary.rounds
    assert record.survivors == ["a1", "a4"]
    assert sorted(record.dropouts) == ["a2", "a3"]
    reasons = {e["reason"] for e in logs if e["event"] == "message_dropped"}
    assert {"chunk_mismatch", "unknown_transfer"} <= reasons


async def test_a_sender_beyond_the_budget_is_dropped_and_memory_stays_bounded(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The receiver holds 48 MB of unfinished transfers at most. A 40 MB update short of
    one chunk is spooled to disk (the receiver's RSS grows by far less); a second 40 MB
    manifest is refused as over_budget and its chunks name no transfer."""
    registry = ListenerRegistry()
    rec = Recorder()
    registry.register(Kind.MODEL_UPDATE, rec, rounds=RoundPolicy.ANY)
    dispatcher = Dispatcher(
        federation="fed",
        registry=registry,
        current_round=lambda: 1,
        max_payload=2 << 20,
        transfer=Limits(budget=48_000_000, spool_dir=tmp_path),
    )
    big = ModelUpdate(
        model_version=1,
        num_examples=1,
        tensors=to_tensors([np.frombuffer(os.urandom(40_000_000), np.float32)]),
    )
    first, frames = built(big, 1_000_000, sealed=False)
    second, more = built(big, 1_000_000, sealed=False)
    del big
    settings = BusSettings(client_id="receiver", max_payload=2 << 20)
    with capture_logs() as logs:
        async with (
            bus_from_url(broker.url, settings) as rx,
            bus_from_url(broker.url, BusSettings(client_id="sender")) as tx,
        ):
            await rx.subscribe("fl/fed/model_para/update/+")
            await rx.wait_connected(timeout=10)
            await tx.wait_connected(timeout=10)
            receiver = asyncio.create_task(dispatcher.run(rx))
            before = _rss()
            topics = ("fl/fed/model_para/update/a1", "fl/fed/model_para/update/a2")
            for topic, manifest, chunks in (
                (topics[0], first, frames[:-1]),
                (topics[1], second, more),
            ):
                sender = topic.rsplit("/", 1)[1]
                await tx.publish(topic, encode(manifest, federation="fed", round=1, sender=sender))
                for data in chunks:
                    await tx.publish(topic, data)
            expected = 2 + len(frames) - 1 + len(more)
            async with asyncio.timeout(30):
                while dispatcher.metrics.bytes_received.labels("chunk")._value.get() < 39e6 or (
                    sum(dispatcher.dropped.values()) < 1 + len(more)
                ):
                    await asyncio.sleep(0.05)
            grown = _rss() - before
            receiver.cancel()
    assert expected > 80
    assert rec.seen == []
    assert dispatcher.dropped["over_budget"] == 1
    assert dispatcher.dropped["unknown_transfer"] == len(more)
    assert grown < 25_000_000, grown
    assert any(e.get("reason") == "over_budget" for e in logs)


async def test_a_chunk_size_the_broker_cannot_carry_is_refused_at_start(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The brokers here take 16 MiB. A 20 MB [transfer] chunk_size (with max_payload raised
    to allow it) is refused when the bus connects, by a ConfigError naming the setting; the
    node does not start a run."""
    base = msgspec.structs.replace(
        trainer_config("a1", broker.url, tmp_path),
        plugin=PluginConfig(name="cancer-logreg", options={"agent_index": 0, "num_agents": 1}),
    )
    config = AgentConfig.parse(_with_chunk_size(base, 20_000_000))
    async with bus_from_url(broker.url, bus_settings(config)) as bus:
        with pytest.raises(ConfigError, match=r"\[transfer\] chunk_size = 20000000"):
            await bus.wait_connected(timeout=10)
    # Every task that waits on the bus sees the same refusal: it surfaces once, bare.
    with pytest.raises(ConfigError, match=r"\[transfer\] chunk_size = 20000000"):
        async with asyncio.timeout(20):
            await run_node(config)


def _with_chunk_size(config: AgentConfig, chunk_size: int) -> bytes:
    return msgspec.toml.encode(
        msgspec.structs.replace(
            config, max_payload=2 * chunk_size, transfer=TransferConfig(chunk_size=chunk_size)
        ),
        enc_hook=str,
    )


async def test_a_late_joiner_gets_the_current_chunked_model(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """a2 joins after round 1 (the model in force is chunked, and chunks are never
    retained): its inbox copy arrives in chunks, and it trains in a later round."""
    from agent.node import bus_settings as settings_of
    from agent.roles.aggregator import Aggregator
    from agent.roles.trainer import Trainer

    config = msgspec.structs.replace(
        aggregator_config(
            broker.url, tmp_path, agents=1, rounds=3, round_timeout=5.0, robust=LOOSE
        ),
        transfer=CHUNKS,
    )

    def configure(agent_id: str) -> AgentConfig:
        return msgspec.structs.replace(
            trainer_config(agent_id, broker.url, tmp_path), transfer=CHUNKS
        )

    round_one = asyncio.Event()

    class Observer:
        def round_started(self, round_: int, cohort: object) -> None:
            pass

        def round_finished(self, record: object) -> None:
            round_one.set()

    async def trainer(agent_id: str, value: float, after: asyncio.Event | None) -> None:
        if after is not None:
            await after.wait()
        tconfig = configure(agent_id)
        async with bus_from_url(broker.url, settings_of(tconfig)) as bus:
            plugin = CheckedPlugin("toy", SizedToy(value, 1, SHAPES))
            await Trainer(config=tconfig, bus=bus, plugin=plugin).run()

    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(trainer("a1", 1.0, None)),
            tg.create_task(trainer("a2", 3.0, round_one)),
        ]
        async with bus_from_url(broker.url, settings_of(config)) as bus:
            aggregator = Aggregator(
                config=config,
                bus=bus,
                plugin_name="toy",
                initial_weights=SizedToy(0, 1, SHAPES).get_weights(),
                observer=Observer(),  # type: ignore[arg-type]
            )
            summary = await aggregator.run()
        for task in tasks:
            task.cancel()
    assert summary.rounds[0].survivors == ["a1"]
    assert summary.rounds[-1].survivors == ["a1", "a2"]
