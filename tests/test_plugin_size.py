"""`fedbus plugin check`'s model size line: values, bytes, traffic per round per agent, and
a refusal when a message cannot travel with the configured max_payload."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from agent.plugin.api import EvaluateResult, FitResult, Scalar, Weights
from agent.plugin.check import check_factory
from agent.plugin.check_report import Status
from agent.plugin.check_size import DEFAULT_MAX_PAYLOAD, model_size, transport_plan
from tests.helpers import fedbus

pytestmark = pytest.mark.timeout(60)


class Sized:
    """Weights of ``n`` float32 values and one int64 counter; fit returns them unchanged."""

    def __init__(self, n: int) -> None:
        self.weights = [np.zeros(n, np.float32), np.array(0, np.int64)]

    def get_weights(self) -> Weights:
        return [w.copy() for w in self.weights]

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        return FitResult([w.copy() for w in weights], 1, {})

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        return EvaluateResult(0.0, 1, {})


def test_sizes_and_traffic_of_a_3m_parameter_model() -> None:
    """3M float32 values (12 MB) exceed the default 8 MiB max_payload both ways; the int64
    counter is carried, so the masked input has 3M + 1 uint32 words."""
    size = model_size(Sized(3_000_000).get_weights())
    assert size.parameters == 3_000_001
    assert size.averaged == 3_000_000
    assert size.tensor_bytes == 12_000_008
    assert 12_000_008 < size.model_message < 12_000_008 + 1024
    assert 12_000_004 < size.masked_message < 12_000_004 + 1024
    assert DEFAULT_MAX_PAYLOAD == 8 * 1024 * 1024
    assert size.plain.chunks == size.secure.chunks == 2
    assert not size.plain.fits
    assert "1 in integer arrays, carried" in size.render()


def test_transport_plan() -> None:
    assert transport_plan(100, 100).chunks == 1
    assert transport_plan(101, 100).chunks == 2


def test_the_check_fails_a_model_that_cannot_travel() -> None:
    report = check_factory(lambda context: Sized(3000), name="sized", max_payload=4096)
    size = next(r for r in report.results if r.title == "model size")
    assert size.status is Status.FAILED
    assert "raise max_payload" in size.detail
    assert not report.passed
    ok = check_factory(lambda context: Sized(3000), name="sized")
    assert ok.passed, ok.render()
    line = next(r for r in ok.results if r.title == "model size").detail
    assert "3,001 values" in line
    assert "one message each" in line


def test_the_cli_reports_the_size_and_its_max_payload_option() -> None:
    run = fedbus("plugin", "check", "digits-mlp", "--max-payload", "10000")
    assert run.returncode == 1, run.stdout
    assert "FAIL  model size" in run.stdout
    assert "4,810 values" in run.stdout
