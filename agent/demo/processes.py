"""Agent OS processes started by the demo (and by tests): start, watch, kill, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agent.children import die_with_parent


@dataclass
class AgentProcess:
    """One ``fedbus run`` child process and its log file."""

    agent_id: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    killed_on_purpose: bool = False

    def kill(self) -> None:
        """SIGKILL (a dropout, as a device losing power would)."""
        self.killed_on_purpose = True
        if self.process.poll() is None:
            self.process.kill()


def start_agent(agent_id: str, config_path: Path, log_path: Path) -> AgentProcess:
    """Start ``python -m agent run --config config_path`` with output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config_path)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # Ctrl-C reaches the demo, which stops agents in order
        preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl call, no locks or threads
    )
    return AgentProcess(agent_id, process, log_path, log_file)


def stop_agents(agents: list[AgentProcess], *, grace: float = 5.0) -> dict[str, int]:
    """SIGTERM every running agent, SIGKILL those still up after ``grace`` s; reap all.

    Returns each agent's exit code.
    """
    for a in agents:
        if a.process.poll() is None:
            a.process.send_signal(signal.SIGTERM)
    codes: dict[str, int] = {}
    for a in agents:
        try:
            codes[a.agent_id] = a.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            a.process.kill()
            codes[a.agent_id] = a.process.wait()
        a.log_file.close()
    return codes
