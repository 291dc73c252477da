"""``fedbus publish`` and ``fedbus listen``: send a correctly built (and signed) test message of
any kind, and watch a federation's messages decoded and verified.

Both act as the identity of an agent config file (``--as``/``--config``): its federation, bus
URL, TLS files and, when ``[identity]`` is set, its certificate and key.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from agent.errors import ConfigError, FedbusError, ProtocolError

if TYPE_CHECKING:
    from agent.messages.bodies import FederationStatus

config_option = click.option(
    "--as",
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An agent config (TOML): whose identity, federation and broker to use.",
)


def _clean(settings: Any) -> Any:
    """A one-shot tool's session: clean (nothing queued for it, nothing left behind)."""
    import dataclasses

    return dataclasses.replace(settings, session_expiry=0)


@click.command()
@click.argument("kind")
@config_option
@click.option("--round", "round_", default=0, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--body",
    default="{}",
    show_default=True,
    help="The body as JSON, or @FILE to read it from a file (bytes as base64).",
)
@click.option("--to", "to", default=None, help="The agent whose inbox gets it (inbox kinds).")
def publish(kind: str, config_path: Path, round_: int, body: str, to: str | None) -> None:
    """Publish one message of KIND, built and signed as the config's identity. Fails (exit
    status 1) when the broker refuses the publish (its ACL): MQTT 5 PUBACK >= 0x80, NATS
    permissions violation."""
    from agent.config import AgentConfig
    from agent.messages.bodies import BODY_TYPES
    from agent.messages.kinds import Kind

    config = AgentConfig.load(config_path)
    _quiet_logs()
    try:
        kind_ = Kind(kind)
    except ValueError:
        raise click.BadParameter(
            f"unknown kind; one of {', '.join(Kind)}", param_hint="KIND"
        ) from None
    text = Path(body[1:]).read_text() if body.startswith("@") else body
    try:
        value = msgspec.convert(json.loads(text), BODY_TYPES[kind_], strict=False)
    except (json.JSONDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"--body is not a valid {kind_} body: {exc}") from exc
    topic, size = asyncio.run(_publish(config, value, round_, to))
    click.echo(f"published {kind_} ({size} bytes) on {topic}")


async def _publish(config: Any, body: Any, round_: int, to: str | None) -> tuple[str, int]:
    """Publish ``body`` on the topic its kind travels on; returns (topic, payload size).

    A test message cannot know the aggregator's per-run sealing key, so a sealed kind goes
    out unsealed (an aggregator with identities on drops it as ``unsealable``).
    """
    from agent.identity.local import Credentials
    from agent.messages.bodies import KIND_OF
    from agent.messages.codec import encode
    from agent.messages.topics import TOPICS
    from agent.node import bus_settings, open_bus
    from agent.role import Role

    kind = KIND_OF[type(body)]
    specs = [s for s in TOPICS if kind in s.kinds]
    inbox = [s for s in specs if s.per_agent and s.publisher is Role.AGGREGATOR]
    others = [s for s in specs if s not in inbox]
    spec = (inbox or others)[0] if to is not None else (others or inbox)[0]
    agent_id = to if spec.publisher is Role.AGGREGATOR else config.agent_id
    if spec.per_agent and agent_id is None:
        raise ConfigError(f"a {kind} goes to one agent's inbox: give --to AGENT")
    credentials = (
        Credentials.load(config.identity, agent_id=config.agent_id, federation=config.federation)
        if config.identity.enabled
        else None
    )
    payload = encode(
        body,
        federation=config.federation,
        round=round_,
        sender=config.agent_id,
        signer=credentials.signer if credentials else None,
    )
    topic = spec.format(config.federation, agent_id)
    async with open_bus(config, _clean(bus_settings(config, suffix="publish"))) as bus:
        await bus.wait_connected(timeout=10)
        await bus.publish(topic, payload, retain=spec.retained)
    return topic, len(payload)


