"""The ``digits-mlp`` plugin: a numpy MLP trained on this agent's shard of the digits data.

Discovered through the entry point ``fedbus.plugins: digits-mlp = fedbus_digits.plugin:create``.
The agent's ``[plugin.options]`` table picks the shard (see ``DigitsOptions``); the
aggregator's fit config picks the local training (see ``DEFAULT_FIT_CONFIG``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Final

import numpy as np

from agent.errors import PluginError
from agent.plugin.api import (
    EvaluateResult,
    FitResult,
    PluginContext,
    PluginInfo,
    Scalar,
    Weights,
    describe_with,
)
from fedbus_digits import mlp
from fedbus_digits.data import (
    AgentData,
    Partition,
)
from fedbus_digits.options import NAME, DigitsOptions, float_option, int_option
from fedbus_digits.shard_cache import cached_agent_data

#: Local training per round, tuned so that FedAvg over 10 agents with Dirichlet(0.5) label
#: skew reaches >= 95% test accuracy in 20 rounds (data seeds 0-4; see the README).
DEFAULT_FIT_CONFIG: Final[Mapping[str, Scalar]] = {"epochs": 5, "batch_size": 16, "lr": 0.4}


class DigitsPlugin:
    """One agent's view of the federation: its train shard, its test slice, the MLP.

    Thread-safe: nothing is mutated after construction, so ``fit`` and ``evaluate`` may run
    in worker threads.
    """

    def __init__(self, options: DigitsOptions, *, state_dir: Path | None = None) -> None:
        """Load this agent's data: from the shard cache in ``state_dir`` when it holds it
        (``fedbus_digits.shard_cache``), else built (about a second: scikit-learn's import)
        and cached there.

        Raises:
            PluginError: the options cannot give every agent ``min_examples`` examples.
        """
        self.options = options
        try:
            self.data: AgentData = cached_agent_data(
                state_dir,
                options.agent_index,
                options.num_agents,
                partition=options.partition,
                alpha=options.alpha,
                seed=options.seed,
                test_fraction=options.test_fraction,
                min_examples=options.min_examples,
            )
        except ValueError as exc:
            raise PluginError(f"{NAME}: {exc}") from exc
        self._sizes = mlp.layer_sizes(options.hidden)
        self._initial = mlp.init_params(self._sizes, seed=options.model_seed)

    def get_weights(self) -> Weights:
        """Initial float32 weights ``[W1 (64, h), b1 (h,), ..., Wk (h, 10), bk (10,)]``.

        Depends only on ``hidden`` and ``model_seed``: identical on every agent.
        """
        return [w.copy() for w in self._initial]

    def num_examples(self) -> int:
        """The size of this agent's train shard."""
        return len(self.data.train)

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        """SGD on the train shard from ``weights``; ``weights`` is left untouched.

        Config keys (defaults from ``DEFAULT_FIT_CONFIG``): ``epochs`` (int >= 1),
        ``batch_size`` (int >= 1), ``lr`` (> 0), ``weight_decay`` (>= 0, default 0),
        ``proximal_mu`` (FedProx's μ >= 0, Li et al. MLSys 2020, Eq. 2; default 0);
        ``round`` and ``seed`` (ints >= 0, default 0) seed the shuffle together with the
        data seed and ``agent_index``, so a given agent and round always train the same way.

        Returns:
            float32 weights of the input shapes, the shard size, and ``train_loss`` (nats)
            and ``train_accuracy`` (fraction) of the returned weights on the shard.

        Raises:
            PluginError: weights of the wrong count or shapes, non-finite weights, or a bad
                config value.
        """
        params = self._decode(weights)
        merged = {**DEFAULT_FIT_CONFIG, **config}
        try:
            train_config = mlp.TrainConfig(
                epochs=int_option(merged, "epochs", minimum=1),
                batch_size=int_option(merged, "batch_size", minimum=1),
                lr=float_option(merged, "lr", default=0.0),
                weight_decay=float_option(merged, "weight_decay", default=0.0),
                proximal_mu=float_option(merged, "proximal_mu", default=0.0),
            )
        except ValueError as exc:
            raise PluginError(f"{NAME}: bad fit config: {exc}") from exc
        entropy = [
            self.options.seed,
            self.options.agent_index,
            int_option(merged, "round", default=0, minimum=0),
            int_option(merged, "seed", default=0, minimum=0),
        ]
        train = self.data.train
        new = mlp.train(
            params, train.x, train.y, config=train_config, rng=np.random.default_rng(entropy)
        )
        loss, accuracy = mlp.loss_and_accuracy(new, train.x, train.y)
        metrics: dict[str, Scalar] = {"train_loss": loss, "train_accuracy": accuracy}
        return FitResult(weights=list(new), num_examples=len(train), metrics=metrics)

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        """Mean cross-entropy (nats) and ``accuracy`` on this agent's test slice.

        ``config`` is not used. Weighting the agents' results by ``num_examples`` gives the
        loss and accuracy on the whole test set.

        Raises:
            PluginError: weights of the wrong count or shapes, or non-finite weights.
        """
        params = self._decode(weights)
        test = self.data.test
        if len(test) == 0:
            return EvaluateResult(loss=0.0, num_examples=0, metrics={"accuracy": 0.0})
        if self.options.backend == "onnxruntime":
            loss, accuracy = self._onnx_loss_and_accuracy(params)
        else:
            loss, accuracy = mlp.loss_and_accuracy(params, test.x, test.y)
        return EvaluateResult(loss=loss, num_examples=len(test), metrics={"accuracy": accuracy})

    def export(self, weights: Weights, path: Path) -> Path:
        """Write ``weights`` as an ONNX model (``x`` float32 ``(batch, 64)`` → ``logits``
        float32 ``(batch, 10)``) at ``path`` (``.onnx`` appended if missing).

        Raises:
            PluginError: wrong shapes, non-finite weights, or ``onnx`` not installed.
        """
        from agent.plugin.onnx_graph import export_dense

        return export_dense(self._decode(weights), path, name=NAME)

    def _onnx_loss_and_accuracy(self, params: mlp.Params) -> tuple[float, float]:
        from agent.plugin.onnx_graph import dense_bytes
        from agent.plugin.onnx_session import open_model

        model = open_model(dense_bytes(params, name=NAME), device=self.options.device, name=NAME)
        logits = model.run(self.data.test.x)
        logp = mlp.log_softmax(logits.astype(np.float32))
        y = self.data.test.y
        loss = -float(logp[np.arange(len(y)), y].mean())
        return loss, float((logp.argmax(axis=1) == y).mean())

    def _decode(self, weights: Weights) -> mlp.Params:
        """Check ``weights`` against the network's shapes; return float32 copies."""
        expected = [w.shape for w in self._initial]
        got = [np.shape(w) for w in weights]
        if got != expected:
            raise PluginError(f"{NAME}: expected weights of shapes {expected}, got {got}")
        params: mlp.Params = []
        for w in weights:
            if np.asarray(w).dtype.kind not in "iuf":
                raise PluginError(f"{NAME}: weights must be real numbers, got {w.dtype}")
            params.append(np.array(w, dtype=np.float32, copy=True))
        if not all(bool(np.isfinite(p).all()) for p in params):
            raise PluginError(f"{NAME}: weights hold NaN or infinity")
        return params


def describe() -> PluginInfo:
    """The ``describe()`` hook: options with their defaults (None: required), fit defaults."""
    defaults = DigitsOptions(agent_index=0, num_agents=1)
    options: dict[str, Any] = {f.name: getattr(defaults, f.name) for f in fields(DigitsOptions)}
    options.update(agent_index=None, num_agents=None, hidden=list(defaults.hidden))
    return PluginInfo(
        summary="a numpy MLP (ReLU, SGD) on scikit-learn's digits, IID or Dirichlet shards",
        options={k: str(v) if isinstance(v, Partition) else v for k, v in options.items()},
        fit_config=DEFAULT_FIT_CONFIG,
        datasets=("sklearn digits (1,797 8x8 images, 10 classes)",),
        models=("mlp 64-64-10 (numpy)",),
        exports=("onnx",),
    )


@describe_with(describe)
def create(context: PluginContext) -> DigitsPlugin:
    """The entry-point factory: a ``DigitsPlugin`` configured by ``context.options``.

    Raises:
        PluginError: bad options (see ``DigitsOptions.from_mapping``).
    """
    return DigitsPlugin(DigitsOptions.from_mapping(context.options), state_dir=context.state_dir)


def centralized(options: Mapping[str, Any] | None = None) -> DigitsPlugin:
    """The centralized baseline: one agent holding the whole train set and test set.

    ``options`` may set ``seed``, ``hidden``, ``test_fraction`` and ``model_seed`` (as for a
    federated agent, so that both see the same split and initial weights); ``agent_index``,
    ``num_agents`` and ``partition`` are forced to 0, 1 and ``"iid"``.

    Raises:
        PluginError: bad options.
    """
    forced = {"agent_index": 0, "num_agents": 1, "partition": Partition.IID.value}
    return DigitsPlugin(DigitsOptions.from_mapping({**(options or {}), **forced}))


def centralized_baseline(
    *,
    rounds: int,
    fit_config: Mapping[str, Scalar] = DEFAULT_FIT_CONFIG,
    options: Mapping[str, Any] | None = None,
) -> EvaluateResult:
    """Train the same MLP on all train data for ``rounds x epochs`` epochs; evaluate on all test.

    This is the reference a federation is compared with: the same network, initial weights,
    batch size and learning rate, and as many passes over the data as ``rounds`` rounds of
    ``epochs`` local epochs.

    Raises:
        PluginError: bad options or config.
    """
    plugin = centralized(options)
    merged = {**DEFAULT_FIT_CONFIG, **fit_config}
    epochs = int_option(merged, "epochs", minimum=1) * rounds
    result = plugin.fit(plugin.get_weights(), {**merged, "epochs": epochs})
    return plugin.evaluate(result.weights, {})
