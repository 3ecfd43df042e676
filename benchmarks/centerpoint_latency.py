r"""CenterPoint latency per sweep, stage by stage: torch FP32 vs ONNX Runtime FP32 (vs ORT INT8).

Runs each backend on the same frames, round-robin (so that they share the machine's load), after
``--warmup`` frames, on one thread by default, and prints markdown tables for docs/benchmarks.md:

* per stage, median ms: ``voxelize`` (points -> voxels), ``pfn inputs`` (pillar feature
  augmentation), ``pfn`` (pillar feature net incl. the max per pillar), ``scatter`` (pillars ->
  BEV canvas), ``dense`` (2-D backbone + head), ``decode`` (top-k, boxes, NMS); the voxel variant
  has ``encoder`` (mean VFE + spconv) in place of the three pillar stages;
* end to end: ``detect(frame)`` as the lidar node calls it, p50 / p95 (timed separately from the
  stage run, so it also shows the stages' timer overhead is negligible).

The stages call exactly what each detector's ``run_network`` calls (the point-layout host path
when the detector has it, else the padded one), so the same script, copied into an older tree,
measures that tree's path. Frames: ``--data`` (nuScenes-format split, ``nsweeps`` of the model) or
synthetic sweeps of ``--points`` points (``export_lidar.example_frame``).

    nice -n 10 .venv/bin/python benchmarks/centerpoint_latency.py --ckpt weights/centerpoint_pillar_cpu.pt \
        --int8 .cache/bench/speed/int8 --data .cache/bench/cp_val --frames 20 --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.models.centerpoint.decode import decode
from qd_perception.models.centerpoint.head import unflatten_outputs
from qd_perception.runtime.centerpoint import (
    OrtCenterPointDetector,
    TorchCenterPointDetector,
    load_checkpoint,
)
from qd_perception.train.export_lidar import example_frame, export

#: ``--clock``: wall time, or the CPU time of this process (all its threads). On a shared machine
#: the CPU clock leaves out the time the process waited for a core, which the wall clock counts.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = time.perf_counter

PILLAR_STAGES = ("voxelize", "pfn inputs", "pfn", "scatter", "dense", "decode")
VOXEL_STAGES = ("voxelize", "encoder", "dense", "decode")


def _pillars_torch(model, vox):
    """The torch detector's PFN: yields after the inputs and after the PFN."""
    pfn = model.pfn
    if hasattr(pfn, "supports_points") and pfn.supports_points():
        feats = model.pillar_point_inputs(vox)
        yield
        yield pfn.forward_points(feats, vox.point_voxel, vox.num_points, vox.max_points)
    else:
        feats = model.pillar_inputs(vox)
        yield
        yield pfn(feats)


def _pillars_ort(det, vox):
    if getattr(det, "pfn_points", None) is not None:
        feats = det.model.pillar_point_inputs(vox).numpy()
        yield
        yield det._pfn_pillars(feats, vox)
    else:
        feats = np.ascontiguousarray(det.model.pillar_inputs(vox).numpy())
        yield
        yield torch.from_numpy(det.pfn.run(None, {"pillar_points": feats})[0])


