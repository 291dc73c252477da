"""``bench/agent_footprint.py``'s processes: a ``fedbus run`` under a ``$NOTIFY_SOCKET`` of its
own, read from ``/proc`` (CPU from schedstat, wake-ups, memory), and the minimal plugin."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FEDBUS = str(Path(sys.executable).with_name("fedbus"))

MINIMAL_PLUGIN = '''"""The smallest useful plugin: numpy only, three float32 arrays."""
import numpy as np
from agent.plugin.api import EvaluateResult, FitResult


class Minimal:
    def get_weights(self):
        return [np.zeros((8, 4), np.float32), np.zeros(4, np.float32), np.zeros(1, np.float32)]

    def num_examples(self):
        return 10

    def fit(self, weights, config):
        return FitResult([w + 1 for w in weights], 10, {})

    def evaluate(self, weights, config):
        return EvaluateResult(0.0, 10, {"accuracy": 1.0})


def create(context):
    return Minimal()
'''


def write_minimal_plugin(root: Path) -> Path:
    """A distribution ``footprint-minimal`` with entry point ``minimal`` under ``root``
    (a ``PYTHONPATH`` entry): ``importlib.metadata`` finds its dist-info there."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "footprint_minimal.py").write_text(MINIMAL_PLUGIN, encoding="utf-8")
    info = root / "footprint_minimal-0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: footprint-minimal\nVersion: 0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[fedbus.plugins]\nminimal = footprint_minimal:create\n", encoding="utf-8"
    )
    return root


class Agent:
    """``fedbus run`` of one config, with a ``$NOTIFY_SOCKET`` of its own."""

    def __init__(self, path: Path, log: Path, env: dict[str, str]) -> None:
        self.notify_path = path.with_suffix(".notify")
        self.notify_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.log = log.open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [FEDBUS, "run", "--config", str(path)],
            env={**env, "NOTIFY_SOCKET": str(self.notify_path)},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_for(self, word: str, timeout: float = 60.0) -> float:
        """Seconds from spawn until a notification containing ``word`` arrived."""
        deadline = time.perf_counter() + timeout
        while (left := deadline - time.perf_counter()) > 0:
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                if self.process.poll() is not None:
                    raise SystemExit(f"the agent exited; see {self.log.name}") from None
                continue
            if word in data:
                return time.perf_counter() - self.started
        raise SystemExit(f"no {word!r} from the agent in {timeout} s; see {self.log.name}")

    def tasks(self) -> list[Path]:
        return list(Path(f"/proc/{self.process.pid}/task").iterdir())

    def cpu_seconds(self) -> float:
        """CPU time of all the process's threads so far, ns resolution (schedstat's first
        field: time on a CPU), where ``/proc/PID/stat``'s ticks are 10 ms."""
        total = 0
        for task in self.tasks():
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9

    def wakeups(self) -> dict[str, int]:
        """Context switches (voluntary + not) so far, by thread name."""
        out: dict[str, int] = {}
        for task in self.tasks():
            with contextlib.suppress(FileNotFoundError):
                name = (task / "comm").read_text().strip()
                lines = (task / "status").read_text().splitlines()
                n = sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
                out[name] = out.get(name, 0) + n
        return out

    def memory(self) -> dict[str, float]:
        status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        kb = {line.split(":")[0]: int(line.split()[1]) for line in status if line.endswith("kB")}
        rollup = Path(f"/proc/{self.process.pid}/smaps_rollup").read_text().splitlines()
        pss = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        return {
            "rss_mb": round(kb["VmRSS"] / 1000, 1),
            "peak_rss_mb": round(kb["VmHWM"] / 1000, 1),
            "pss_mib": round(pss / 1024, 1),
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.sock.close()
        self.log.close()
