"""fedbus-flower: the ``flower`` fedbus plugin, which runs a Flower client unchanged.

Modules: ``flwr_api`` (the one place flwr is imported), ``values`` (Flower's config and
metrics ↔ fedbus scalars, arrays off the wire), ``target`` (loading the user's client by
import path), ``plugin`` (the plugin and its entry-point factory ``create``).
"""
