"""Start a node graph (:mod:`qd_perception.ros.graph`) as plain processes, without the ros2 CLI.

For pip installs where ``ros2 launch`` does not exist: every node of the graph runs as
``python -m <module> --ros-args -r __node:=<name> --params-file <file> -r <remaps>``, the same
program, parameters and remaps as the launch files. Output lines are prefixed with the node
name. SIGINT/SIGTERM stop every node with SIGINT (their clean shutdown), then SIGKILL after a
grace period. As with ``ros2 launch``, a node that exits (e.g. a detector without its model)
does not stop the others; the launcher's exit code is non-zero when any node failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from qd_perception.ros.graph import NodeSpec, core_share, nodes, params_path, ros_arguments
from qd_perception.ros.processes import stop_processes

_REPO = Path(__file__).resolve().parents[2]


def node_command(spec: NodeSpec, params: Path | None, log_level: str = "info", threads: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        spec.module,
        *spec.arguments,
        *ros_arguments(spec, params, log_level, threads),
    ]


def _pump(name: str, stream, out) -> None:
    for line in iter(stream.readline, b""):
        out.write(f"[{name}] {line.decode(errors='replace')}")
        out.flush()


def run_graph(
    graph: str,
    param_overrides: dict[str, str] | None = None,
    log_level: str = "info",
    duration_s: float | None = None,
    grace_s: float = 10.0,
    out=None,
) -> int:
    """Run ``graph`` until SIGINT/SIGTERM (or ``duration_s``); returns the exit code."""
    out = out or sys.stdout
    specs, skipped = nodes(graph, param_overrides)
    for s in skipped:
        out.write(f"[launch] {s}\n")
    if not specs:
        out.write(f"[launch] graph {graph!r}: no node can run here\n")
        return 1
    env = dict(os.environ)
    # Children import the same qd_perception as this process (source tree or installed).
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
    procs: list[tuple[NodeSpec, subprocess.Popen]] = []
    pumps: list[threading.Thread] = []
    stop = threading.Event()

    def _on_signal(signum, _frame) -> None:
        stop.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        share = core_share(specs)
        for spec in specs:
            params = params_path(spec, (param_overrides or {}).get(spec.name))
            cmd = node_command(spec, params, log_level, share)
            out.write(f"[launch] {spec.name}: {' '.join(cmd)}\n")
            p = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            t = threading.Thread(target=_pump, args=(spec.name, p.stdout, out), daemon=True)
            t.start()
            pumps.append(t)
            procs.append((spec, p))
        out.flush()
        end = time.monotonic() + duration_s if duration_s else None
        failed: list[str] = []
        while not stop.is_set() and (end is None or time.monotonic() < end):
            for spec, p in procs:
                rc = p.poll()
                if rc is not None and spec.name not in failed:
                    # As ros2 launch: the other nodes keep running; the exit code reports it.
                    failed.append(spec.name)
                    out.write(f"[launch] {spec.name} exited with code {rc}\n")
            if len(failed) == len(procs):
                out.write("[launch] every node has exited\n")
                break
            stop.wait(0.1)
        rc = _shutdown(procs, grace_s, out, failed)
        for t in pumps:  # the nodes' last lines (shutdown summaries)
            t.join(timeout=2.0)
        return rc
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _shutdown(
    procs: Sequence[tuple[NodeSpec, subprocess.Popen]], grace_s: float, out, failed: list[str]
) -> int:
    rc_all = 1 if failed else 0
    for (spec, _p), (rc, killed) in zip(procs, stop_processes([p for _, p in procs], grace_s)):
        if killed:
            out.write(f"[launch] {spec.name} did not stop within {grace_s:.0f} s: killed\n")
        if rc != 0 and spec.name not in failed:
            rc_all = 1
        out.write(f"[launch] {spec.name} stopped (exit code {rc})\n")
    out.flush()
    return rc_all
