"""One SecAgg+ round over the bus, agent side (ARCHITECTURE.md §5; Bell et al., "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020).

A ``SecureFit`` is made from the ``secagg`` field of a ``fit_ins``, one per round. It
advertises keys at once (while the plugin trains), answers the aggregator's relays
(``handle``), and masks the trained model delta when both the training and the neighbours'
shares are in (``masked_input``). The protocol itself is ``agent.secagg.client``; crypto work
that grows with the model or the neighbourhood runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import structlog

from agent.errors import ConfigError, CryptoError, SecAggAbortError
from agent.messages import topics
from agent.messages.bodies import (
    AdvertiseKeys,
    MaskedInput,
    RelayKeys,
    RelayShares,
    SecAggSetup,
    ShareKeys,
    Unmask,
    UnmaskRequest,
)
from agent.messages.envelope import Message
from agent.messages.tensors import as_tensor
from agent.plugin.api import FitResult, Scalar
from agent.privacy import local, noise, secure_metrics
from agent.roles.trainer.masked_update import DeltaSource, clip_scale
from agent.roles.trainer.model import HeldModel
from agent.runtime.outbox import Outbox
from agent.secagg import client
from agent.secagg.keys import RoundContext
from agent.secagg.params import SecAggParams
from agent.secagg.state import PublicKeys, Setup

log = structlog.get_logger(__name__)

#: What the SecAgg+ stages raise for input that must be refused, not crash the agent.
REFUSED = (ConfigError, CryptoError, SecAggAbortError, ValueError)


def parse_setup(body: SecAggSetup, *, federation: str, round_: int) -> Setup:
    """The announced round, validated.

    Raises:
        ConfigError: parameters that cannot be secure or cannot reconstruct (the agent
            refuses to take part rather than trust the aggregator's choice).
    """
    params = SecAggParams(
        num_clients=len(body.cohort),
        num_neighbours=body.num_neighbours,
        threshold=body.threshold,
        clipping_range=body.clipping_range,
        quantization_bits=body.quantization_bits,
        ring_bits=body.ring_bits,
        max_weight=body.max_weight,
    )
    if sorted(set(body.cohort)) != body.cohort:
        raise ConfigError("the announced cohort is not a sorted list of distinct ids")
    if body.metrics and not 0 < body.metric_scale <= body.clipping_range:
        raise ConfigError("secure metrics need 0 < metric_scale <= clipping_range")
    if len({m.name for m in body.metrics}) != len(body.metrics):
        raise ConfigError("the announced secure metrics repeat a name")
    return Setup(
        RoundContext(federation, round_), params, tuple(body.cohort), body.graph_seed, body.length
    )


class SecureFit:
    """This agent's side of one SecAgg+ round: its stage messages and its masked input.

    ``closed`` once the round is over for us: unmask answered, or ``close()`` (a newer round
    started, or the agent stops); a closed one handles nothing and masks nothing.

    Raises (constructor):
        ConfigError: unacceptable parameters.  CryptoError: we are not in the cohort.
    """

    def __init__(
        self, *, setup: Setup, outbox: Outbox, agent_id: str, body: SecAggSetup | None = None
    ) -> None:
        self.round = setup.context.round
        #: the announcement's secure-metric slots and distributed-DP settings
        self.announced_body = body
        self.state = client.setup(agent_id, setup)
        self.closed = False
        self._outbox = outbox
        self._id = agent_id
        #: the ciphertexts addressed to us (the first relay_shares counts)
        self._ciphertexts: dict[str, bytes] | None = None
        #: set when the ciphertexts arrived, or when closed
        self._wake = asyncio.Event()

    @classmethod
    def announced(
        cls, body: SecAggSetup, *, federation: str, round_: int, outbox: Outbox, agent_id: str
    ) -> SecureFit:
        """The round ``fit_ins.secagg`` announces.

        Raises:
            ConfigError, CryptoError, ValueError (all in ``REFUSED``): a round not to join.
        """
        setup = parse_setup(body, federation=federation, round_=round_)
        return cls(setup=setup, outbox=outbox, agent_id=agent_id, body=body)

    def close(self) -> None:
        """Stop: later stage messages are ignored, a waiting ``masked_input`` gives None."""
        self.closed = True
        self._wake.set()

    async def advertise(self) -> None:
        """Stage advertise_keys: send this round's public keys."""
        keys = client.advertise_keys(self.state)
        await self._send(
            topics.SECAGG_ADVERTISE, AdvertiseKeys(enc_key=keys.enc, mask_key=keys.mask)
        )

    async def handle(self, message: Message[Any]) -> None:
        """A stage message of this round: ``relay_keys``, ``relay_shares`` or
        ``unmask_request``. A relay that must be refused is logged (``secagg_refused``)."""
        match message.body:
            case RelayKeys() as relay:
                await self._share_keys(relay)
            case RelayShares() as relay:
                self._receive_shares(relay)
            case UnmaskRequest() as request:
                await self._unmask(request)
            case body:
                raise TypeError(f"not a SecAgg+ stage message: {type(body).__name__}")

    async def masked_input(
        self,
        *,
        base: HeldModel,
        result: FitResult,
        deadline: float,
        config: dict[str, Scalar] | None = None,
    ) -> MaskedInput | None:
        """Stage collect_masked_input: the trained delta (``result.weights`` minus ``base``,
        its float arrays flattened to shape (d,): integer arrays are carried, not masked;
        clipped to the fit ``config``'s ``dp_clip_norm`` if any)
        followed by the announced secure-metric words (``agent.privacy.secure_metrics``),
        weighted by ``result.num_examples`` (at least 1), plus distributed DP's noise
        share if announced, and masked once our shares are in; waits until ``deadline``
        (``time.monotonic()`` seconds).

        Returns:
            the masked input, ``vector`` of shape (d + 1,) in the ring dtype; or None, logged
            as ``secagg_abandoned``, when the shares did not come, did not authenticate, or
            the round was closed: the round goes on without us.
        """
        body = self.announced_body
        slots = body.metrics if body is not None else []
        tail = None
        if body is not None and slots:
            tail = secure_metrics.encode(result.metrics, slots, scale=body.metric_scale)
        source = DeltaSource(result.weights, base.weights, tail=tail)
        norm_bound = body.norm_bound if body is not None else 0.0
        dp_clip = local.clip_norm_of(config or {})
        if norm_bound > 0 or dp_clip is not None:
            # one pass over the arrays, off the loop, while the key stages go on
            norm = await asyncio.to_thread(source.norm)
            # the announced L2 bound (agent.robust.secure checks the sum), then DP's C
            source.scale = clip_scale(norm, norm_bound=norm_bound, clip_norm=dp_clip)
        stddev = body.noise_stddev if body is not None else 0.0
        unlisted = sorted(set(result.metrics) - {m.name for m in slots})
        if unlisted:  # the aggregator cannot learn them without seeing ours alone
            log.info("metrics_not_aggregated", names=unlisted, reason="not_announced")
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._wake.wait()
        except TimeoutError:
            log.warning("secagg_abandoned", reason="shares_missing")
            return None
        if self._ciphertexts is None:
            log.warning("secagg_abandoned", reason="superseded")
            return None
        try:
            vector = await asyncio.to_thread(
                client.collect_masked_input,
                self.state,
                self._ciphertexts,
                update=source,
                weight=max(1, result.num_examples),
                noise=_noise_source(stddev),
            )
        except REFUSED as exc:
            log.warning("secagg_abandoned", reason="bad_shares", error=str(exc))
            return None
        # the ring vector's own bytes travel (no copy): nothing writes to it after this
        return MaskedInput(model_version=base.version, vector=as_tensor(vector))

    async def _share_keys(self, relay: RelayKeys) -> None:
        """Stage share_keys: encrypted shares for the neighbours that advertised."""
        peers = {v: PublicKeys(k.enc_key, k.mask_key) for v, k in relay.keys.items()}
        try:
            ciphertexts = await asyncio.to_thread(client.share_keys, self.state, peers)
        except REFUSED as exc:
            log.warning("secagg_refused", stage="share_keys", error=str(exc))
            return
        await self._send(topics.SECAGG_SHARE, ShareKeys(ciphertexts=ciphertexts))

    def _receive_shares(self, relay: RelayShares) -> None:
        """The ciphertexts addressed to us arrived: the masking may proceed."""
        if self._ciphertexts is None:
            self._ciphertexts = dict(relay.ciphertexts)
            self._wake.set()

    async def _unmask(self, request: UnmaskRequest) -> None:
        """Stage unmask: reveal the shares the aggregator needs; then the round is over.
        Under distributed DP no share is revealed for fewer survivors than the noise was
        sized for (``min_survivors``): the sum would carry less noise than announced."""
        if self._id not in request.survivors:  # the broadcast reaches dropouts too
            log.info("unmask_not_ours", survivors=len(request.survivors))
            return
        floor = self.announced_body.min_survivors if self.announced_body is not None else 0
        if len(request.survivors) < floor:
            log.warning(
                "secagg_refused",
                stage="unmask",
                reason="dp_too_few_survivors",
                survivors=len(request.survivors),
                min_survivors=floor,
            )
            return
        try:
            revealed = await asyncio.to_thread(
                client.unmask, self.state, survivors=request.survivors, dropped=request.dropped
            )
        except REFUSED as exc:
            log.warning("secagg_refused", stage="unmask", error=str(exc))
            return
        self.closed = True
        await self._send(
            topics.SECAGG_UNMASK, Unmask(self_seed=revealed.self_seed, mask_key=revealed.mask_key)
        )
        log.info("unmask_sent", survivors=len(request.survivors), dropped=len(request.dropped))

    async def _send(self, spec: topics.TopicSpec, body: AdvertiseKeys | ShareKeys | Unmask) -> None:
        await self._outbox.try_send(spec, body, round=self.round, agent_id=self._id)


def _noise_source(stddev: float) -> client.NoiseSource | None:
    """Distributed DP's discrete Gaussian share, drawn block by block (None: no noise)."""
    if stddev <= 0:
        return None
    rng = np.random.default_rng()
    return lambda n: noise.discrete_gaussian(n, stddev, rng)