@click.command()
@click.argument("topic_filter", required=False)
@config_option
@click.option(
    "--count",
    default=0,
    type=click.IntRange(min=0),
    help="Stop after this many messages (0: until Ctrl-C).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
def listen(topic_filter: str | None, config_path: Path, count: int, as_json: bool) -> None:
    """Print the federation's messages (default filter fl/FED/#) as they arrive: kind,
    sender, round, size and signature status, then the body (sealed bodies by size)."""
    from agent.config import AgentConfig

    config = AgentConfig.load(config_path)
    _quiet_logs()
    try:
        asyncio.run(_listen(config, topic_filter or f"fl/{config.federation}/#", count, as_json))
    except KeyboardInterrupt:
        sys.exit(130)


async def _listen(config: Any, topic_filter: str, count: int, as_json: bool) -> None:
    from agent.identity.local import Credentials
    from agent.node import bus_settings, open_bus

    credentials = (
        Credentials.load(config.identity, agent_id=config.agent_id, federation=config.federation)
        if config.identity.enabled
        else None
    )
    verifier = credentials.verifier() if credentials else None
    seen = 0
    async with open_bus(config, _clean(bus_settings(config, suffix="listen"))) as bus:
        await bus.subscribe(topic_filter)
        await bus.wait_connected(timeout=10)
        click.echo(f"listening on {topic_filter} as {config.agent_id}", err=True)
        async for raw in bus.messages():
            line = describe(raw.topic, raw.payload, verifier)
            click.echo(json.dumps(line) if as_json else _format(line))
            seen += 1
            if count and seen >= count:
                return


def _quiet_logs() -> None:
    """The tools' own output is on stdout: runtime log lines go to stderr, warnings only."""
    from agent.logs import configure_logging

    configure_logging(level="warning", fmt="console", stream=sys.stderr)


def describe(topic: str, payload: bytes, verifier: Any) -> dict[str, Any]:
    """One received payload as a dict: topic, kind, sender, round, size, signature, body."""
    from agent.messages.codec import decode_body, decode_envelope
    from agent.messages.topics import classify
    from agent.runtime.listeners import verify_sender

    out: dict[str, Any] = {"time": time.strftime("%H:%M:%S"), "topic": topic, "size": len(payload)}
    try:
        envelope, signed = decode_envelope(payload)
    except FedbusError as exc:
        return {**out, "kind": "?", "error": str(exc)}
    out |= {"kind": str(envelope.kind), "sender": envelope.sender, "round": envelope.round}
    if signed is None:
        out["signature"] = "unsigned"
    elif verifier is None:
        out["signature"] = "signed (not checked: no [identity] in the config)"
    else:
        where = classify(topic, envelope.federation)
        try:
            ident = verify_sender(verifier, signed, envelope, where[0] if where else None)
            out["signature"] = f"valid ({ident.agent_id}, {ident.role})"
        except ProtocolError as exc:
            out["signature"] = f"INVALID: {exc.reason}"
    if envelope.sealed:
        out["body"] = f"sealed, {len(envelope.body)} bytes"
        return out
    try:
        body = decode_body(envelope.kind, envelope.body)
    except FedbusError as exc:
        out["body"] = f"malformed: {exc}"
        return out
    out["body"] = _summary(msgspec.to_builtins(body))
    return out


def _summary(value: Any) -> Any:
    """Bodies with tensors and bytes shortened to sizes (never print weights or keys)."""
    if isinstance(value, dict):
        return {k: _summary(v) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], list):
            return f"tensor {value[0]} {value[1]}"  # array-like Tensor
        return [_summary(v) for v in value[:8]] + (["…"] if len(value) > 8 else [])
    if isinstance(value, str) and len(value) > 64:
        return f"<{len(value)} chars>"
    return value


def _format(line: dict[str, Any]) -> str:
    kind, sender, round_ = line.get("kind", "?"), line.get("sender", "?"), line.get("round", "?")
    head = (
        f"{line['time']}  {kind:<15} from {sender:<12} round {round_:<4} "
        f"{line['size']:>8} B  {line.get('signature', '')}"
    )
    body = line.get("body", line.get("error", ""))
    return f"{head}\n    {line['topic']}: {json.dumps(body)[:300]}"


