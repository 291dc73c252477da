"""A 3M-parameter model (12 MB, above the old 8 MiB ceiling) trains over a real mosquitto and
a real nats-server with identities on (signed, sealed) and SecAgg+ on: the global model, the
masked inputs and the late joiner's copy all travel chunked."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from agent.brokers import EmbeddedBroker
from agent.config import AgentConfig, SecureAggregation
from agent.identity import ca
from agent.plugin.loader import CheckedPlugin
from agent.role import Role
from agent.state import read_weights
from tests.helpers import (
    LOOSE,
    SizedToy,
    aggregator_config,
    federate_over,
    identity_files,
    trainer_config,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

SHAPES = [(1000, 1000), (1000, 1000), (999, 1000), (1000,)]  # 3 000 000 float32


async def test_a_3m_parameter_model_trains_signed_sealed_and_secure(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Two SecAgg+ rounds of three agents (deltas 1, 2, 3): every agent survives both, and
    the model ends at the mean, 2, within the quantization step."""
    authority = ca.init_ca("fed")
    pki = tmp_path / "pki"
    pki.mkdir()
    base = aggregator_config(broker.url, tmp_path, agents=3, rounds=2, round_timeout=40.0)
    schedule = msgspec.structs.replace(
        base.aggregator,
        min_fit_clients=3,
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        eval_every=0,
        robust=LOOSE,
        secagg=msgspec.structs.replace(base.aggregator.secagg, stage_timeout=30.0),
    )
    config = msgspec.structs.replace(
        base,
        aggregator=schedule,
        identity=identity_files(authority, "aggregator", Role.AGGREGATOR, pki),
    )

    def configure(agent_id: str) -> AgentConfig:
        return msgspec.structs.replace(
            trainer_config(agent_id, broker.url, tmp_path),
            identity=identity_files(authority, agent_id, Role.TRAINER, pki),
        )

    plugins = {f"a{i}": CheckedPlugin("toy", SizedToy(float(i), 1, SHAPES)) for i in (1, 2, 3)}
    summary, trainers = await federate_over(broker.url, plugins, config, configure)
    assert [r.survivors for r in summary.rounds] == [["a1", "a2", "a3"]] * 2
    final = read_weights(tmp_path / "aggregator" / "global_model.npz")
    assert sum(w.size for w in final) == 3_000_000
    for w in final:
        np.testing.assert_allclose(w, 2.0, atol=1e-3)
    for trainer in trainers.values():
        assert trainer.model is not None
        assert trainer.model.version == 2
