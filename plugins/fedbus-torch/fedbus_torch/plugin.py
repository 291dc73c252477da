"""``TorchTask`` → a fedbus plugin: the generic ``TorchPlugin`` and its factory maker.

A third party wraps a model and its data in three factories and gets an entry point::

    from fedbus_torch import TorchTask, torch_plugin

    TASK = TorchTask(
        name="my-cnn",
        model=lambda context: MyNet(),                      # any torch.nn.Module
        train_data=lambda context: my_shard(context.options),  # a torch Dataset of (x, y)
        eval_data=lambda context: my_test(context.options),
        options={"agent_index": None, "num_agents": None},  # the task's own options
    )
    create = torch_plugin(TASK)   # [project.entry-points."fedbus.plugins"] my-cnn = "pkg:create"

Each factory gets the ``PluginContext`` with the options' defaults filled in. The model is
built once per agent, under ``torch.manual_seed(model_seed)``, so every agent starts from the
same weights; its weights are its state_dict (``fedbus_torch.state``). Fit config keys:
``epochs``, ``batch_size``, ``lr`` (required, defaults in ``TorchTask.fit_config``),
``momentum``, ``weight_decay``, ``proximal_mu`` (FedProx), ``round`` and ``seed`` (seed the
shuffle with the agent's id). Metrics: ``train_loss`` and, for classifiers,
``train_accuracy`` from fit; ``accuracy`` from evaluate.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
from torch.utils.data import Dataset

from agent.errors import PluginError
from agent.plugin.api import EvaluateResult, FitResult, PluginContext, PluginInfo, Scalar, Weights
from fedbus_torch import loops
from fedbus_torch.options import COMMON, TorchOptions, config_float, config_int
from fedbus_torch.runtime import limit_threads, resolve_device, thread_count
from fedbus_torch.state import StateLayout

#: Local training per round when the aggregator's fit config says nothing.
DEFAULT_FIT_CONFIG: Final[Mapping[str, Scalar]] = {"epochs": 1, "batch_size": 32, "lr": 0.05}

#: A torch ``Dataset`` of ``(x, y)`` pairs (``TensorDataset`` and friends).
Pairs = Dataset[Any]


@dataclass(frozen=True)
class TorchTask:
    """What a torch plugin trains: a model, its data, its loss.

    Attributes:
        name: the plugin's name (error messages, the ONNX graph's name).
        model: ``context → torch.nn.Module``; called once per agent under the model seed.
        train_data, eval_data: ``context → Dataset`` of ``(x, y)`` pairs: this agent's
            training shard and held-out data (``len()`` must work).
        loss: ``() → loss function`` over (output, target), the batch mean.
        classifier: outputs are class scores ``(batch, classes)`` and targets class ids:
            accuracy is reported.
        options: the task's own ``[plugin.options]``, name → default (``None``: required).
        fit_config: the fit config used when the aggregator sends none.
        summary, datasets, models: what ``fedbus plugin list`` shows.
    """

    name: str
    model: Callable[[PluginContext], torch.nn.Module]
    train_data: Callable[[PluginContext], Pairs]
    eval_data: Callable[[PluginContext], Pairs]
    loss: Callable[[], loops.Loss] = torch.nn.CrossEntropyLoss
    classifier: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    fit_config: Mapping[str, Scalar] = field(default_factory=lambda: dict(DEFAULT_FIT_CONFIG))
    summary: str = ""
    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def info(self) -> PluginInfo:
        """The ``describe()`` hook's answer: common and task options, fit defaults."""
        return PluginInfo(
            summary=self.summary or f"{self.name}: a torch.nn.Module trained by fedbus-torch",
            options={**COMMON, **self.options},
            fit_config=dict(self.fit_config),
            datasets=self.datasets,
            models=self.models,
            exports=("onnx",),
        )


