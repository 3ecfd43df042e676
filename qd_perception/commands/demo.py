"""``qd-perception demo --out DIR``: the main job, end to end on a synthetic scene.

1. generates a small synthetic scene as a nuScenes-format data set plus its rosbag2
   (``DIR/data``; reused when it exists, so a second run only replays);
2. replays the bag with its original timing through the full node graph (``--launch bev``: every
   detector node that can start here — a detector without its model artefact is left out with
   the reason; give models with ``--set bev_detector.detector.model_path=...``);
3. prints the metrics (devkit NDS/mAP, streaming AP, latency percentiles, frames in/out/dropped)
   and writes ``DIR/replay/metrics.json`` and the BEV picture of detections vs ground truth,
   ``DIR/replay/bev.png``.

``make demo`` runs ``python -m qd_perception.cli demo --out .cache/demo``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"resolution must be HxW, e.g. 450x800, got {text!r}") from e
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (data/, replay/)")
    p.add_argument("--samples", type=int, default=6, help="keyframes of the scene (2 Hz)")
    p.add_argument("--resolution", type=_resolution, default=(450, 800), help="camera HxW")
    p.add_argument("--seed", type=int, default=2026, help="world seed (a scene no model trained on)")
    p.add_argument("--launch", default="bev", help="node graph (bev: every detector that exists)")
    # Real time by default: both detectors run their quantized ONNX Runtime artefacts, one core
    # each; on a 2-core CPU some frames are dropped (counted in the summary); --rate 0.2 scores all.
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (1.0 = real time)")
    p.add_argument("--set", nargs="*", default=[], metavar="NODE.PARAM=VALUE", help="node parameters")
    p.add_argument("--workers", type=int, default=2, help="processes for the scene generation")


def run(args: argparse.Namespace) -> int:
    from qd_perception.commands.replay import ReplayOptions, print_summary, replay
    from qd_perception.sim.generate import GenerateConfig, generate, scene_name

    t0 = time.time()
    data = args.out / "data"
    cfg = GenerateConfig(
        scenes=1,
        samples=args.samples,
        seed=args.seed,
        resolution=tuple(args.resolution),
        bag=True,
        workers=args.workers,
        val_fraction=0.0,
    )
    bag = data / "bags" / scene_name(0)
    if bag.exists() and (data / cfg.version).exists():
        print(f"demo: reusing the synthetic scene in {data}")
    else:
        if data.exists():
            print(f"demo: {data} is incomplete (an interrupted run?); remove it and rerun", file=sys.stderr)
            return 1
        print(f"demo: generating one synthetic scene ({args.samples} keyframes, {args.resolution} images)")
        generate(cfg, data)
    t_sim = time.time() - t0
    print(f"demo: replaying {bag} through the '{args.launch}' graph at rate {args.rate}")
    try:
        # the detector nodes split the cores (ros.graph.core_share) unless --set gives threads
        opts = ReplayOptions((bag,), args.out / "replay", args.launch, args.rate, overrides=tuple(args.set))
        m = replay(opts)
    except (FileNotFoundError, ValueError, KeyError, TimeoutError, RuntimeError) as e:
        print(f"demo: replay failed: {e}", file=sys.stderr)
        return 1
    print()
    print_summary(m)
    for s in m["skipped_nodes"]:
        print(f"  (left out) {s}")
    print(
        f"demo: done in {time.time() - t0:.0f} s (scene {t_sim:.0f} s, replay {m['wall_s']:.0f} s); "
        f"metrics {args.out / 'replay' / 'metrics.json'}, picture {args.out / 'replay' / 'bev.png'}"
    )
    return 0
