"""Node processes started from Python: their environment, and stopping them by PID.

One implementation for ``qd-perception launch`` (:mod:`qd_perception.ros.launcher`),
``qd-perception replay`` and the tests' harness: a process is asked to stop with a signal
(SIGINT: the nodes' clean shutdown) and killed when it has not exited after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[2]


def ros_env() -> dict[str, str]:
    """Environment for the node processes: loopback-only DDS and the large shared-memory Fast DDS
    profile unless the caller chose otherwise (Fast DDS's default shared-memory
    segment is too small for a 6-camera frame and loses them)."""
    from qd_perception.paths import config_dir

    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_LOCALHOST_ONLY", "1")
    profile = config_dir() / "fastdds.xml"
    if profile.exists():
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))
    # The children must import this checkout's package first (source tree or installed).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
    return env


def stop_processes(
    procs: Sequence[subprocess.Popen], grace_s: float, sig: int = signal.SIGINT
) -> list[tuple[int | None, bool]]:
    """Send ``sig`` to every running process of ``procs`` at once, wait up to ``grace_s`` seconds
    in all, SIGKILL the ones still running. Returns ``(exit code, killed)`` per process."""
    import time

    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + grace_s
    out = []
    for p in procs:
        try:
            out.append((p.wait(max(0.1, deadline - time.monotonic())), False))
        except subprocess.TimeoutExpired:
            p.kill()
            out.append((p.wait(5), True))
    return out


def stop_process(p: subprocess.Popen, grace_s: float, sig: int = signal.SIGINT) -> int | None:
    """:func:`stop_processes` of one process: its exit code."""
    return stop_processes([p], grace_s, sig)[0][0]


class Processes:
    """Child processes started here with their output in ``<log_dir>/<name>.log``, stopped by PID
    (SIGINT, then SIGKILL after ``timeout_s``)."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen, Any]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # closed in stop / stop_all / forget
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append((name, p, log))
        return p

    def forget(self, name: str) -> None:
        """Drop a process that already exited (its log stays)."""
        for entry in [e for e in self.procs if e[0] == name]:
            entry[2].close()
            self.procs.remove(entry)

    def check_alive(self) -> None:
        for name, p, _ in self.procs:
            if p.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited early with code {p.returncode}:\n{tail}")

    def stop(self, name: str, timeout_s: float = 10.0) -> int | None:
        for n, p, log in self.procs:
            if n == name:
                rc = stop_process(p, timeout_s)
                log.close()
                return rc
        raise KeyError(name)

    def stop_all(self, timeout_s: float = 10.0) -> dict[str, int | None]:
        """Stop every process, the last started first (the recorder before the nodes it hears)."""
        out = {}
        for name, p, log in reversed(self.procs):
            out[name] = stop_process(p, timeout_s)
            log.close()
        return out
