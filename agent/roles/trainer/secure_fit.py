"""One SecAgg+ round over the bus, agent side (DESIGN.md §5).

A ``SecureFit`` is made from the ``secagg`` field of a ``fit_ins``: it advertises keys at once
(while the plugin trains), answers the aggregator's relays, and masks the trained model delta
when both the training and the neighbours' shares are in. Crypto work that grows with the
model or the neighbourhood runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from agent.errors import ConfigError, CryptoError, SecAggAbortError
from agent.messages.bodies import (
    AdvertiseKeys,
    RelayKeys,
    RelayShares,
    SecAggSetup,
    ShareKeys,
    Unmask,
    UnmaskRequest,
)
from agent.secagg import client
from agent.secagg.keys import RoundContext
from agent.secagg.params import SecAggParams
from agent.secagg.state import PublicKeys, Setup

log = structlog.get_logger(__name__)


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
    return Setup(
        RoundContext(federation, round_), params, tuple(body.cohort), body.graph_seed, body.length
    )


class SecureFit:
    """This agent's side of one SecAgg+ round.

    Raises (constructor):
        ConfigError: unacceptable parameters.  CryptoError: we are not in the cohort.
    """

    def __init__(self, *, agent_id: str, setup: Setup) -> None:
        self.round = setup.context.round
        self.state = client.setup(agent_id, setup)
        self._shares: asyncio.Future[dict[str, bytes]] = asyncio.get_running_loop().create_future()

    def advertise(self) -> AdvertiseKeys:
        """Stage advertise_keys: this round's public keys."""
        keys = client.advertise_keys(self.state)
        return AdvertiseKeys(enc_key=keys.enc, mask_key=keys.mask)

    async def share(self, relay: RelayKeys) -> ShareKeys:
        """Stage share_keys: encrypted shares for the neighbours that advertised.

        Raises:
            CryptoError, SecAggAbortError: a relay we must not act on.
        """
        peers = {v: PublicKeys(k.enc_key, k.mask_key) for v, k in relay.keys.items()}
        ciphertexts = await asyncio.to_thread(client.share_keys, self.state, peers)
        return ShareKeys(ciphertexts=ciphertexts)

    def deliver(self, relay: RelayShares) -> None:
        """The ciphertexts addressed to us arrived (the first relay counts)."""
        if not self._shares.done():
            self._shares.set_result(dict(relay.ciphertexts))

    async def mask(
        self, update: npt.NDArray[np.floating[Any]], *, weight: int, wait: float
    ) -> npt.NDArray[np.unsignedinteger[Any]]:
        """Stage collect_masked_input: wait up to ``wait`` s for our shares, then mask.

        Raises:
            TimeoutError: the shares did not come (the round went on without us).
            CryptoError: a ciphertext that does not authenticate.
        """
        async with asyncio.timeout(wait):
            ciphertexts = await asyncio.shield(self._shares)
        return await asyncio.to_thread(
            client.collect_masked_input, self.state, ciphertexts, update=update, weight=weight
        )

    async def unmask(self, request: UnmaskRequest) -> Unmask:
        """Stage unmask: the shares to reveal.

        Raises:
            SecAggAbortError: an unmask request that would be unsafe to answer.
        """
        revealed = await asyncio.to_thread(
            client.unmask, self.state, survivors=request.survivors, dropped=request.dropped
        )
        return Unmask(self_seed=revealed.self_seed, mask_key=revealed.mask_key)

    def cancel(self) -> None:
        """Stop waiting for shares (a newer round started, or the agent stops)."""
        if not self._shares.done():
            self._shares.cancel()


#: What ``SecureFit`` methods raise for input that must be refused, not crash the agent.
REFUSED = (ConfigError, CryptoError, SecAggAbortError, ValueError)
