"""Shared by the ``train`` / ``eval`` / ``export`` commands: one sub-command per detector family.

Each family's module defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib


def add_target_arguments(parser: argparse.ArgumentParser, targets: dict[str, str]) -> None:
    """Add ``lidar|bev`` sub-parsers, each filled by its module (``targets``: name -> module)."""
    sub = parser.add_subparsers(dest="target", metavar="|".join(targets), required=True)
    for name, module in targets.items():
        p = sub.add_parser(name, help=f"{name} detector")
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)


def run_target(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._module).run(args) or 0)