@click.command()
@config_option
@click.option(
    "--timeout",
    default=15.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for the aggregator's summary.",
)
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON.")
@click.option(
    "--peers",
    is_flag=True,
    help="P2P: every peer's version, accuracy and distance from the mean, from the peers' "
    'statuses over --timeout s (the default with [aggregator] mode = "p2p").',
)
def status(config_path: Path, timeout: float, as_json: bool, peers: bool) -> None:
    """Show the federation as its aggregator sees it: round and stage, every agent online or
    offline with what it is doing, and the last round's survivors and metrics."""
    from agent.config import AgentConfig, TrainingMode

    config = AgentConfig.load(config_path)
    _quiet_logs()
    if peers or config.aggregator.mode is TrainingMode.P2P:
        _peer_status(config, timeout, as_json)
        return
    summary = asyncio.run(_status(config, timeout))
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(summary)))
        return
    for line in status_lines(config.federation, summary):
        click.echo(line)


def status_lines(federation: str, summary: FederationStatus) -> list[str]:
    """A ``FederationStatus`` for humans: the round and what the aggregator does, one line
    per agent (liveness, admitted, last seen, what it does), and the last round."""
    from agent.messages.bodies import Liveness

    lines = [f"federation {federation}: round {summary.round}, {summary.detail or summary.phase}"]
    online = sum(1 for a in summary.agents.values() if a.state is Liveness.ONLINE)
    lines.append(f"agents: {online} online of {len(summary.agents)}")
    for agent_id, agent in summary.agents.items():
        seen = (
            "-"
            if agent.last_seen is None
            else time.strftime("%H:%M:%S", time.localtime(agent.last_seen))
        )
        admitted = "admitted" if agent.admitted else "-"
        state = str(agent.state or "unknown")
        expires = (
            ""
            if agent.cert_expires is None
            else time.strftime("  cert expires %Y-%m-%d", time.gmtime(agent.cert_expires))
        )
        lines.append(
            f"  {agent_id:<16} {state:<8} {admitted:<9} last seen {seen}  {agent.detail}{expires}"
        )
    last = summary.last_round
    if last is not None:
        accuracy = "-" if last.accuracy is None else f"{100 * last.accuracy:.2f}%"
        lines.append(
            f"last round {last.round}: {len(last.survivors)} survivors, dropouts "
            f"{', '.join(last.dropouts) or 'none'}, accuracy {accuracy}, "
            f"{last.seconds:.2f} s"
        )
    return lines


def _peer_status(config: Any, seconds: float, as_json: bool) -> None:
    from agent.node import bus_settings, open_bus
    from agent.roles.peer.view import collect, peer_lines

    async def gather() -> Any:
        async with open_bus(config, _clean(bus_settings(config, suffix="status"))) as bus:
            return await collect(bus, config.federation, seconds)

    found = asyncio.run(gather())
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(found)))
        return
    for line in peer_lines(config.federation, found):
        click.echo(line)


async def _status(config: Any, seconds: float) -> Any:
    """The first ``federation_status`` within ``seconds`` (retained on MQTT; on NATS the
    aggregator re-sends it every few seconds).

    Raises:
        BusTimeoutError: none came (no aggregator running, or no right to read it).
    """
    from agent.errors import BusTimeoutError
    from agent.messages import topics
    from agent.messages.bodies import FederationStatus
    from agent.messages.codec import decode
    from agent.node import bus_settings, open_bus

    async with open_bus(config, _clean(bus_settings(config, suffix="status"))) as bus:
        await bus.subscribe(topics.FEDERATION_STATUS.format(config.federation))
        try:
            async with asyncio.timeout(seconds):
                async for raw in bus.messages():
                    body = decode(raw.payload).body
                    if isinstance(body, FederationStatus):
                        return body
        except TimeoutError:
            pass
    raise BusTimeoutError(f"no federation_status within {seconds} s: is an aggregator running?")
