"""Replay benchmark: a synthetic scene's rosbag2 through the real ``lidar`` graph at several rates.

    python -m benchmarks.replay_lidar [--data .cache/bench/replay] [--scenes 3] [--samples 8]
        [--rates 1.0 0.5]

Generates the scenes with their bags (reused when present), runs ``qd-perception replay --launch
lidar`` over all of them (scored together) at each rate and prints the markdown rows for
docs/benchmarks.md (issue 3): devkit NDS / mAP of the keyframes, streaming NDS / mAP, latency
percentiles in wall-clock ms (receive time at the recorder minus the time the input was
published), frames in / out / dropped, and the machine's load average when the replay started (the
2 cores are shared; drops depend on it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(".cache/bench/replay"))
    p.add_argument("--scenes", type=int, default=3)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--resolution", default="450x800")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.5])
    p.add_argument(
        "--detector",
        choices=("classical", "centerpoint"),
        default="classical",
        help="classical: the baseline on 1 sweep; centerpoint: the node's default model on 5 sweeps",
    )
    args = p.parse_args(argv)

    from qd_perception.commands.replay import ReplayOptions, replay
    from qd_perception.sim.generate import GenerateConfig, generate, scene_name

    h, w = (int(v) for v in args.resolution.split("x"))
    bags = tuple(args.data / "bags" / scene_name(i) for i in range(args.scenes))
    if not all(b.exists() for b in bags):
        cfg = GenerateConfig(
            scenes=args.scenes, samples=args.samples, seed=args.seed, resolution=(h, w), bag=True
        )
        generate(cfg, args.data)
    rows = []
    for rate in args.rates:
        load = os.getloadavg()[0]
        m = replay(
            ReplayOptions(
                bags=bags,
                out=args.data / f"replay_rate{rate:g}_{args.detector}",
                launch="lidar",
                rate=rate,
                overrides=(
                    f"lidar_detector.detector.name={args.detector}",
                    f"lidar_detector.sweeps.max_sweeps={1 if args.detector == 'classical' else 5}",
                ),
            )
        )
        lat = m["latency_wall_ms"]
        rows.append(
            f"| {args.scenes} x {args.samples} | {rate:g} | {m['frames_in']} | {m['frames_out']} | "
            f"{m['dropped']} | {m['nds']:.3f} | {m['map']:.3f} | {m['streaming_nds']:.3f} | "
            f"{m['streaming_map']:.3f} | {lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f} | "
            f"{load:.1f} |"
        )
    print(
        "| scenes x keyframes | rate | frames in | out | dropped | NDS | mAP | streaming NDS "
        "| streaming mAP | latency p50 / p95 / p99 (wall ms) | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
