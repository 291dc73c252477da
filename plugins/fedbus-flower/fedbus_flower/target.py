"""The user's Flower client, loaded by import path (``"package.module:attribute"``).

What the attribute may be, tried in this order:

- a ``flwr.client.NumPyClient`` instance, or a ``NumPyClient`` subclass (built once, with no
  arguments);
- a ``client_fn``: a callable taking a ``flwr.common.Context`` and returning a
  ``NumPyClient`` or a ``flwr.client.Client`` (e.g. ``FlowerClient().to_client()``), the way a
  Flower app's ``ClientApp(client_fn=...)`` names it. As in Flower, it is called for every
  request (get_parameters, fit, evaluate) with the node's one ``Context``, whose ``state``
  persists across calls.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.errors import PluginError
from fedbus_flower.flwr_api import Client, Context, NumPyClient


def load_object(path: str) -> Any:
    """``module:attribute`` (dots allowed in the attribute) imported and looked up.

    Raises:
        PluginError: not of that form, the module does not import, or no such attribute.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(f"flower: {path!r} is not 'package.module:attribute'")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(f"flower: importing {module_name!r} failed: {exc!r}") from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise PluginError(f"flower: {module_name!r} has no attribute {attribute!r}") from None
    return found


@dataclass(frozen=True, slots=True)
class ClientSource:
    """Where each request's ``flwr.client.Client`` comes from."""

    make: Callable[[Context], Client]
    kind: str  # "NumPyClient" or "client_fn", for messages

    @classmethod
    def of(cls, target: Any, path: str) -> ClientSource:
        """The source ``target`` (what ``path`` named) gives.

        Raises:
            PluginError: neither a NumPyClient (class or instance) nor a callable.
        """
        if isinstance(target, type) and issubclass(target, NumPyClient):
            try:
                target = target()
            except Exception as exc:
                raise PluginError(f"flower: {path}() raised {exc!r}") from exc
        if isinstance(target, NumPyClient):
            client = target.to_client()
            return cls(lambda context: client, "NumPyClient")
        if isinstance(target, Client):
            return cls(lambda context: target, "Client")
        if callable(target):
            return cls(_client_fn(target, path), "client_fn")
        raise PluginError(
            f"flower: {path} is a {type(target).__name__}, not a NumPyClient or a client_fn"
        )


def _client_fn(fn: Callable[[Context], Any], path: str) -> Callable[[Context], Client]:
    def make(context: Context) -> Client:
        made = fn(context)
        if isinstance(made, NumPyClient):
            return made.to_client()
        if isinstance(made, Client):
            return made
        raise PluginError(
            f"flower: client_fn {path} returned a {type(made).__name__}, not a Client or "
            "NumPyClient"
        )

    return make
