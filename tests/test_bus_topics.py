"""Canonical topic validation, MQTT matching, and the NATS subject mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.bus.topics import (
    TopicError,
    from_nats_subject,
    is_filter,
    nats_subjects_for_filter,
    to_nats_subject,
    topic_matches,
    validate_filter,
    validate_topic,
)
from agent.errors import ConfigError

# A level that is valid in canonical names: no separators, wildcards, whitespace or NUL.
_level = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"),
        blacklist_characters="/.*>+#",
    ),
    min_size=1,
    max_size=8,
)
_topics = st.lists(_level, min_size=1, max_size=6).map("/".join)


@pytest.mark.parametrize("topic", ["fl/fed1/join", "a", "fl/fed-1/agent/agent_7", "é/ü/漢字"])
def test_valid_topics_are_accepted(topic: str) -> None:
    """Ordinary multi-level names, including non-ASCII levels, are valid topics."""
    assert validate_topic(topic) == topic
    assert validate_filter(topic) == topic
    assert not is_filter(topic)


@pytest.mark.parametrize(
    "topic",
    ["", "/a", "a/", "a//b", "a.b", "a/*", "a/>", "a b", "a/\x00", "a/\tb", "a/+", "a/#", "+"],
)
def test_invalid_topic_names_are_rejected(topic: str) -> None:
    """Empty levels, NATS characters, whitespace, NUL and wildcards fail as publish names."""
    with pytest.raises(TopicError) as raised:
        validate_topic(topic)
    assert isinstance(raised.value, ConfigError)
    assert raised.value.topic == topic


@pytest.mark.parametrize("topic_filter", ["a/+", "a/#", "#", "+", "+/+/c", "a/+/#"])
def test_wildcard_filters_are_accepted(topic_filter: str) -> None:
    """``+`` as any whole level and ``#`` as the whole last level make valid filters."""
    assert validate_filter(topic_filter) == topic_filter
    assert is_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", ["a/#/b", "a/b+", "a/#b", "a+/b", "a//+", "a/+."])
def test_misplaced_wildcards_are_rejected(topic_filter: str) -> None:
    """``#`` not last, or a wildcard sharing a level with other characters, is invalid."""
    with pytest.raises(TopicError):
        validate_filter(topic_filter)


def test_overlong_topic_is_rejected() -> None:
    """A name longer than MQTT's 65535 UTF-8 bytes is invalid."""
    with pytest.raises(TopicError, match="longer"):
        validate_topic("a/" + "x" * 65535)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("+/b", "a/b", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/#", "b/a", False),
        ("#", "a/b", True),
        ("a/+/#", "a/b", True),
        ("a/+/#", "a", False),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
    ],
)
def test_topic_matches_follows_mqtt(topic_filter: str, topic: str, expected: bool) -> None:
    """Filter matching has MQTT semantics, including ``a/#`` matching ``a`` and ``$`` topics."""
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("canonical", "subject"),
    [("fl/fed1/join", "fl.fed1.join"), ("fl/+/status", "fl.*.status"), ("fl/#", "fl.>")],
)
def test_nats_mapping(canonical: str, subject: str) -> None:
    """``/``→``.``, ``+``→``*``, ``#``→``>`` and back."""
    assert to_nats_subject(canonical) == subject
    assert from_nats_subject(subject) == canonical


@pytest.mark.parametrize("subject", ["a..b", "a.b/c", "a.+", ".a", "a b"])
def test_non_canonical_subjects_are_rejected(subject: str) -> None:
    """A NATS subject with no canonical form raises ``TopicError`` instead of guessing."""
    with pytest.raises(TopicError):
        from_nats_subject(subject)


def test_hash_filter_also_subscribes_the_parent_subject() -> None:
    """``a/#`` maps to ``a.>`` plus ``a`` so NATS matches what MQTT matches; ``#`` is ``>``."""
    assert nats_subjects_for_filter("fl/f/#") == ["fl.f.>", "fl.f"]
    assert nats_subjects_for_filter("#") == [">"]
    assert nats_subjects_for_filter("fl/+/x") == ["fl.*.x"]


@given(_topics)
def test_nats_mapping_round_trips(topic: str) -> None:
    """Every valid canonical name survives the trip to a NATS subject and back."""
    assert from_nats_subject(to_nats_subject(topic)) == topic


@given(_topics)
def test_every_topic_matches_itself_and_hash(topic: str) -> None:
    """A concrete topic matches itself and the catch-all filter."""
    assert topic_matches(topic, topic)
    assert topic_matches("#", topic) is not topic.startswith("$")
