"""A broker that refuses this agent (agent.bus.refusal), on a real mosquitto and a real
nats-server: mosquitto's CRL answers a revoked certificate with a TLS alert, which stops the
bus at once (``BrokerRefusedError``, exit status 78) instead of a reconnect loop; nats-server's
``Authorization Violation`` is retried for ``refusal_grace`` seconds (an enrollment it does
not know yet) and then stops the bus the same way."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from agent.brokers import free_port
from agent.bus import BusSettings
from agent.bus.refusal import Refusal, RefusalWatch
from agent.bus.url import TlsFiles, bus_from_url
from agent.errors import BrokerRefusedError, ConnectRefusedError
from agent.identity.ca import init_ca, issue
from agent.identity.pem import write_pem, write_private_key
from agent.lockdown import (
    Members,
    embedded_broker,
    local_mosquitto_user,
    regenerate,
    write_broker_config,
)
from agent.role import Role
from agent.roles.trainer import Trainer
from agent.runtime.tasks import task_group
from tests.helpers import toy, trainer_config

pytestmark = pytest.mark.timeout(60)
WAIT = 20.0  # bound for what should happen promptly; never asserted as a duration


def _settings(name: str, grace: float) -> BusSettings:
    return BusSettings(
        name, backoff_initial=0.05, backoff_max=0.3, connect_timeout=3.0, refusal_grace=grace
    )


async def _stopped(url: str, tls: TlsFiles, grace: float) -> BrokerRefusedError:
    """The error the bus stops with (its ``messages()`` raises it)."""
    async with bus_from_url(url, _settings("fed1-a1", grace), tls=tls) as bus:

        async def drain() -> None:
            async with asyncio.timeout(WAIT):
                async for _ in bus.messages():
                    pass

        with pytest.raises(BrokerRefusedError) as raised:
            await drain()
        with pytest.raises(BrokerRefusedError):
            await bus.wait_connected(timeout=1.0)
    return raised.value


def _client(where: Path, ca_files: Path, cert_of: tuple[object, object]) -> TlsFiles:
    key, cert = cert_of
    write_private_key(where / "a1.key", key)  # type: ignore[arg-type]
    write_pem(where / "a1.pem", cert)  # type: ignore[arg-type]
    return TlsFiles(ca_files, where / "a1.pem", where / "a1.key")


@pytest.mark.broker
async def test_mosquitto_refusing_a_revoked_certificate_stops_the_bus_at_once(
    tmp_path: Path,
) -> None:
    """The TLS alert ``certificate revoked`` is read from paho's log record (aiomqtt
    reports only a connect timeout) and stops the bus, however long the grace."""
    ca = init_ca("fed1")
    key, cert = issue(ca, "a1", role=Role.TRAINER)
    now = dt.datetime.now(dt.UTC)
    files = write_broker_config(
        "mqtt",
        ca,
        tmp_path / "broker",
        Members("agg", revoked=("a1",), revoked_serials=((cert.serial_number, now),)),
        port=free_port(),
        mosquitto_user=local_mosquitto_user(),
    )
    tls = _client(tmp_path, files.ca_file, (key, cert))
    with embedded_broker(files) as broker:
        error = await _stopped(broker.url, tls, grace=3600.0)
        assert error.reason == Refusal.CERTIFICATE_REVOKED
        assert error.exit_code == 78
        assert "certificate revoked" in str(error)
        # a trainer on that bus stops with it (the CLI exits with its status, 78)
        config = trainer_config("a1", broker.url, tmp_path, fed="fed1")
        bus = bus_from_url(broker.url, _settings("fed1-a1", 3600.0), tls=tls)
        async with bus:
            with pytest.raises(BrokerRefusedError):
                async with asyncio.timeout(WAIT):
                    await Trainer(config=config, bus=bus, plugin=toy(1.0, 1)).run()


@pytest.mark.broker
async def test_nats_authorization_violations_are_retried_for_the_grace_then_stop(
    tmp_path: Path,
) -> None:
    """An agent nats-server does not list is refused (``Authorization Violation``): the bus
    retries, and stops with ``not_authorized`` once ``refusal_grace`` has passed. With a
    longer grace, listing it (an enrollment, then a reload) lets the waiting bus in."""
    ca = init_ca("fed1")
    files = write_broker_config("nats", ca, tmp_path / "broker", Members("agg"), port=free_port())
    tls = _client(tmp_path, files.ca_file, issue(ca, "a1", role=Role.TRAINER))
    with embedded_broker(files) as broker:
        error = await _stopped(broker.url, tls, grace=0.5)
        assert error.reason == Refusal.NOT_AUTHORIZED
        async with bus_from_url(broker.url, _settings("fed1-a1", 60.0), tls=tls) as bus:
            with pytest.raises(TimeoutError):
                await bus.wait_connected(timeout=1.0)  # refused, still retrying
            regenerate(files, ca, Members("agg", ("a1",)))
            await asyncio.to_thread(broker.reload)
            await bus.wait_connected(timeout=WAIT)


def test_the_watch_stops_at_once_when_final_and_after_the_grace_otherwise() -> None:
    """``RefusalWatch``: a revoked certificate stops at the first refusal; not_authorized
    only after ``grace`` seconds of refusals in a row, counted again after a session."""
    clock = [0.0]
    watch = RefusalWatch(10.0, clock=lambda: clock[0])
    denied = ConnectRefusedError(str(Refusal.NOT_AUTHORIZED), "Authorization Violation")
    assert watch.refused(denied, "b") is None
    clock[0] = 9.0
    assert watch.refused(denied, "b") is None
    watch.connected()
    clock[0] = 15.0
    assert watch.refused(denied, "b") is None  # the 10 s start over at 15
    clock[0] = 25.0
    stop = watch.refused(denied, "b")
    assert stop is not None
    assert stop.reason == "not_authorized"
    revoked = ConnectRefusedError(str(Refusal.CERTIFICATE_REVOKED), "alert")
    stop = RefusalWatch(3600.0).refused(revoked, "b")
    assert stop is not None
    assert stop.exit_code == 78


async def test_one_refusal_raised_in_several_tasks_surfaces_as_itself() -> None:
    """A stopped bus raises its one ``BrokerRefusedError`` in every task waiting on it: the
    role's task group (``agent.runtime.tasks.task_group``) re-raises it bare, not as an
    ``ExceptionGroup`` of copies; two different failures stay a group."""
    stop = BrokerRefusedError(str(Refusal.CERTIFICATE_REVOKED), "certificate revoked")

    async def fail(exc: Exception) -> None:
        await asyncio.sleep(0)
        raise exc

    async def group(*failures: Exception) -> None:
        async with task_group() as tg:
            for exc in failures:
                tg.create_task(fail(exc))

    with pytest.raises(BrokerRefusedError) as raised:
        await group(stop, stop, stop)
    assert raised.value is stop
    with pytest.raises(ExceptionGroup):
        await group(stop, ValueError("another"))
