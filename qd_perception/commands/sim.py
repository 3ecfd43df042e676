"""``qd-perception sim``: generate a synthetic nuScenes-format data set (and rosbag2 files).

Example::

    qd-perception sim --out data/sim --scenes 10 --samples 40 --seed 0 --bag

writes ``data/sim/v1.0-synthetic/*.json`` (13 tables + ``splits.json``), ``samples/``,
``sweeps/``, ``maps/`` and, with ``--bag``, ``bags/scene-XXXX/`` (rosbag2, MCAP).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qd_perception.sim.nuscenes_writer import DEFAULT_VERSION


def parse_resolution(text: str) -> tuple[int, int]:
    """``"450x800"`` -> ``(450, 800)`` (height x width)."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 450x800 (HxW), got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"resolution {text} too small (min 8x8)")
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (the nuScenes dataroot)")
    parser.add_argument("--scenes", type=int, default=4, help="number of scenes (default 4)")
    parser.add_argument(
        "--samples", type=int, default=8, help="keyframes per scene at 2 Hz (default 8 = 4 s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bag", action="store_true", help="also write one rosbag2 (MCAP) per scene")
    parser.add_argument(
        "--resolution", type=parse_resolution, default=(450, 800), help="camera HxW (450x800)"
    )
    parser.add_argument(
        "--bag-cameras",
        choices=("all", "keyframes", "none"),
        default="all",
        help="camera frames in the bag: all (12 Hz), keyframes (2 Hz) or none (lidar-only replay)",
    )
    parser.add_argument("--version", default=DEFAULT_VERSION, help=f"table folder name ({DEFAULT_VERSION})")
    parser.add_argument("--camera-sweeps", action="store_true", help="store camera frames between keyframes")
    parser.add_argument(
        "--lidar-sweeps",
        choices=("all", "keyframes"),
        default="all",
        help="lidar between keyframes: all (rig rate) or keyframes only (camera training sets, 5x faster)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.2, help="last scenes for val (at least one)")
    parser.add_argument("--workers", type=int, default=2, help="processes (scenes run in parallel)")
    parser.add_argument("--world-config", default="", help="SimConfig YAML, e.g. config/sim/default.yaml")


def run(args: argparse.Namespace) -> int:
    from qd_perception.sim.generate import GenerateConfig, generate, visible_class_counts

    try:
        cfg = GenerateConfig(
            scenes=args.scenes,
            samples=args.samples,
            seed=args.seed,
            resolution=tuple(args.resolution),
            version=args.version,
            bag=args.bag,
            bag_cameras=args.bag_cameras,
            camera_sweeps=args.camera_sweeps,
            lidar_sweeps=args.lidar_sweeps,
            val_fraction=args.val_fraction,
            workers=args.workers,
            world_config=args.world_config,
        )
        out = generate(cfg, args.out)
    except (ValueError, FileExistsError) as e:
        print(f"qd-perception sim: {e}", file=sys.stderr)
        return 2
    print(f"wrote {cfg.scenes} scenes x {cfg.samples} keyframes to {out} (version {cfg.version})")
    counts = visible_class_counts(out, cfg.version)
    for split, per_class in counts.items():
        print(f"{split}: " + ", ".join(f"{c} {n}" for c, n in per_class.items()))
    missing = [c for c, n in counts["val"].items() if n == 0]
    if missing:
        print(
            f"warning: no lidar-visible {', '.join(missing)} in val: the devkit scores their AP 0 "
            "(use more --scenes/--samples or another --seed)",
            file=sys.stderr,
        )
    return 0
