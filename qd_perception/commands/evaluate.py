"""``qd-perception eval lidar|bev ...``: nuScenes metrics (through nuscenes-devkit) of a detector.

Dispatches to the task module of each detector family, which defines ``add_arguments(parser)``
and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

#: detector family -> module implementing this command for it.
TARGETS: dict[str, str] = {
    "lidar": "qd_perception.eval.lidar",
    "bev": "qd_perception.eval.bev",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="lidar|bev", required=True)
    for name, module in TARGETS.items():
        p = sub.add_parser(name, help=f"{name} detector")
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._module).run(args) or 0)
