"""The MQTT keepalive check, run once per quarter keepalive instead of once a second.

aiomqtt drives paho's ``loop_misc`` from a task that sleeps 1 s between calls (aiomqtt 2.x
``Client._misc_loop``). ``loop_misc`` does two things, both keyed to the keepalive ``K``
(``BusSettings.keepalive``, 30 s by default): it sends PINGREQ once nothing went out or came
in for ``K`` s, and it drops the connection when a PINGREQ went unanswered for ``K`` s
(paho-mqtt 2.x ``Client.loop_misc`` / ``_check_keepalive``). Called every ``K / 4`` s, a
PINGREQ leaves at most ``1.25 K`` after the last packet, inside the ``1.5 K`` a broker waits
before it drops a silent client (MQTT 5.0 §3.1.2.10); a dead broker is noticed at most
``K / 4`` later than with the 1 s tick. An idle agent's event loop then wakes for its
keepalive every ``K / 4`` s, not every second (issue 15: an idle trainer ≤ 0.1 % CPU).

aiomqtt starts the task in ``__aenter__`` and cancels it when the connection ends, so the
longer sleep never outlives the connection. ``K = 0`` (no keepalive) keeps aiomqtt's own loop.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import paho.mqtt.client as paho

#: The fraction of the keepalive between two checks.
CHECKS_PER_KEEPALIVE = 4


def tick_per_keepalive(client: aiomqtt.Client, keepalive: int) -> None:
    """Make ``client`` (not yet entered) run paho's ``loop_misc`` every ``keepalive / 4`` s
    (at least every 1 s, aiomqtt's own period) instead of every second."""
    if keepalive <= 0:
        return
    every = max(1.0, keepalive / CHECKS_PER_KEEPALIVE)
    misc = client._client  # paho's client, which aiomqtt wraps

    async def misc_loop() -> None:
        while True:
            if misc.loop_misc() != paho.MQTT_ERR_SUCCESS:
                return  # the connection is gone (aiomqtt's loop ends there too)
            await asyncio.sleep(every)

    client._misc_loop = misc_loop  # type: ignore[method-assign]  # aiomqtt 2.x's task body
