"""The P2P peer: a trainer with no aggregator in its loop (``[aggregator] mode = "p2p"``,
ARCHITECTURE.md §14).

Listeners (all on ``fl/{federation}/peer/{self}/{sender}``, any round):

============  ==========================================================================
kind          does
============  ==========================================================================
peer_hello    keeps the neighbour's sealing key; answers with ours when it is new
peer_model    keeps the neighbour's newest model for the next mix (sealed to our key)
revocations   the CA host's CRL: refuse its serials, drop the named neighbours (on
              ``fl/{federation}/revocations``; ``revocation``)
renew_reply   the CA's answer to our certificate renewal (identities on)
============  ==========================================================================

The loop (``Peer.steps``): ``local_steps`` plugin fits, send the model to every neighbour,
wait (bounded, ``book.NeighbourBook.collect``) for theirs, mix them with the
Metropolis-Hastings weights (``mixing.mix``), save (``state``), evaluate every
``eval_every`` steps, and say so in the status (version, accuracy, ``sketch``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent.bus.base import Bus
from agent.config import AgentConfig
from agent.errors import PluginError
from agent.identity.local import Credentials
from agent.messages import topics
from agent.messages.bodies import AgentStatus, Liveness
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.messages.peer_bodies import PeerHello, PeerModel
from agent.messages.tensors import to_tensors
from agent.plugin.api import Weights
from agent.plugin.loader import CheckedPlugin
from agent.roles.peer import state
from agent.roles.peer.book import NeighbourBook, graph_neighbours
from agent.roles.peer.mixing import mix
from agent.roles.peer.revocation import PeerRevocations
from agent.roles.peer.sketch import sketch
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox
from agent.runtime.reassembly import Limits
from agent.runtime.renewer import renewer_for
from agent.runtime.tasks import finish_in_thread, task_group

log = structlog.get_logger(__name__)
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
#: Status messages after a step at most this often (s); the heartbeat sends them anyway.
STATUS_EVERY = 1.0


class Peer:
    """One P2P peer over ``bus``. ``run()`` returns after ``[p2p] steps`` (0: when cancelled)."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        bus: Bus,
        plugin: CheckedPlugin,
        metrics: Metrics | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._config, self._bus, self._plugin = config, bus, plugin
        self._fed, self._id = config.federation, config.agent_id
        self._degree = config.p2p.degree
        self.book = NeighbourBook(graph_neighbours(config))
        credentials = (
            Credentials.load(config.identity, agent_id=self._id, federation=self._fed)
            if config.identity.enabled
            else None
        )
        signer = credentials.signer if credentials else None
        self._outbox = Outbox(
            bus,
            federation=self._fed,
            sender=self._id,
            signer=signer,
            metrics=metrics,
            chunk_size=config.transfer.chunk_size,
        )  # fmt
        self.metrics = self._outbox.metrics
        # Models are sealed to each neighbour's own key: one outbox per neighbour.
        self._to = {
            a: Outbox(
                bus,
                federation=self._fed,
                sender=self._id,
                signer=signer,
                metrics=self.metrics,
                chunk_size=config.transfer.chunk_size,
            )
            for a in self.book.ids
        }
        self._key = state.seal_key(config.state_dir) if credentials else None
        self.revocations = (
            PeerRevocations(credentials.ca, agent_id=self._id, book=self.book)
            if credentials
            else None
        )
        self._renewer = (
            renewer_for(config, self._outbox, credentials.ca, tls) if credentials else None
        )
        registry = ListenerRegistry()
        registry.register(Kind.PEER_HELLO, self._on_hello, rounds=RoundPolicy.ANY)
        registry.register(Kind.PEER_MODEL, self._on_model, rounds=RoundPolicy.ANY)
        if self.revocations is not None:
            registry.register(Kind.REVOCATIONS, self.revocations.on_message, rounds=RoundPolicy.ANY)
        if self._renewer is not None:
            registry.register(Kind.RENEW_REPLY, self._renewer.on_reply, rounds=RoundPolicy.ANY)
        self.dispatcher = Dispatcher(
            federation=self._fed,
            registry=registry,
            current_round=lambda: self.version,
            max_payload=config.max_payload,
            security=Security(
                credentials.verifier(revoked=self.revocations.refuses), unseal_key=self._key
            )
            if credentials and self.revocations
            else None,
            metrics=self.metrics,
            transfer=Limits.of(config.transfer),
        )
        saved = state.load(config.state_dir)
        self.weights: Weights = saved[0] if saved else plugin.get_weights()
        #: gossip steps taken (continues from the saved model after a restart)
        self.version = saved[1] if saved else 0
        self.accuracy: float | None = None
        #: all ``[p2p] steps`` taken (said in our hellos)
        self.done = bool(config.p2p.steps) and self.version >= config.p2p.total_steps
        self._num_examples = 0
        self.ready = asyncio.Event()
        self._status_at = 0.0
        self.status_changed = asyncio.Event()  # pushes systemd's STATUS= (sdnotify)
        self._status = "starting"

    @property
    def status(self) -> str:
        """What the peer is doing, for humans (``step 3: training``)."""
        return self._status

    @status.setter
    def status(self, text: str) -> None:
        self._status = text
        self.status_changed.set()

    @property
    def seal_key(self) -> bytes | None:
        """Our X25519 public key (None with identities off)."""
        return None if self._key is None else self._key.public_key().public_bytes(*_RAW)

    async def run(self) -> None:
        """Subscribe, say hello, run the steps (then stay up serving) until cancelled."""
        await self._bus.subscribe(topics.PEER.format(self._fed, "+", peer=self._id))
        if self._config.identity.enabled:
            await self._bus.subscribe(topics.INBOX.format(self._fed, self._id))  # renewal
            await self._bus.subscribe(topics.REVOCATIONS.format(self._fed))
        self._bus.on_connect(self._on_connect)
        with structlog.contextvars.bound_contextvars(agent_id=self._id, federation=self._fed):
            try:
                async with task_group() as tg:
                    tg.create_task(self.dispatcher.run(self._bus), name="peer-receive")
                    tg.create_task(self._heartbeat(), name="peer-heartbeat")
                    if self._renewer is not None:
                        tg.create_task(self._renewer.run(), name="peer-renew")
                    if self.revocations is not None:  # we are revoked: stop
                        tg.create_task(self.revocations.stop_when_revoked(), name="peer-revoked")
                    await self._bus.wait_connected()
                    self.ready.set()
                    await self._on_connect(False)  # the callback fires on later connects
                    await self.steps()
            finally:
                await self._leave()
                await self._say(Liveness.OFFLINE, bounded=True)

    async def steps(self) -> None:
        """The D-PSGD loop (Lian et al. 2017, Algorithm 1), ``[p2p] steps`` of it."""
        p2p = self._config.p2p
        # a fresh peer waits for its neighbours' keys; a restarted one (a duty cycle) goes on
        if self.version == 0 and (silent := await self.book.greeted(p2p.wait)):
            log.warning("neighbours_silent", neighbours=silent, waited=p2p.wait)
        while not p2p.steps or self.version < p2p.total_steps:
            if self.book.all_done():  # training alone would only drift to our own data
                log.info("p2p_neighbours_done", version=self.version)
                break
            step = self.version + 1
            if not p2p.steps or step <= p2p.steps:  # past them: the final consensus phase
                self.status = f"step {step}: training"
                await self._fit(p2p.local_steps, p2p.fit_config)
            self.status = f"step {step}: averaging"
            await self._send_models(step, self._num_examples)
            fresh = await self.book.collect(p2p.wait, step=step)
            self.weights = mix(self.weights, self._degree, fresh)
            log.debug("p2p_mixed", step=step, mixed=sorted(fresh))  # no await since collect
            self.version = step
            # a stop waits for the save: a restarted peer goes on from this step
            await finish_in_thread(state.save, self._config.state_dir, self.weights, step)
            if p2p.eval_every and step % p2p.eval_every == 0:
                await self._evaluate()
            log.info("p2p_step", step=step, mixed=sorted(fresh), accuracy=self.accuracy)
            if time.monotonic() - self._status_at >= STATUS_EVERY:
                await self._say(Liveness.ONLINE)
        self.status = f"done after {self.version} steps"
        self.done = True
        for agent_id in self.book.ids:
            await self._hello(agent_id)  # done: do not wait for us
        await self._say(Liveness.ONLINE)
        log.info("p2p_finished", version=self.version, accuracy=self.accuracy)

    async def _fit(self, local_steps: int, fit_config: dict[str, bool | int | float | str]) -> None:
        for _ in range(local_steps):
            result = await asyncio.to_thread(self._plugin.fit, self.weights, fit_config)
            self.weights, self._num_examples = result.weights, result.num_examples

    async def _evaluate(self) -> None:
        try:
            result = await asyncio.to_thread(self._plugin.evaluate, self.weights, {})
        except PluginError as exc:
            log.warning("p2p_evaluate_failed", error=str(exc))
            return
        value = result.metrics.get("accuracy")
        self.accuracy = float(value) if isinstance(value, int | float) else None

    async def _send_models(
        self, version: int, num_examples: int, *, only: str | None = None
    ) -> None:
        body = PeerModel(
            version=version,
            degree=self._degree,
            num_examples=num_examples,
            tensors=to_tensors(self.weights),
        )
        for agent_id, box in self._to.items():
            if self.book.revoked(agent_id) or only not in (None, agent_id):
                continue
            key = self.book.key(agent_id)
            if self._key is not None and key is None:
                await self._hello(agent_id)  # it cannot get a model it cannot open
                continue
            box.signer = self._outbox.signer  # a renewal swaps the main outbox's signer
            box.seal_to = None if key is None else X25519PublicKey.from_public_bytes(key)
            await box.try_send(topics.PEER, body, round=version, agent_id=self._id, peer=agent_id)

    async def _leave(self) -> None:
        """A clean stop: tell every neighbour not to wait for us (bounded: the bus may be
        gone already)."""
        try:
            async with asyncio.timeout(2.0):
                for agent_id in self.book.ids:
                    await self._hello(agent_id, leaving=True)
        except TimeoutError:
            log.warning("leaving_not_said")

    async def _hello(self, agent_id: str, *, reply: bool = False, leaving: bool = False) -> None:
        body = PeerHello(
            seal_key=self.seal_key,
            degree=self._degree,
            version=self.version,
            reply=reply,
            done=self.done,
            leaving=leaving,
        )
        await self._outbox.try_send(
            topics.PEER, body, round=self.version, agent_id=self._id, peer=agent_id
        )

    async def _on_connect(self, reconnect: bool) -> None:
        del reconnect
        await self._say(Liveness.ONLINE)
        for agent_id in self.book.ids:
            await self._hello(agent_id, reply=True)

    def _neighbour(self, message: Message[Any]) -> str | None:
        sender = message.sender
        if sender not in self._to:
            log.warning("not_a_neighbour", sender=sender, kind=str(message.kind))
            return None
        return sender

    async def _on_hello(self, message: Message[PeerHello]) -> None:
        sender = self._neighbour(message)
        if sender is None or not self.book.on_hello(sender, message.body):
            return
        if self.done:  # a (re)started neighbour holds none of our models: our final one,
            # before the hello that says done (it would stop if we were done and modelless)
            await self._send_models(self.version, self._num_examples, only=sender)
        await self._hello(sender)

    async def _on_model(self, message: Message[PeerModel]) -> None:
        sender = self._neighbour(message)
        if sender is None:
            return
        if len(message.body.tensors) != len(self.weights):
            log.warning("peer_model_mismatch", sender=sender)
            return
        self.book.on_model(sender, message.body)

    async def _heartbeat(self) -> None:
        while True:
            await self._bus.wait_connected()
            await self._say(Liveness.ONLINE)
            await asyncio.sleep(self._config.trainer.heartbeat)

    async def _say(self, liveness: Liveness, *, bounded: bool = False) -> None:
        """Our status: version, accuracy and the model's sketch (``sketch.py``)."""
        self._status_at = time.monotonic()
        signer = self._outbox.signer
        body = AgentStatus(
            state=liveness,
            detail=self.status,
            model_version=self.version,
            cert_expires=None if signer is None else signer.cert.not_valid_after_utc.timestamp(),
            sketch=await asyncio.to_thread(sketch, self.weights),
            accuracy=self.accuracy,
            done=self.done,
        )
        send = self._outbox.try_send(topics.STATUS, body, round=self.version, agent_id=self._id)
        if not bounded:
            await send
            return
        try:
            async with asyncio.timeout(2.0):
                await send
        except TimeoutError:
            log.warning("offline_status_not_sent")
