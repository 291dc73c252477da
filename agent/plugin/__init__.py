"""The plugin API and its entry-point loader."""

from agent.plugin.api import (
    ENTRY_POINT_GROUP,
    EvaluateResult,
    FitResult,
    Plugin,
    PluginContext,
    Scalar,
    Weights,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "EvaluateResult",
    "FitResult",
    "Plugin",
    "PluginContext",
    "Scalar",
    "Weights",
]
