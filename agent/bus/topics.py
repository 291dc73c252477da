"""Canonical topic names, MQTT filter matching, and the mapping to NATS subjects.

A canonical topic is a ``/``-separated list of non-empty levels, e.g. ``fl/fed1/join``.
A *filter* may also use the MQTT wildcards: ``+`` is exactly one whole level, ``#`` is a
whole last level and matches the rest (including nothing: ``a/#`` matches ``a``).

Levels never contain ``.``, ``*`` or ``>`` (they are NATS separators and wildcards),
whitespace, or NUL, so the NATS mapping ``/``→``.``, ``+``→``*``, ``#``→``>`` is a
bijection on valid names.

One semantic gap: NATS ``a.>`` needs at least one more token and does not match ``a``,
while MQTT ``a/#`` does. :func:`nats_subjects_for_filter` closes it by also subscribing
to the parent subject.
"""

from __future__ import annotations

from agent.errors import ConfigError

#: Characters that never appear in a level (NATS separators/wildcards and NUL).
_FORBIDDEN = frozenset(".*>\x00")
#: MQTT's limit on a topic's UTF-8 length.
MAX_TOPIC_BYTES = 65535

_MQTT_TO_NATS = {"+": "*", "#": ">"}
_NATS_TO_MQTT = {"*": "+", ">": "#"}


class TopicError(ConfigError):
    """A topic name or filter that is not canonical. ``topic`` is the offending string."""

    def __init__(self, topic: str, why: str) -> None:
        super().__init__(f"invalid topic {topic!r}: {why}")
        self.topic = topic
        self.why = why


def _check_levels(topic: str, *, wildcards: bool) -> list[str]:
    if not topic:
        raise TopicError(topic, "empty")
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise TopicError(topic, "not encodable as UTF-8") from exc
    if size > MAX_TOPIC_BYTES:
        raise TopicError(topic, f"longer than {MAX_TOPIC_BYTES} bytes")
    levels = topic.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if not level:
            raise TopicError(topic, "empty level (leading, trailing or double '/')")
        if level in ("+", "#"):
            if not wildcards:
                raise TopicError(topic, f"wildcard {level!r} is only allowed in a filter")
            if level == "#" and index != last:
                raise TopicError(topic, "'#' must be the last level")
            continue
        for char in level:
            if char in _FORBIDDEN or char.isspace():
                raise TopicError(topic, f"level {level!r} contains {char!r}")
            if char in "+#":
                raise TopicError(topic, f"wildcard {char!r} must be a whole level")
    return levels


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid canonical name to publish to (no wildcards)."""
    _check_levels(topic, wildcards=False)
    return topic


def validate_filter(topic_filter: str) -> str:
    """Return ``topic_filter`` if it is a valid canonical subscription filter."""
    _check_levels(topic_filter, wildcards=True)
    return topic_filter


def is_filter(topic: str) -> bool:
    """True if the (valid) name contains a wildcard level."""
    return any(level in ("+", "#") for level in topic.split("/"))


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching of a concrete ``topic`` against ``topic_filter``.

    ``+`` matches exactly one level, a trailing ``#`` matches zero or more levels, and a
    filter starting with a wildcard does not match topics whose first level starts with
    ``$`` (MQTT 4.7.2).
    """
    filter_levels = validate_filter(topic_filter).split("/")
    topic_levels = validate_topic(topic).split("/")
    if topic_levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, wanted in enumerate(filter_levels):
        if wanted == "#":
            return True
        if index >= len(topic_levels):
            return False
        if wanted not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


def to_nats_subject(topic: str) -> str:
    """Map a canonical name or filter to a NATS subject (``/``→``.``, ``+``→``*``, ``#``→``>``)."""
    levels = _check_levels(topic, wildcards=True)
    return ".".join(_MQTT_TO_NATS.get(level, level) for level in levels)


def from_nats_subject(subject: str) -> str:
    """Map a NATS subject back to its canonical name; raise :class:`TopicError` if it has none."""
    tokens = subject.split(".")
    levels: list[str] = []
    for token in tokens:
        if "/" in token or token in ("+", "#"):
            raise TopicError(subject, f"NATS token {token!r} has no canonical form")
        levels.append(_NATS_TO_MQTT.get(token, token))
    canonical = "/".join(levels)
    _check_levels(canonical, wildcards=True)
    return canonical


def nats_subjects_for_filter(topic_filter: str) -> list[str]:
    """The NATS subjects whose union matches exactly what the MQTT filter matches.

    ``a/#`` becomes ``["a.>", "a"]`` because NATS ``>`` needs at least one token; a bare
    ``#`` is ``[">"]`` (every subject has a token). Other filters map one to one.
    """
    subject = to_nats_subject(topic_filter)
    if subject.endswith(".>"):
        return [subject, subject[:-2]]
    return [subject]
