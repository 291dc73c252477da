"""A bounded memory of message ids, so QoS 1 redeliveries and replays run no handler twice."""

from __future__ import annotations

from collections import OrderedDict


class SeenIds:
    """The last ``capacity`` message ids, oldest forgotten first (an LRU set)."""

    def __init__(self, capacity: int = 8192) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, message_id: bytes) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: bytes) -> bool:
        """Remember ``message_id``. Returns False when it was already known."""
        if message_id in self._ids:
            self._ids.move_to_end(message_id)
            return False
        self._ids[message_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True
