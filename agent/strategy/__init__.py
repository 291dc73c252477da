"""Server-side strategies behind one ``Strategy`` protocol, fed one ``AggregatedUpdate`` per
round by both fit paths (plain and SecAgg+)."""

from agent.strategy.adaptive import Adaptive, FedAdagrad, FedAdam, FedYogi, SecondMoment
from agent.strategy.base import ServerOptimizer, Strategy, StrategyState
from agent.strategy.factory import build_strategy
from agent.strategy.fedavg import FedAvg, FedAvgM
from agent.strategy.update import (
    AggregatedUpdate,
    ClientResult,
    Delta,
    mean_update,
    model_delta,
    split,
    weighted_mean,
)

__all__ = [
    "Adaptive",
    "AggregatedUpdate",
    "ClientResult",
    "Delta",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "SecondMoment",
    "ServerOptimizer",
    "Strategy",
    "StrategyState",
    "build_strategy",
    "mean_update",
    "model_delta",
    "split",
    "weighted_mean",
]
