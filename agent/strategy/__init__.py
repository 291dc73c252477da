"""Aggregation strategies (FedAvg and friends) behind the ``Strategy`` protocol."""

from agent.strategy.fedavg import ClientResult, FedAvg, Strategy, weighted_mean

__all__ = ["ClientResult", "FedAvg", "Strategy", "weighted_mean"]