def stage_times(det, frame) -> list[float]:
    """ms per stage (``PILLAR_STAGES`` or ``VOXEL_STAGES``) of one frame through ``det``."""
    cfg, model = det.cfg, det.model
    is_ort = isinstance(det, OrtCenterPointDetector)
    marks = [CLOCK()]
    with torch.inference_mode():
        vox = det.preprocess(frame)
        marks.append(CLOCK())
        if cfg.variant == "pillar":
            steps = _pillars_ort(det, vox) if is_ort else _pillars_torch(model, vox)
            next(steps)
            marks.append(CLOCK())
            pillars = next(steps)
            marks.append(CLOCK())
            canvas = getattr(det, "canvas", None)  # the detector's reused canvas, where it has one
            bev = model.scatter(pillars, vox) if canvas is None else model.scatter(pillars, vox, canvas)
        else:
            bev = model.encode(vox)
        marks.append(CLOCK())
        if is_ort:
            flat = det.dense.run(None, {"bev": np.ascontiguousarray(bev.numpy())})
            outs = unflatten_outputs(
                [torch.from_numpy(x) for x in flat], len(cfg.head.tasks), cfg.head.with_velocity
            )
        else:
            outs = model.forward_dense(bev)
        marks.append(CLOCK())
        decode(outs, det.cfg)
        marks.append(CLOCK())
    return [(b - a) * 1e3 for a, b in itertools.pairwise(marks)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, type=Path)
    ap.add_argument(
        "--export", type=Path, default=None, help="FP32 export dir (default: export to a temp dir)"
    )
    ap.add_argument(
        "--int8", type=Path, default=None, help="`quantize lidar` artefact of the same checkpoint"
    )
    ap.add_argument("--data", type=Path, default=None, help="nuScenes-format dataroot (default: synthetic)")
    ap.add_argument("--version", default="v1.0-synthetic")
    ap.add_argument("--split", default="val")
    ap.add_argument("--points", type=int, default=30000, help="points per synthetic sweep (no --data)")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    args = ap.parse_args()
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    _, model, _ = load_checkpoint(args.ckpt)
    cfg = model.cfg
    n = args.frames + args.warmup
    if args.data:
        from qd_perception.data.nuscenes import NuScenesReader

        reader = NuScenesReader(args.data, args.version, args.split, nsweeps=cfg.nsweeps, load_images=False)
        # skip the first keyframes: a scene's first sweeps have no history to merge
        frames = [reader[i] for i in range(cfg.nsweeps, min(len(reader), n + cfg.nsweeps))]
        source = f"{args.data} ({args.split}, {cfg.nsweeps} sweeps merged)"
    else:
        frames = [example_frame(cfg, args.points, seed=100 + i) for i in range(n)]
        source = f"synthetic sweeps of {args.points} points"
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = args.export
        if export_dir is None:
            export_dir = Path(tmp) / "fp32"
            export(model, export_dir, frames[0])
        dets = {
            "torch FP32": TorchCenterPointDetector(model),
            "ORT FP32": OrtCenterPointDetector(export_dir, threads=args.threads),
        }
        if args.int8:
            dets["ORT INT8"] = OrtCenterPointDetector(args.int8, threads=args.threads)
        stages = PILLAR_STAGES if cfg.variant == "pillar" else VOXEL_STAGES
        per_stage = {k: [] for k in dets}
        e2e = {k: [] for k in dets}
        for i, f in enumerate(frames):
            for name, det in dets.items():
                st = stage_times(det, f)
                t0 = CLOCK()
                det.detect(f)
                dt = (CLOCK() - t0) * 1e3
                if i >= args.warmup:
                    per_stage[name].append(st)
                    e2e[name].append(dt)
    pts = np.median([len(f.points) for f in frames])
    load = os.getloadavg()
    print(
        f"\n`{cfg.name}` ({cfg.variant}): {len(frames) - args.warmup} frames of {source}, "
        f"{pts:.0f} points/frame (median), {args.threads} thread(s), {args.clock} clock, load average "
        f"{load[0]:.1f} / {load[1]:.1f} (1 / 5 min) on {os.cpu_count()} cores\n"
    )
    net = slice(1, len(stages) - 1)  # what run_network does: all but voxelize and decode
    print("| backend | " + " | ".join(stages) + " | network | detect() p50 | detect() p95 |")
    print("|---|" + "---|" * (len(stages) + 3))
    for name in dets:
        a = np.asarray(per_stage[name])
        med = np.median(a, axis=0)
        network = np.median(a[:, net].sum(1))
        e = np.asarray(e2e[name])
        print(
            f"| {name} | "
            + " | ".join(f"{x:.1f}" for x in med)
            + f" | {network:.1f} | {np.median(e):.1f} | {np.percentile(e, 95):.1f} |"
        )


if __name__ == "__main__":
    main()
