"""Fleets: many simulated devices on one machine (ARCHITECTURE.md §13).

- ``members``: N real trainer roles in one asyncio process, each through ``node.run_node``
  with its own config (bus connection, client id, identity, plugin instance);
- ``processes``: a fleet spread over a few such processes (default: one per CPU);
- ``enroll``: N devices enrolled over the bus from one process, concurrently, each with its
  own token and the checks of ``fedbus enroll``.
"""
