"""The ``flower`` plugin: a Flower client as a fedbus plugin, its code unchanged.

Options (``[plugin.options]``):

- ``client``: ``"package.module:attribute"``, a ``NumPyClient`` (class or instance) or a
  ``client_fn(context)`` (``fedbus_flower.target``); required;
- ``agent_index``, ``num_agents`` (defaults 0 and 1; ``fedbus demo`` sets them): the node's
  ``node_config`` carries them as ``partition-id`` and ``num-partitions``, the keys Flower's
  simulation engine sets, so a client_fn that loads ``context.node_config["partition-id"]``
  runs as written;
- ``node_config``, ``run_config``: tables merged into the Context's ``node_config`` and
  ``run_config`` (a Flower app's ``[tool.flwr.app.config]``);
- ``num_examples`` (default 0): the size of the client's training set, which the agent
  reports when it joins (``num_examples()``, the bound the aggregator holds its updates to:
  a fit reporting more is refused as ``weight_above_declared``). A Flower client has no
  call that says it: in Flower the server learns it only from ``FitRes.num_examples``. So
  with the option unset (0) the adapter reports what the client's last ``fit`` returned as
  ``num_examples``, and 0 (unknown: the aggregator bounds nothing) before its first fit.
  Set it to ``len(trainset)`` of the partition when you know it.

The mapping: ``get_weights`` → ``get_parameters({})``; ``fit(weights, config)`` →
``fit(parameters, config)``; ``evaluate`` → ``evaluate``. Each call's config (the fit config
the aggregator sends, with ``round``) is passed as the call's config *and* merged over
``run_config`` in the Context a client_fn gets. Parameters go through Flower's own
``ndarrays_to_parameters`` / ``parameters_to_ndarrays`` (``np.save``/``np.load`` without
pickle), so the client gets writable arrays of the dtypes it returned; metrics come back as
``fedbus_flower.values.to_metrics`` says (bytes as ``"base64:..."`` strings). A Flower status
other than OK is a ``PluginError`` with Flower's message.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from typing import Any, Final

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
from fedbus_flower import values
from fedbus_flower.flwr_api import (
    Code,
    Context,
    EvaluateIns,
    FitIns,
    GetParametersIns,
    RecordDict,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from fedbus_flower.target import ClientSource, load_object

OPTIONS: Final[Mapping[str, Any]] = {
    "client": None,
    "agent_index": 0,
    "num_agents": 1,
    "node_config": {},
    "run_config": {},
    "num_examples": 0,
}


def _table(options: Mapping[str, Any], key: str) -> dict[str, Scalar]:
    table = options.get(key, {})
    if not isinstance(table, Mapping) or not all(
        isinstance(k, str) and isinstance(v, bool | int | float | str) for k, v in table.items()
    ):
        raise PluginError(f"flower: option {key!r} must be a table of str → scalar")
    return dict(table)


def _index(options: Mapping[str, Any], key: str, minimum: int) -> int:
    value = options.get(key, OPTIONS[key])
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PluginError(f"flower: option {key!r} must be an int >= {minimum}, got {value!r}")
    return value


class FlowerPlugin:
    """One node of a Flower app. Calls are serialized (a lock): a Flower client is written
    for one request at a time."""

    def __init__(self, context: PluginContext) -> None:
        """Load the client named by option ``client`` and build the node's Context.

        Raises:
            PluginError: a missing or unknown option, or a client that cannot be loaded.
        """
        options = context.options
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise PluginError(f"flower: unknown option(s) {unknown}; known: {sorted(OPTIONS)}")
        path = options.get("client")
        if not isinstance(path, str):
            raise PluginError("flower: option 'client' ('package.module:attribute') is required")
        index, count = _index(options, "agent_index", 0), _index(options, "num_agents", 1)
        if index >= count:
            raise PluginError(f"flower: agent_index {index} must be < num_agents {count}")
        self.source = ClientSource.of(load_object(path), path)
        self.path = path
        self._run_config = _table(options, "run_config")
        node_id = int.from_bytes(hashlib.sha256(context.agent_id.encode()).digest()[:8], "little")
        self.context = Context(
            run_id=0,
            node_id=node_id >> 1,
            node_config={
                "partition-id": index,
                "num-partitions": count,
                **_table(options, "node_config"),
            },
            state=RecordDict(),
            run_config=dict(self._run_config),
        )
        self._lock = threading.Lock()
        self._declared = _index(options, "num_examples", 0)
        self._fitted = 0  # FitRes.num_examples of the last fit

    def num_examples(self) -> int:
        """Option ``num_examples`` when set, else the last fit's ``num_examples`` (0 before
        the first fit: unknown)."""
        return self._declared or self._fitted

    def get_weights(self) -> Weights:
        """The client's ``get_parameters({})``."""
        with self._lock:
            res = self._client({}).get_parameters(GetParametersIns(config={}))
        self._check(res.status, "get_parameters")
        return parameters_to_ndarrays(res.parameters)

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        """The client's ``fit(parameters, config)``; metrics as ``values.to_metrics``."""
        ins = FitIns(parameters=ndarrays_to_parameters(weights), config=dict(config))
        with self._lock:
            res = self._client(config).fit(ins)
        self._check(res.status, "fit")
        metrics = values.to_metrics(res.metrics, f"{self.path} fit")
        self._fitted = int(res.num_examples)
        return FitResult(parameters_to_ndarrays(res.parameters), res.num_examples, metrics)

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        """The client's ``evaluate(parameters, config)``."""
        ins = EvaluateIns(parameters=ndarrays_to_parameters(weights), config=dict(config))
        with self._lock:
            res = self._client(config).evaluate(ins)
        self._check(res.status, "evaluate")
        metrics = values.to_metrics(res.metrics, f"{self.path} evaluate")
        return EvaluateResult(float(res.loss), res.num_examples, metrics)

    def _client(self, config: Mapping[str, Scalar]) -> Any:
        """The request's client, its Context's run_config the options' with ``config`` over."""
        self.context.run_config = {**self._run_config, **config}
        return self.source.make(self.context)

    def _check(self, status: Any, verb: str) -> None:
        if status.code != Code.OK:
            raise PluginError(f"flower: {self.path} {verb}: {status.code.name} {status.message}")


def describe() -> PluginInfo:
    """The ``describe()`` hook: the options and their defaults."""
    return PluginInfo(
        summary="an existing Flower NumPyClient or client_fn, run unchanged",
        options=dict(OPTIONS),
        models=("whatever the Flower client trains",),
    )


@describe_with(describe)
def create(context: PluginContext) -> FlowerPlugin:
    """The entry-point factory: the Flower client option ``client`` names.

    Raises:
        PluginError: bad options, or the client cannot be loaded.
    """
    return FlowerPlugin(context)
