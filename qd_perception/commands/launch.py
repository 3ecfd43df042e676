"""``qd-perception launch lidar|bev``: start a node graph as processes (pip installs, no ros2 CLI).

The same nodes, parameter files and topic remaps as ``ros2 launch qd_perception <graph>.launch.py``
(both read :mod:`qd_perception.ros.graph`). Stops cleanly on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from qd_perception.ros.graph import GRAPHS

    parser.add_argument("graph", choices=sorted(GRAPHS), help="which node graph to start")
    parser.add_argument(
        "--params",
        action="append",
        default=[],
        metavar="NODE=FILE",
        help="parameter file for one node (default: config/<node>.param.yaml); repeatable",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")


def run(args: argparse.Namespace) -> int:
    from qd_perception.ros.launcher import run_graph

    overrides = {}
    for item in args.params:
        node, sep, path = item.partition("=")
        if not sep or not node or not path:
            raise SystemExit(f"--params expects NODE=FILE, got {item!r}")
        overrides[node] = path
    return run_graph(args.graph, overrides, args.log_level, args.duration)
