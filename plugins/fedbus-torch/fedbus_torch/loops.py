"""One local training pass and one evaluation over a ``torch.utils.data.Dataset``.

``train`` is mini-batch SGD (with momentum and weight decay, ``torch.optim.SGD``) for
``epochs`` passes, shuffling with a ``torch.Generator`` seeded by the caller so that an agent
and a round always train the same way; FedProx's proximal term μ/2 ‖w - w_global‖² (Li et
al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Eq. 2) is added to the
loss over the trainable parameters when ``proximal_mu > 0``. ``evaluate`` is the mean loss
and, for classifiers, the accuracy, without gradients, in eval mode (BatchNorm uses its
running statistics, dropout is off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

#: A loss: (model output, targets) → a scalar tensor, the batch mean.
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class Sgd:
    """The local optimizer's settings (one fit)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0


@dataclass(frozen=True, slots=True)
class Measured:
    """Mean loss (nats for cross-entropy), accuracy (None unless a classifier), examples."""

    loss: float
    accuracy: float | None
    num_examples: int


def train(
    model: torch.nn.Module,
    data: Dataset[Any],
    loss_fn: Loss,
    sgd: Sgd,
    *,
    device: torch.device,
    generator: torch.Generator,
    classifier: bool,
) -> Measured:
    """Train ``model`` in place on ``data``; returns the last epoch's running loss/accuracy."""
    loader = DataLoader(data, batch_size=sgd.batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay
    )
    anchor = [p.detach().clone() for p in model.parameters()] if sgd.proximal_mu > 0 else []
    model.train()
    total, correct, seen = 0.0, 0, 0
    for _ in range(sgd.epochs):
        total, correct, seen = 0.0, 0, 0
        for batch_x, batch_y in loader:
            x, y = batch_x.to(device), batch_y.to(device)
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn(out, y)
            if anchor:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + 0.5 * sgd.proximal_mu * prox
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
            if classifier:
                correct += int((out.detach().argmax(dim=1) == y).sum())
    return Measured(total / max(1, seen), correct / max(1, seen) if classifier else None, seen)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: Dataset[Any],
    loss_fn: Loss,
    *,
    device: torch.device,
    classifier: bool,
    batch_size: int = 256,
) -> Measured:
    """Mean loss and accuracy of ``model`` on ``data``, in eval mode, in a fixed order."""
    model.eval()
    total, correct, seen = 0.0, 0, 0
    for batch_x, batch_y in DataLoader(data, batch_size=batch_size, shuffle=False):
        x, y = batch_x.to(device), batch_y.to(device)
        out = model(x)
        total += float(loss_fn(out, y)) * len(y)
        seen += len(y)
        if classifier:
            correct += int((out.argmax(dim=1) == y).sum())
    if seen == 0:
        return Measured(0.0, 0.0 if classifier else None, 0)
    return Measured(total / seen, correct / seen if classifier else None, seen)
