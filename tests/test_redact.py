"""Secrets never echoed: a URL's password or token appears in no error and no log line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog

from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url, parse_broker_url
from agent.errors import ConfigError
from agent.logs import configure_logging
from agent.redact import redact, redact_url
from tests.helpers import fedbus, trainer_config

pytestmark = pytest.mark.timeout(30)

SECRET = "hunter2-s3cret"
#: Every way a user might put a secret into a broker URL.
URLS_WITH_SECRETS = [
    f"nats://user:{SECRET}@127.0.0.1:4222",
    f"mqtt://:{SECRET}@127.0.0.1",
    f"mqtts://{SECRET}@127.0.0.1:8883",  # a bare token as the user name
    f"tls://user:{SECRET}@127.0.0.1:notaport",  # refused for the port: still masked
    f"nats://user:{SECRET}/with/slash@127.0.0.1",
    f"nats://user:{SECRET} with blank@127.0.0.1",
    f"nats://127.0.0.1:4222?token={SECRET}",
    f"http://user:{SECRET}@127.0.0.1",  # unknown scheme
    f"user:{SECRET}@127.0.0.1:4222",  # no scheme
]


@pytest.mark.parametrize("url", URLS_WITH_SECRETS)
def test_a_refused_url_never_repeats_its_secret(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        bus_from_url(url, BusSettings(client_id="x"))
    message = str(raised.value)
    assert SECRET not in message
    assert "bad broker URL" in message
    assert "***" in message
    assert raised.value.__cause__ is None or SECRET not in str(raised.value.__cause__)


@pytest.mark.parametrize("url", URLS_WITH_SECRETS)
def test_redact_masks_every_form(url: str) -> None:
    assert SECRET not in redact_url(url)
    if "://" in url and " " not in url:  # in free text only scheme://…, up to a blank, is a URL
        assert SECRET not in redact(f"connecting to '{url}' now")


def test_redact_keeps_what_is_not_secret() -> None:
    assert redact("no url here, key /etc/fedbus/agent.key") == (
        "no url here, key /etc/fedbus/agent.key"
    )
    assert redact("bus nats://127.0.0.1:4222 up") == "bus nats://127.0.0.1:4222 up"
    assert parse_broker_url("nats://127.0.0.1:4222").host == "127.0.0.1"


def _fail(message: str) -> None:
    raise RuntimeError(message)


def test_no_log_line_carries_a_url_secret() -> None:
    """Any field of any event, and a logged exception's traceback, are masked."""
    out = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=out)
    try:
        log = structlog.get_logger("test")
        log.info("connecting", url=f"nats://u:{SECRET}@127.0.0.1:4222", note="plain")
        try:
            _fail(f"cannot reach mqtt://{SECRET}@127.0.0.1")
        except RuntimeError:
            log.exception("failed")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["connecting", "failed"]
    assert SECRET not in out.getvalue()
    assert lines[0]["url"] == "nats://***@127.0.0.1:4222"
    assert "mqtt://***@127.0.0.1" in lines[1]["exception"]


@pytest.mark.parametrize("how", ["demo --bus-url", "listen --as", "status --as"])
def test_the_cli_error_never_repeats_the_secret(how: str, tmp_path: Path) -> None:
    """What an operator sees when a command refuses a URL with a password, given on the
    command line or in a config file."""
    url = f"nats://operator:{SECRET}@127.0.0.1:4222"
    command, option = how.split()
    if option == "--as":
        config = tmp_path / "agent.toml"
        config.write_bytes(trainer_config("a1", url, tmp_path / "state").to_toml())
        args = [command, option, str(config)]
    else:
        args = [command, option, url, "--agents", "3", "--rounds", "1"]
    run = fedbus(*args, timeout=25, tmpdir=tmp_path / "tmp")
    assert run.returncode != 0
    assert "bad broker URL" in run.stderr, run.stderr
    assert SECRET not in run.stdout + run.stderr
