"""Synthetic data set throughput: keyframes written per second, with their lidar sweeps and images.

Generates ``--scenes`` x ``--samples`` keyframes three times (nuScenes only, + rosbag2, + rosbag2
without cameras) with the real world and writers, and prints one markdown row per run for
docs/benchmarks.md::

    nice -n 10 .venv/bin/python benchmarks/sim_throughput.py --scenes 2 --samples 4 --resolution 450x800

Per keyframe: 10 lidar sweeps (20 Hz) written to nuScenes ``samples/``+``sweeps/`` and 6 camera
images; with the bag also the 5 camera frames between keyframes (12 Hz), odometry at 50 Hz and
ground truth per sweep, as raw ``Image``/``PointCloud2`` messages.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run from the source tree (not an installed copy): the repository root goes first on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.commands.sim import parse_resolution
from qd_perception.sim.generate import GenerateConfig, _world_scene, generate, write_scene


class CachedScene:
    """A world scene whose renders are kept, to time the writers alone on a second pass."""

    def __init__(self, scene) -> None:
        self._scene = scene
        for k in ("name", "description", "rig", "resolution", "start_us", "end_us"):
            setattr(self, k, getattr(scene, k))
        self._cache: dict = {}

    def _get(self, kind: str, t: int):
        if (kind, t) not in self._cache:
            self._cache[kind, t] = getattr(self._scene, kind)(t)
        return self._cache[kind, t]

    def ego(self, t):
        return self._get("ego", t)

    def annotations(self, t):
        return self._get("annotations", t)

    def lidar(self, t):
        return self._get("lidar", t)

    def cameras(self, t):
        return self._get("cameras", t)


def writers_only(args) -> None:
    """Keyframes/s of the writers alone (one scene rendered once, written again from memory)."""
    for bag in (False, True):
        cfg = GenerateConfig(
            scenes=1, samples=args.samples, seed=args.seed, resolution=tuple(args.resolution), bag=bag
        )
        scene = CachedScene(_world_scene(cfg, 0))
        tmp = Path(tempfile.mkdtemp(prefix="qd_sim_bench_"))
        try:
            write_scene(scene, tmp / "warm", cfg, 0)  # renders (untimed)
            t0 = time.perf_counter()
            write_scene(scene, tmp / "timed", cfg, 0)
            wall = time.perf_counter() - t0
            H, W = args.resolution
            print(
                f"| writers only{' + bag' if bag else ''} {H}x{W} (1 process) | {args.samples} | "
                f"{wall:.1f} | {args.samples / wall:.2f} | | |",
                flush=True,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--resolution", type=parse_resolution, default=(450, 800))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--writers-only", action="store_true", help="time the writers on cached renders")
    args = ap.parse_args()
    n = args.scenes * args.samples
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, workers={args.workers}")
    print("| output | keyframes | wall s | keyframes/s | MB/keyframe (nuScenes) | MB/keyframe (bag) |")
    print("|---|---|---|---|---|---|")
    if args.writers_only:
        writers_only(args)
        return
    for bag, bag_cameras in ((False, "all"), (True, "all"), (True, "none")):
        tmp = Path(tempfile.mkdtemp(prefix="qd_sim_bench_"))
        try:
            cfg = GenerateConfig(
                scenes=args.scenes, samples=args.samples, seed=args.seed, resolution=tuple(args.resolution),
                bag=bag, bag_cameras=bag_cameras, workers=args.workers,
            )  # fmt: skip
            t0 = time.perf_counter()
            generate(cfg, tmp / "ds", show_progress=False)
            wall = time.perf_counter() - t0
            total = folder_bytes(tmp / "ds")
            bag_bytes = folder_bytes(tmp / "ds" / "bags") if bag else 0
            H, W = args.resolution
            label = (
                f"nuScenes{' + bag' if bag else ''}{' (no cameras)' if bag_cameras == 'none' else ''} {H}x{W}"
            )
            print(
                f"| {label} | {n} | {wall:.1f} | {n / wall:.2f} | {(total - bag_bytes) / n / 1e6:.2f} | "
                f"{bag_bytes / n / 1e6:.1f} |",
                flush=True,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
