"""The AsyncAPI 3.0 document of the topic table (``topics/asyncapi.yaml``).

``python -m agent.messages.asyncapi > topics/asyncapi.yaml`` regenerates it; the contract test
fails whenever the committed document and ``build()`` differ. Payload schemas come from the
msgspec Structs themselves, so they cannot drift from the decoder either. Every description is
normalised here (``inspect.cleandoc``), not left to msgspec's own docstring formatting, which
changed between releases (0.23 dedents differently from 0.19): the document is ours and the same
under any msgspec that the pyproject range admits.
AsyncAPI 3.0.0 specification: https://www.asyncapi.com/docs/reference/specification/v3.0.0
"""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

import msgspec

from agent import __version__
from agent.messages.bodies import BODY_TYPES
from agent.messages.envelope import Envelope
from agent.messages.topics import TOPICS

REF = "#/components/schemas/{name}"
PARAMETERS = {
    "federation": "The federation id (1-64 of [A-Za-z0-9_-]).",
    "agent_id": "The agent id (1-64 of [A-Za-z0-9_-]).",
    "peer": "The recipient peer's agent id (1-64 of [A-Za-z0-9_-]).",
}


def normalise(node: Any) -> Any:
    """A copy of a JSON-schema tree in our canonical form, whatever msgspec release made it.

    - every string under a ``description`` key is ``inspect.cleandoc``-ed (a property that happens
      to be named ``description`` is a schema dict and is walked, not rewritten);
    - the members of every ``anyOf`` are ordered by their JSON text with ``{"type": "null"}`` last
      (``anyOf`` is a set: JSON Schema 2020-12 §10.2.1.2), as msgspec 0.19 and 0.23 order an
      optional field's members differently.
    """
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                out[key] = inspect.cleandoc(value)
            elif key == "anyOf" and isinstance(value, list):
                out[key] = sorted((normalise(v) for v in value), key=_any_of_order)
            else:
                out[key] = normalise(value)
        return out
    if isinstance(node, list):
        return [normalise(item) for item in node]
    return node


def _any_of_order(member: Any) -> tuple[bool, str]:
    return (member == {"type": "null"}, json.dumps(member, sort_keys=True))


def build() -> dict[str, Any]:
    """The contract as a plain dict (what the YAML file holds)."""
    _, raw = msgspec.json.schema_components([Envelope, *BODY_TYPES.values()], ref_template=REF)
    schemas = normalise(raw)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in TOPICS:
        params = [p for p in PARAMETERS if "{" + p + "}" in spec.template]
        kinds = sorted(spec.kinds)
        channels[spec.name] = {
            "address": spec.template,
            "description": spec.description,
            "parameters": {p: {"description": PARAMETERS[p]} for p in params},
            "messages": {str(k): {"$ref": f"#/components/messages/{k}"} for k in kinds},
            "x-publisher": str(spec.publisher),
            "x-retained": spec.retained,
        }
        operations[f"{spec.publisher}_sends_{spec.name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{spec.name}"},
            "messages": [{"$ref": f"#/channels/{spec.name}/messages/{k}"} for k in kinds],
        }
    messages = {
        str(kind): {
            "name": str(kind),
            "summary": (body.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/msgpack",
            "payload": {"$ref": REF.format(name="Envelope")},
            "x-body": {"$ref": REF.format(name=body.__name__)},
        }
        for kind, body in BODY_TYPES.items()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "fedbus message contract",
            "version": __version__,
            "description": (
                "Every message is a msgpack Envelope whose `body` field holds the msgpack "
                "encoding of the body type its `kind` names (x-body). Topics are canonical "
                "`/`-separated MQTT names; on NATS `/` becomes `.`."
            ),
        },
        "defaultContentType": "application/msgpack",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def main() -> None:
    """Write the document as YAML to stdout (needs PyYAML, a dev dependency)."""
    import yaml

    sys.stdout.write(yaml.safe_dump(build(), sort_keys=False, allow_unicode=True, width=100))


if __name__ == "__main__":
    main()
