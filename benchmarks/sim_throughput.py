"""Synthetic data set throughput: keyframes written per second, with their lidar sweeps and images.

Generates ``--scenes`` x ``--samples`` keyframes twice (nuScenes only, then nuScenes + rosbag2)
with the real world and writers, and prints one markdown row per run for docs/benchmarks.md::

    nice -n 10 .venv/bin/python benchmarks/sim_throughput.py --scenes 2 --samples 10 --resolution 450x800

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
from qd_perception.sim.generate import GenerateConfig, generate


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--resolution", type=parse_resolution, default=(450, 800))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = args.scenes * args.samples
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, workers={args.workers}")
    print("| output | keyframes | wall s | keyframes/s | MB/keyframe (nuScenes) | MB/keyframe (bag) |")
    print("|---|---|---|---|---|---|")
    for bag in (False, True):
        tmp = Path(tempfile.mkdtemp(prefix="qd_sim_bench_"))
        try:
            cfg = GenerateConfig(
                scenes=args.scenes, samples=args.samples, seed=args.seed, resolution=tuple(args.resolution),
                bag=bag, workers=args.workers,
            )  # fmt: skip
            t0 = time.perf_counter()
            generate(cfg, tmp / "ds", show_progress=False)
            wall = time.perf_counter() - t0
            total = folder_bytes(tmp / "ds")
            bag_bytes = folder_bytes(tmp / "ds" / "bags") if bag else 0
            H, W = args.resolution
            label = f"nuScenes{' + bag' if bag else ''} {H}x{W}"
            print(
                f"| {label} | {n} | {wall:.1f} | {n / wall:.2f} | {(total - bag_bytes) / n / 1e6:.2f} | "
                f"{bag_bytes / n / 1e6:.1f} |",
                flush=True,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
