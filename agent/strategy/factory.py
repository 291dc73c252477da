"""The strategy an ``[aggregator.strategy]`` table names."""

from __future__ import annotations

from agent.config import StrategyConfig, StrategyName
from agent.strategy.adaptive import Adaptive, SecondMoment
from agent.strategy.base import Strategy
from agent.strategy.fedavg import FedAvg, FedAvgM

_ADAPTIVE = {
    StrategyName.FEDADAGRAD: SecondMoment.ADAGRAD,
    StrategyName.FEDADAM: SecondMoment.ADAM,
    StrategyName.FEDYOGI: SecondMoment.YOGI,
}


def build_strategy(config: StrategyConfig) -> Strategy:
    """A fresh strategy (no state) for ``config``; ``server_lr = 0`` takes the rule's
    default η. FedProx is FedAvg on the server (its μ travels in the fit config)."""
    lr = config.server_lr
    match config.name:
        case StrategyName.FEDAVG | StrategyName.FEDPROX:
            return FedAvg(server_lr=lr or 1.0)
        case StrategyName.FEDAVGM:
            return FedAvgM(server_lr=lr or 0.1, momentum=config.momentum)
        case name:
            return Adaptive(
                _ADAPTIVE[name],
                server_lr=lr or 0.03,
                beta1=config.beta1,
                beta2=config.beta2,
                tau=config.tau,
            )
