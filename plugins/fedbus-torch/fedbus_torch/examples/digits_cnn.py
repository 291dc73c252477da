"""``digits-cnn``: a small CNN with BatchNorm on scikit-learn's digits, through fedbus-torch.

The data split is fedbus-digits' (``fedbus_digits.data.agent_data``): the same stratified
train/test split, IID or Dirichlet shards and IID test slices, so ``digits-cnn`` and
``digits-mlp`` train and evaluate on the same examples for the same options. The model takes
the flat 64 pixels (as ``digits-mlp``'s ONNX export does, so ``fedbus predict`` reads the
same inputs) and sees them as one 8 x 8 channel:

    conv 3x3 (1→16) · BatchNorm · ReLU · conv 3x3 (16→32) · BatchNorm · ReLU · max-pool 2
    · flatten (512) · linear (512→64) · ReLU · linear (64→10)

38,476 values in its state_dict: 38,378 parameters, the BatchNorms' running means and
variances (96 floats, averaged), and their two int64 ``num_batches_tracked`` counters
(carried, never averaged or masked).
"""

from __future__ import annotations

from typing import Any, Final

import torch
from torch import nn
from torch.utils.data import TensorDataset

from agent.errors import PluginError
from agent.plugin.api import PluginContext, Scalar
from fedbus_torch.plugin import TorchTask, torch_plugin

NAME: Final = "digits-cnn"
#: Local training per round: with FedAvg over 10 agents, Dirichlet(0.5) shards and SecAgg+
#: this reaches >= 97% test accuracy in 20 rounds (see fedbus-torch's README).
FIT_CONFIG: Final[dict[str, Scalar]] = {
    "epochs": 3,
    "batch_size": 16,
    "lr": 0.05,
    "momentum": 0.9,
}
OPTIONS: Final[dict[str, Any]] = {
    "agent_index": None,
    "num_agents": None,
    "partition": "dirichlet",
    "alpha": 0.5,
    "seed": 0,
}


class DigitsCnn(nn.Module):
    """Input float32 ``(batch, 64)`` pixels in [0, 1]; output float32 logits ``(batch, 10)``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(x.reshape(-1, 1, 8, 8)))
        return logits


def _split(context: PluginContext) -> Any:
    """This agent's ``AgentData`` from fedbus-digits' recipe.

    Raises:
        PluginError: fedbus-digits is not installed, or the options cannot split the data.
    """
    try:
        from fedbus_digits.data import Partition, agent_data
    except ImportError as exc:
        raise PluginError(
            f"{NAME} needs fedbus-digits: pip install 'fedbus-torch[examples]'"
        ) from exc
    o = context.options
    try:
        return agent_data(
            int(o["agent_index"]),
            int(o["num_agents"]),
            partition=Partition(o["partition"]),
            alpha=float(o["alpha"]),
            seed=int(o["seed"]),
        )
    except ValueError as exc:
        raise PluginError(f"{NAME}: {exc}") from exc


def _pairs(part: Any) -> TensorDataset:
    return TensorDataset(torch.from_numpy(part.x.copy()), torch.from_numpy(part.y.copy()))


TASK: Final = TorchTask(
    name=NAME,
    model=lambda context: DigitsCnn(),
    train_data=lambda context: _pairs(_split(context).train),
    eval_data=lambda context: _pairs(_split(context).test),
    options=OPTIONS,
    fit_config=FIT_CONFIG,
    summary="a CNN with BatchNorm (torch) on scikit-learn's digits, IID or Dirichlet shards",
    datasets=("sklearn digits (1,797 8x8 images, 10 classes)",),
    models=("cnn conv16-conv32-fc64 with BatchNorm (torch)",),
)

#: The entry point: ``digits-cnn = "fedbus_torch.examples.digits_cnn:create"``.
create = torch_plugin(TASK)
