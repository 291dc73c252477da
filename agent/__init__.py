"""fedbus: federated learning for fleets of edge devices, carried over MQTT or NATS.

The import package is ``agent``: one asyncio runtime that plays the trainer or the
aggregator role. See ``agent.runtime`` for the receive loop, ``agent.bus`` for the
transports, ``agent.roles`` for the two roles and ``agent.plugin`` for the plugin API.
"""

__version__ = "0.1.0"
