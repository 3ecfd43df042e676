"""``qd-perception``: the command-line interface.

Sub-commands live in :mod:`qd_perception.commands`; this module only holds the explicit table of
them and imports a sub-command's module when it is used (so ``--help`` stays fast and a missing
optional dependency only breaks the command that needs it).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from qd_perception.config import ConfigError

#: name -> (module under qd_perception.commands, one-line help). Explicit, no registry magic.
COMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("sim", "generate a synthetic nuScenes-format data set (and rosbag2 files)"),
    "sim-preview": ("sim_preview", "draw the six images and a BEV lidar view of one sample"),
    "train": ("train", "train a detector (lidar | bev)"),
    "eval": ("evaluate", "evaluate a detector on a nuScenes-format data set"),
    "export": ("export", "export a model to ONNX"),
    "calibrate": ("calibrate", "build a PTQ calibration set from a data set"),
    "quantize": ("quantize", "quantization (LiDAR-PTQ and calibrators; QD-BEV for the camera model)"),
    "replay": ("replay", "replay a rosbag2 through the real nodes and score their output"),
    "launch": ("launch", "start a node graph without the ros2 CLI (pip installs)"),
    "bench": ("bench", "run the benchmark suite and print its docs/benchmarks.md rows"),
    "demo": ("demo", "the main job: synthetic scene -> bag -> replay -> metrics"),
}


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qd-perception", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == load:
            _module(module).add_arguments(p)
    return parser


def _module(module: str):
    return importlib.import_module(f"qd_perception.commands.{module}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = next((a for a in argv if not a.startswith("-")), None)
    if name not in COMMANDS:
        build_parser().parse_args(argv)  # prints usage / help and exits
        return 2
    try:
        parser = build_parser(load=name)
    except ModuleNotFoundError as e:
        print(f"qd-perception {name}: not available ({e})", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(_module(COMMANDS[name][0]).run(args) or 0)
    except ConfigError as e:  # a wrong or corrupt input file: one line naming it, no traceback
        print(f"qd-perception {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
