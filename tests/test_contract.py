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


def test_the_document_is_byte_identical_to_the_generator_output() -> None:
    """Not only equal as data: the committed text is what `python -m agent.messages.asyncapi`
    prints, so a regenerated file never shows a spurious diff."""
    import io
    from contextlib import redirect_stdout

    from agent.messages.asyncapi import main

    out = io.StringIO()
    with redirect_stdout(out):
        main()
    assert out.getvalue() == DOC.read_text(encoding="utf-8")


def test_descriptions_do_not_depend_on_how_msgspec_indents_docstrings() -> None:
    """msgspec 0.19 keeps a docstring's indentation and 0.23 dedents it; both normalise to one
    text, and an optional field's anyOf members come out in one order either way."""
    from agent.messages.asyncapi import normalise

    indented = {
        "description": "Summary.\n\n    Attributes:\n        v: version.",
        "properties": {
            "description": {"type": "string", "description": "  A field named description."},
            "last": {"anyOf": [{"type": "null"}, {"$ref": "#/components/schemas/R"}]},
        },
    }
    dedented = {
        "description": "Summary.\n\nAttributes:\n    v: version.",
        "properties": {
            "description": {"type": "string", "description": "A field named description."},
            "last": {"anyOf": [{"$ref": "#/components/schemas/R"}, {"type": "null"}]},
        },
    }
    assert normalise(indented) == normalise(dedented)
    assert normalise(indented)["description"] == "Summary.\n\nAttributes:\n    v: version."
    assert normalise(indented)["properties"]["last"]["anyOf"][-1] == {"type": "null"}
    assert normalise(indented)["properties"]["description"]["type"] == "string"
