"""The contract document in topics/ equals the code's topic table and message schemas."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.messages.asyncapi import build
from agent.messages.bodies import BODY_TYPES
from agent.messages.topics import TOPICS

pytestmark = pytest.mark.timeout(30)
DOC = Path(__file__).resolve().parents[1] / "topics" / "asyncapi.yaml"


def test_asyncapi_document_matches_the_code() -> None:
    """topics/asyncapi.yaml is exactly what the topic table and structs generate; if this
    fails, run `python -m agent.messages.asyncapi > topics/asyncapi.yaml` and review the diff."""
    assert yaml.safe_load(DOC.read_text()) == build()


def test_every_topic_and_kind_is_in_the_document() -> None:
    """Each TopicSpec is a channel with its address and kinds; each kind has a message."""
    doc = yaml.safe_load(DOC.read_text())
    for spec in TOPICS:
        channel = doc["channels"][spec.name]
        assert channel["address"] == spec.template
        assert set(channel["messages"]) == {str(k) for k in spec.kinds}
        assert channel["x-retained"] is spec.retained
    assert set(doc["components"]["messages"]) == {str(k) for k in BODY_TYPES}
    assert doc["asyncapi"] == "3.0.0"
