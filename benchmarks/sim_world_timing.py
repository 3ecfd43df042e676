"""Per-keyframe cost of the synthetic world alone (no writers): lidar sweeps, six cameras, GT.

One keyframe = 10 lidar sweeps (20 Hz over the 0.5 s between keyframes) + the six camera images
+ annotations (with visibility). Renders ``--keyframes`` keyframes of each of ``--scenes`` scenes
in this one process and prints a markdown table (CPU seconds of this process and wall seconds)::

    nice -n 10 .venv/bin/python benchmarks/sim_world_timing.py --scenes 4 --keyframes 3

CPU time is reported beside wall time because the machine is shared: wall time includes waiting
for the CPU when other jobs run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.config import load_yaml
from qd_perception.sim.config import SimConfig
from qd_perception.sim.world import make_scene

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0

    def __enter__(self) -> Clock:
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu += time.process_time() - self._c
        self.wall += time.perf_counter() - self._w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--keyframes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", default="450x800")
    args = ap.parse_args()
    H, W = (int(v) for v in args.resolution.split("x"))
    cfg = replace(load_yaml(SimConfig, ROOT / "config" / "sim" / "default.yaml"), resolution=(H, W))
    build, lidar, cams, ann = Clock(), Clock(), Clock(), Clock()
    n_points, conditions = [], []
    warm = make_scene(cfg, args.seed, 10_000)  # first-use caches (ray tables) are not counted
    warm.cameras(warm.start_us), warm.lidar(warm.start_us)
    n_kf = 0
    for idx in range(args.scenes):
        with build:
            scene = make_scene(cfg, args.seed, idx)
        conditions.append(scene.description)
        for k in range(args.keyframes):
            t_kf = scene.start_us + 500_000 * (k + 1)
            with lidar:
                for j in range(10):
                    n_points.append(len(scene.lidar(t_kf - 50_000 * j).points))
            with cams:
                scene.cameras(t_kf)
            with ann:
                scene.annotations(t_kf)
            n_kf += 1
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {n_kf} keyframes at {H}x{W}")
    print(f"# scenes: {', '.join(conditions)}; {np.mean(n_points):.0f} lidar points per sweep")
    print("| part | CPU s per keyframe | wall s per keyframe |")
    print("|---|---|---|")
    rows = [
        ("10 lidar sweeps", lidar),
        ("6 cameras", cams),
        ("annotations + visibility", ann),
    ]
    for name, c in rows:
        print(f"| {name} | {c.cpu / n_kf:.3f} | {c.wall / n_kf:.3f} |")
    total_cpu = sum(c.cpu for _, c in rows) / n_kf
    total_wall = sum(c.wall for _, c in rows) / n_kf
    print(f"| **keyframe total** | **{total_cpu:.3f}** | **{total_wall:.3f}** |")
    print(f"| (lidar, one sweep) | {lidar.cpu / n_kf / 10:.3f} | {lidar.wall / n_kf / 10:.3f} |")
    per_scene = (build.cpu / args.scenes, build.wall / args.scenes)
    print(f"| (scene construction, once per scene) | {per_scene[0]:.3f} | {per_scene[1]:.3f} |")


if __name__ == "__main__":
    main()