class TorchPlugin:
    """One agent's model and data. ``fit`` and ``evaluate`` run one at a time (a lock): the
    module is the agent's one copy, loaded with each call's weights."""

    def __init__(self, task: TorchTask, context: PluginContext) -> None:
        """Build the model and load the data.

        Raises:
            ConfigError: option ``device`` names an unknown or unusable device.
            PluginError: other bad options, or a factory that failed.
        """
        self.task = task
        self.options = TorchOptions.parse(task.name, context.options, task.options)
        self.threads = thread_count(self.options.threads, self.options.local_agents)
        limit_threads(self.threads)
        self.device = resolve_device(self.options.device)
        self.context = PluginContext(
            context.agent_id, {**COMMON, **self.options.task}, context.state_dir
        )
        self._lock = threading.Lock()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options.model_seed)
                module = task.model(self.context)
            self.train_set = task.train_data(self.context)
            self.eval_set = task.eval_data(self.context)
            self.loss_fn = task.loss()
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{task.name}: building the model or data failed: {exc!r}") from exc
        if not isinstance(module, torch.nn.Module):
            raise PluginError(f"{task.name}: the model factory returned {type(module).__name__}")
        self.layout = StateLayout(module)
        self._initial = self.layout.to_weights(module)
        self.model = module.to(self.device)

    def get_weights(self) -> Weights:
        """The initial state_dict as arrays (``StateLayout`` order and dtypes)."""
        return [w.copy() for w in self._initial]

    def num_examples(self) -> int:
        """The size of this agent's training shard."""
        return len(self.train_set)  # type: ignore[arg-type]

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        """Train from ``weights`` (untouched; read-only is fine) on the training shard.

        Raises:
            PluginError: weights of another layout, or a bad fit config value.
        """
        merged = {**self.task.fit_config, **config}
        name = self.task.name
        sgd = loops.Sgd(
            epochs=config_int(name, merged, "epochs", 1),
            batch_size=config_int(name, merged, "batch_size", 1),
            lr=config_float(name, merged, "lr", 0.0),
            momentum=config_float(name, merged, "momentum", 0.0),
            weight_decay=config_float(name, merged, "weight_decay", 0.0),
            proximal_mu=config_float(name, merged, "proximal_mu", 0.0),
        )
        generator = torch.Generator().manual_seed(self._seed(merged))
        with self._lock:
            self.layout.load(self.model, weights)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seed(merged))  # dropout and friends, reproducibly
                measured = loops.train(
                    self.model,
                    self.train_set,
                    self.loss_fn,
                    sgd,
                    device=self.device,
                    generator=generator,
                    classifier=self.task.classifier,
                )
            new = self.layout.to_weights(self.model)
        metrics: dict[str, Scalar] = {"train_loss": measured.loss}
        if measured.accuracy is not None:
            metrics["train_accuracy"] = measured.accuracy
        return FitResult(new, self.num_examples(), metrics)

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        """Mean loss (and ``accuracy`` for a classifier) of ``weights`` on the held-out data.

        Raises:
            PluginError: weights of another layout.
        """
        with self._lock:
            self.layout.load(self.model, weights)
            measured = loops.evaluate(
                self.model,
                self.eval_set,
                self.loss_fn,
                device=self.device,
                classifier=self.task.classifier,
            )
        metrics: dict[str, Scalar] = {}
        if measured.accuracy is not None:
            metrics["accuracy"] = measured.accuracy
        return EvaluateResult(measured.loss, measured.num_examples, metrics)

    def export(self, weights: Weights, path: Path) -> Path:
        """Write ``weights`` as ONNX at ``path`` (``.onnx`` appended if missing): input
        ``x`` shaped like one held-out example with a dynamic batch, output ``logits``.

        Raises:
            PluginError: weights of another layout, no held-out example to trace with, or
                the exporter's dependencies (``onnx``, ``onnxscript``) missing.
        """
        from fedbus_torch.export import export_onnx

        if len(self.eval_set) == 0:  # type: ignore[arg-type]
            raise PluginError(f"{self.task.name}: export needs one held-out example to trace")
        example = self.eval_set[0][0].unsqueeze(0)
        with self._lock:
            self.layout.load(self.model, weights)
            return export_onnx(self.model, example, path, name=self.task.name)

    def _seed(self, config: Mapping[str, Any]) -> int:
        """A 63-bit seed from the agent id, the round and the config's ``seed``."""
        text = f"{self.context.agent_id}/{config.get('round', 0)}/{config.get('seed', 0)}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def torch_plugin(task: TorchTask) -> Callable[[PluginContext], TorchPlugin]:
    """The entry-point factory for ``task``, with its ``describe()`` hook."""

    def create(context: PluginContext) -> TorchPlugin:
        return TorchPlugin(task, context)

    create.__doc__ = task.summary or f"{task.name} (fedbus-torch)"
    create.describe = task.info  # type: ignore[attr-defined]
    return create
