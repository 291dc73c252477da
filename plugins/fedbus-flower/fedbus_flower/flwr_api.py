"""The one place ``flwr`` is imported.

Importing flwr imports typer, which touches click APIs deprecated in click 8.2 and warns;
those warnings are flwr's, not the user's, so the import is done with warnings silenced.

Raises (on import):
    PluginError: flwr is not installed (the message says what to install).
"""

from __future__ import annotations

import warnings

from agent.errors import PluginError

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from flwr.client import Client, NumPyClient
        from flwr.common import (
            Code,
            Context,
            EvaluateIns,
            FitIns,
            GetParametersIns,
            RecordDict,
            ndarrays_to_parameters,
            parameters_to_ndarrays,
        )
except ImportError as exc:  # pragma: no cover - the distribution depends on flwr
    raise PluginError("the flower plugin needs flwr: pip install fedbus-flower") from exc

__all__ = [
    "Client",
    "Code",
    "Context",
    "EvaluateIns",
    "FitIns",
    "GetParametersIns",
    "NumPyClient",
    "RecordDict",
    "ndarrays_to_parameters",
    "parameters_to_ndarrays",
]
