"""A device imports only what a trainer needs (issue 15): ``fedbus run`` of a trainer loads
neither the aggregator role nor the Prometheus client (metrics off), nor SciPy / scikit-learn,
nor what it imports only when used (the P2P role, SecAgg+, X.509 and the certificate code
without identities, structlog's optional rich / pygments / greenlet); ``Metrics.off()``
counts nothing; numpy's BLAS threads are quieted before numpy loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.config import AgentConfig, MetricsConfig, PluginConfig
from agent.node_base import node_metrics
from agent.role import Role
from agent.runtime.blas import THREAD_TIMEOUT, VARIABLE, quiet_blas_threads
from agent.runtime.metrics import Metrics

#: What ``fedbus run`` imports for a trainer (``agent.cli.main.run``), and the plugin loader.
RUN_PATH = (
    "agent.cli.main, agent.config, agent.logs, agent.node_base, agent.node_trainer,"
    " agent.bus.mqtt, agent.bus.nats_bus"
)
#: Never on a trainer's run path: packages (and everything under them) ...
FORBIDDEN = ("prometheus_client", "scipy", "sklearn", "dp_accounting", "rich", "pygments")
FORBIDDEN += ("greenlet", "attr")
#: ... and agent modules loaded only by the role or the round that needs them (X.509 and
#: the certificate code only with identities on: ``agent.roles.trainer.identified``).
LAZY = ("agent.roles.aggregator", "agent.roles.peer", "agent.roles.trainer.secure_fit")
LAZY += ("agent.secagg.client", "cryptography.x509", "agent.identity.local")
LAZY += ("agent.identity.verifier", "agent.identity.certificates", "agent.ledger.head")
LAZY += ("agent.runtime.renewer", "agent.strategy.base", "agent.strategy.update")


def loaded(code: str) -> list[str]:
    """The modules of ``FORBIDDEN`` and ``LAZY`` that a fresh interpreter running ``code``
    has imported (``code`` may import more afterwards: the list is taken at its end)."""
    probe = (
        f"{code}\nimport sys\n"
        f"print(*sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}"
        f" or m.startswith({LAZY!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.split()


def test_the_trainer_run_path_imports_only_what_an_idle_trainer_needs() -> None:
    # (rich, pygments, attrs and greenlet are installed here, with flwr and typer)
    assert loaded(f"import {RUN_PATH}") == []


def test_what_the_run_path_leaves_out_still_imports_when_asked_for() -> None:
    """structlog's extras are hidden only while structlog imports (agent/__init__.py)."""
    got = loaded("import agent.node_trainer, rich, agent.roles.trainer.secure_fit")
    assert {"rich", "agent.roles.trainer.secure_fit", "agent.secagg.client"} <= set(got)


def test_metrics_off_counts_nothing_and_on_counts() -> None:
    off = Metrics.off()
    off.messages_sent.labels(kind="join").inc()
    off.stage_seconds.labels(stage="fit").observe(1.0)
    off.agents.labels(state="online").set(3)
    off.dropouts.inc()
    assert off.registry is None
    assert off.value("fedbus_messages_sent_total", kind="join") == 0.0
    on = Metrics()
    on.messages_sent.labels(kind="join").inc()
    assert on.value("fedbus_messages_sent_total", kind="join") == 1.0


def test_node_metrics_are_off_without_a_port(tmp_path: Path) -> None:
    config = AgentConfig(
        role=Role.TRAINER,
        agent_id="a",
        federation="f",
        bus_url="mqtt://127.0.0.1:1",
        state_dir=tmp_path,
        plugin=PluginConfig(name="toy"),
        metrics=MetricsConfig(port=0),
    )
    assert node_metrics(config).registry is None
    assert node_metrics(config, always=True).registry is not None


def test_blas_threads_are_quieted_unless_the_user_chose() -> None:
    env: dict[str, str] = {}
    assert quiet_blas_threads(env)
    assert env == {VARIABLE: THREAD_TIMEOUT}
    mine = {VARIABLE: "28"}
    assert not quiet_blas_threads(mine)
    assert mine == {VARIABLE: "28"}
    threads = {"OPENBLAS_NUM_THREADS": "4"}
    assert not quiet_blas_threads(threads)
    assert VARIABLE not in threads


def test_the_entry_point_quiets_blas_before_numpy_is_imported() -> None:
    """OpenBLAS reads the variable when numpy loads it: ``fedbus`` sets it first."""
    probe = (
        "import os, sys\n"
        "sys.argv = ['fedbus', '--version']\n"
        "import agent.cli.main\n"
        "numpy_before = 'numpy' in sys.modules\n"
        "try:\n    agent.cli.main.main()\nexcept SystemExit:\n    pass\n"
        f"print(numpy_before, os.environ.get({VARIABLE!r}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
    args = [sys.executable, "-c", probe]
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60, env=env)
    assert done.stdout.split()[-2:] == ["False", THREAD_TIMEOUT]
