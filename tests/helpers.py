"""The one module of helpers shared between test files: a toy plugin whose FedAvg result is
known exactly, config builders, in-memory federation drivers, a recording dispatcher and a
``fedbus`` subprocess runner. Test files import from here, never from each other."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.bus.base import BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.config import (
    AgentConfig,
    AggregatorConfig,
    IdentityConfig,
    PluginConfig,
    TrainerConfig,
)
from agent.identity import ca, pem
from agent.messages import Kind
from agent.messages.envelope import Message
from agent.plugin.api import EvaluateResult, FitResult, Scalar, Weights
from agent.plugin.loader import CheckedPlugin
from agent.robust.settings import RobustConfig
from agent.role import Identity, Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RunSummary
from agent.roles.trainer import Trainer
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security
from agent.runtime.metrics import Metrics


class ToyPlugin:
    """fit() returns weights filled with ``value`` (so FedAvg of a round is the
    num_examples-weighted mean of the values), or with ``step`` the weights plus ``value``
    (so the model after r rounds is r times that mean: a round applied twice shows);
    ``delay`` s of sleep make a round last; evaluate() reports the mean weight as loss."""

    def __init__(
        self,
        value: float,
        n: int,
        *,
        block: threading.Event | None = None,
        step: bool = False,
        delay: float = 0.0,
    ) -> None:
        self.value = value
        self.n = n
        self.block = block
        self.step = step
        self.delay = delay
        self.fits: list[Mapping[str, Scalar]] = []

    def get_weights(self) -> Weights:
        return [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]

    def num_examples(self) -> int:
        return self.n

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        if self.block is not None:
            self.block.wait(10)
        if self.delay:
            time.sleep(self.delay)
        self.fits.append(dict(config))
        if self.step:
            new = [(w + self.value).astype(w.dtype) for w in weights]
        else:
            new = [np.full_like(w, self.value) for w in weights]
        return FitResult(new, self.n, {"train_loss": self.value})

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        mean = float(np.mean(weights[0]))
        return EvaluateResult(mean, self.n, {"accuracy": min(1.0, mean / 10)})


def toy(value: float, n: int, **kw: Any) -> CheckedPlugin:
    return CheckedPlugin("toy", ToyPlugin(value, n, **kw))


def trainer_config(agent_id: str, url: str, state: Path, fed: str = "fed") -> AgentConfig:
    return AgentConfig(
        role=Role.TRAINER,
        agent_id=agent_id,
        federation=fed,
        bus_url=url,
        state_dir=state / agent_id,
        plugin=PluginConfig(name="toy"),
        trainer=TrainerConfig(join_retry=0.2, model_wait=5.0),
    )


def aggregator_config(
    url: str,
    state: Path,
    *,
    agents: int,
    rounds: int = 2,
    round_timeout: float = 10.0,
    fed: str = "fed",
    **kw: Any,
) -> AgentConfig:
    return AgentConfig(
        role=Role.AGGREGATOR,
        agent_id="aggregator",
        federation=fed,
        bus_url=url,
        state_dir=state / "aggregator",
        plugin=PluginConfig(name="toy"),
        aggregator=AggregatorConfig(
            rounds=rounds,
            min_fit_clients=1,
            min_available_clients=agents,
            join_timeout=10.0,
            round_timeout=round_timeout,
            eval_timeout=round_timeout,
            **kw,
        ),
    )


async def federate_in_memory(
    plugins: Mapping[str, CheckedPlugin],
    config: AgentConfig,
    trainer_configs: Callable[[str], AgentConfig],
    *,
    broker: MemoryBroker | None = None,
    revoked: Callable[[Identity], bool] | None = None,
    aggregator_metrics: Metrics | None = None,
    initial_weights: Weights | None = None,
) -> tuple[RunSummary, dict[str, Trainer]]:
    """Run the aggregator ``config`` with one in-process trainer per plugin on an in-memory
    broker until the schedule ends; the trainers are then stopped. Each trainer counts into
    its own ``Trainer.metrics``; the aggregator into ``aggregator_metrics`` if given. The
    initial model is ``initial_weights`` (default: the toy plugin's)."""
    broker = broker or MemoryBroker()
    trainers: dict[str, Trainer] = {}
    buses: list[MemoryBus] = []
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = []
            for agent_id, plugin in plugins.items():
                bus = MemoryBus(broker, BusSettings(client_id=agent_id))
                await bus.__aenter__()
                buses.append(bus)
                trainers[agent_id] = Trainer(
                    config=trainer_configs(agent_id), bus=bus, plugin=plugin
                )
                tasks.append(tg.create_task(trainers[agent_id].run()))
            async with MemoryBus(broker, BusSettings(client_id="aggregator")) as bus:
                aggregator = Aggregator(
                    config=config,
                    bus=bus,
                    plugin_name="toy",
                    initial_weights=initial_weights or toy(0, 1).get_weights(),
                    revoked=revoked,
                    metrics=aggregator_metrics,
                )
                summary = await aggregator.run()
            await asyncio.sleep(0.05)  # let finish reach the trainers
            for task in tasks:
                task.cancel()
    finally:
        for bus in buses:
            await bus.__aexit__(None, None, None)
    return summary, trainers


async def federate(
    tmp_path: Path, plugins: dict[str, CheckedPlugin], **agg: Any
) -> tuple[RunSummary, dict[str, Trainer]]:
    config = aggregator_config("mem://", tmp_path, agents=len(plugins), **agg)
    return await federate_in_memory(
        plugins, config, lambda agent_id: trainer_config(agent_id, "mem://", tmp_path)
    )


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.seen.append(message)


#: The federation id the recording dispatcher accepts.
FED = "fed"


def make(round_: int = 3) -> tuple[Dispatcher, Recorder, list[int]]:
    registry = ListenerRegistry()
    rec = Recorder()
    registry.register(Kind.JOIN, rec, rounds=RoundPolicy.ANY)
    registry.register(Kind.MODEL_UPDATE, rec, rounds=RoundPolicy.CURRENT)
    registry.register(Kind.METRICS, rec, rounds=RoundPolicy.NOT_STALE)
    current = [round_]
    return (
        Dispatcher(
            federation=FED, registry=registry, current_round=lambda: current[0], max_payload=10_000
        ),
        rec,
        current,
    )


def fedbus(
    *args: str, timeout: float = 100, tmpdir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def aggregator_process(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    """An aggregator OS process (``aggregator_main``) over ``config_path``: the toy plugin's
    initial weights, the config's bus; its JSON log lines (and stderr) go to ``log``."""
    code = "import sys; from tests.helpers import aggregator_main; aggregator_main(sys.argv[1])"
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def aggregator_main(config_path: str) -> None:
    """The body of ``aggregator_process``: run the aggregator's runs like ``fedbus run``
    (``agent.roles.aggregator.service``), with the toy plugin; exit 0 when the run trained."""
    from agent.logs import configure_logging
    from agent.node import bus_settings, open_bus, run_until_signal
    from agent.roles.aggregator.service import serve

    config = AgentConfig.load(Path(config_path))
    configure_logging(level="info", fmt="json")

    async def main() -> None:
        async with open_bus(config, bus_settings(config)) as bus:

            def build() -> Aggregator:
                weights = toy(0, 1).get_weights()
                return Aggregator(
                    config=config, bus=bus, plugin_name="toy", initial_weights=weights
                )

            async def play(_: Aggregator, work: Any) -> Any:
                return await work

            async def done(_: Aggregator) -> None:
                return None

            await serve(build, after_run=config.aggregator.after_run, play=play, finished=done)

    run_until_signal(main())


#: Robustness bounds off for toy models whose values jump (``SizedToy``): no round-relative
#: norm bound (so plain rounds stream, ``roles/aggregator/fold.py``), no model-change guard.
LOOSE = RobustConfig(norm_factor=0.0, max_change_factor=0.0)


class SizedToy(ToyPlugin):
    """``ToyPlugin`` with a model of the given float32 ``shapes`` (a 3M-parameter one, say)."""

    def __init__(self, value: float, n: int, shapes: list[tuple[int, ...]]) -> None:
        super().__init__(value, n)
        self.shapes = shapes

    def get_weights(self) -> Weights:
        return [np.zeros(s, np.float32) for s in self.shapes]


def identity_files(
    authority: ca.CertificateAuthority, agent_id: str, role: Role, where: Path
) -> IdentityConfig:
    """A fresh key and certificate of ``authority`` for ``agent_id`` under ``where``, and
    the ``[identity]`` table naming them (with ``where/ca.pem``)."""
    key, cert = ca.issue(authority, agent_id, role=role)
    pem.write_private_key(where / f"{agent_id}.key", key)
    pem.write_pem(where / f"{agent_id}.pem", cert)
    pem.write_pem(where / "ca.pem", authority.cert)
    return IdentityConfig(
        cert_file=where / f"{agent_id}.pem",
        key_file=where / f"{agent_id}.key",
        ca_file=where / "ca.pem",
    )


#: What ``ChunkFaults`` does to a trainer's chunk frames.
Fault = Callable[[str, bytes], list[tuple[str, bytes, float]]]


class ChunkFaults:
    """A ``Bus`` that passes everything through but hands each chunk frame (topic, payload)
    to ``fault``, which returns what to publish instead: (topic, payload, delay) triples
    (none: the chunk is lost; two: duplicated; a delay reorders; another topic: a chunk of
    this sender's transfer on someone else's topic)."""

    def __init__(self, inner: Any, fault: Fault) -> None:
        self._inner = inner
        self._fault = fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def __aenter__(self) -> ChunkFaults:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        from agent.messages.chunks import is_chunk

        if not is_chunk(payload):
            await self._inner.publish(topic, payload, retain=retain)
            return
        for where, data, delay in self._fault(topic, payload):
            if delay:
                await asyncio.sleep(delay)
            await self._inner.publish(where, data, retain=retain)


def chunk_index(payload: bytes) -> int:
    """The index of a chunk frame."""
    from agent.messages.chunks import parse_frame

    return parse_frame(payload)[1]


async def federate_over(
    url: str,
    plugins: Mapping[str, CheckedPlugin],
    config: AgentConfig,
    trainer_configs: Callable[[str], AgentConfig],
    *,
    wrap: Mapping[str, Fault] | None = None,
) -> tuple[RunSummary, dict[str, Trainer]]:
    """``federate_in_memory`` over a real broker at ``url``: each party on its own
    connection with the settings ``fedbus run`` uses (``node.bus_settings``); ``wrap`` puts
    a trainer's bus behind ``ChunkFaults``."""
    from agent.bus.url import bus_from_url
    from agent.node import bus_settings

    wrap = wrap or {}
    trainers: dict[str, Trainer] = {}
    buses: list[Any] = []
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = []
            for agent_id, plugin in plugins.items():
                tconfig = trainer_configs(agent_id)
                bus: Any = bus_from_url(url, bus_settings(tconfig))
                if agent_id in wrap:
                    bus = ChunkFaults(bus, wrap[agent_id])
                await bus.__aenter__()
                buses.append(bus)
                trainers[agent_id] = Trainer(config=tconfig, bus=bus, plugin=plugin)
                tasks.append(tg.create_task(trainers[agent_id].run()))
            async with bus_from_url(url, bus_settings(config)) as agg_bus:
                aggregator = Aggregator(
                    config=config,
                    bus=agg_bus,
                    plugin_name="toy",
                    initial_weights=next(iter(plugins.values())).get_weights(),
                )
                summary = await aggregator.run()
            await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
    finally:
        for bus in buses:
            await bus.__aexit__(None, None, None)
    return summary, trainers


class GossipPlugin:
    """P2P: starts from weights filled with ``value`` and ``fit`` returns them unchanged, so
    gossip alone moves the model: every peer must end at the mean of the starting values
    (Metropolis-Hastings weights keep the sum). ``evaluate`` reports the mean weight."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.fits = 0

    def get_weights(self) -> Weights:
        return [np.full((4, 3), self.value, np.float64), np.full(3, self.value, np.float64)]

    def num_examples(self) -> int:
        return 10

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        self.fits += 1
        return FitResult([w.copy() for w in weights], 10, {})

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        return EvaluateResult(float(np.mean(weights[0])), 10, {"accuracy": 0.5})


def peer_config(agent_id: str, url: str, state: Path, peers: list[str], **p2p: Any) -> AgentConfig:
    """A P2P peer's config (``[aggregator] mode = "p2p"``) over ``peers``."""
    from agent.config import P2PConfig, TrainingMode

    return AgentConfig(
        role=Role.TRAINER,
        agent_id=agent_id,
        federation="fed",
        bus_url=url,
        state_dir=state / agent_id,
        plugin=PluginConfig(name="gossip"),
        aggregator=AggregatorConfig(mode=TrainingMode.P2P),
        p2p=P2PConfig(peers=peers, **p2p),
    )


def agent_log_lines(log_dir: Path, agent_id: str) -> list[dict[str, Any]]:
    """The JSON log lines of demo agent ``agent_id``, from the fleet processes' logs
    (``log_dir/fleet-N.log``, every line naming its ``agent_id``)."""
    lines: list[dict[str, Any]] = []
    for log in sorted(log_dir.glob("fleet-*.log")):
        for text in log.read_text().splitlines():
            event = json.loads(text)
            if event.get("agent_id") == agent_id:
                lines.append(event)
    return lines


class _AnySigner:
    """A verifier that takes every signature (the dispatcher's sealing and chunking alone
    under test)."""

    def verify(self, signed: Any, **kw: Any) -> None:
        return None


def unsealing_dispatcher(registry: ListenerRegistry, key: X25519PrivateKey) -> Dispatcher:
    """A dispatcher of federation "fed" in round 1 (1 MiB payloads) that opens what is
    sealed to ``key`` and takes any signature."""
    return Dispatcher(
        federation="fed",
        registry=registry,
        current_round=lambda: 1,
        max_payload=1 << 20,
        security=Security(_AnySigner(), unseal_key=key),  # type: ignore[arg-type]
    )
