"""``qd-perception train lidar|bev ...``: train a detector."""

from __future__ import annotations

import argparse

from qd_perception.commands._targets import add_target_arguments, run_target

#: detector family -> module implementing this command for it.
TARGETS: dict[str, str] = {
    "lidar": "qd_perception.train.lidar",
    "bev": "qd_perception.train.bev",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, TARGETS)


def run(args: argparse.Namespace) -> int:
    return run_target(args)
