"""CenterPoint latency per sweep: torch FP32 vs ONNX Runtime FP32, same frames, same decode.

Runs both backends on the first ``--frames`` keyframes of a split (multi-sweep input as the
model's config says), after ``--warmup`` frames, and prints a markdown table for
docs/benchmarks.md (pre-processing = voxelisation (+ PFN input augmentation), network, decode+NMS).

    nice -n 10 .venv/bin/python benchmarks/centerpoint_latency.py --ckpt weights/centerpoint_pillar_cpu.pt \
        --export /tmp/cp_export --data /tmp/cp_val --frames 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.data.nuscenes import NuScenesReader
from qd_perception.runtime.centerpoint import OrtCenterPointDetector, TorchCenterPointDetector


def measure(det, frames, warmup: int) -> dict[str, np.ndarray]:
    rows = []
    for i, f in enumerate(frames):
        det.detect(f)
        if i >= warmup:
            t = det.last_timing
            rows.append((t.preprocess_ms, t.inference_ms, t.postprocess_ms))
    a = np.array(rows)
    return {"pre": a[:, 0], "net": a[:, 1], "post": a[:, 2], "total": a.sum(1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, type=Path)
    ap.add_argument("--export", required=True, type=Path, help="export dir of the same checkpoint")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--version", default="v1.0-synthetic")
    ap.add_argument("--split", default="val")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tdet = TorchCenterPointDetector.from_checkpoint(args.ckpt)
    odet = OrtCenterPointDetector(args.export, threads=args.threads)
    reader = NuScenesReader(args.data, args.version, args.split, nsweeps=tdet.cfg.nsweeps, load_images=False)
    frames = [reader[i] for i in range(min(len(reader), args.frames + args.warmup))]
    pts = np.mean([len(f.points) for f in frames])
    res = {
        "torch FP32": measure(tdet, frames, args.warmup),
        "ONNX Runtime FP32": measure(odet, frames, args.warmup),
    }
    print(
        f"{tdet.cfg.name}: {len(frames) - args.warmup} frames, {pts:.0f} points/frame "
        f"({tdet.cfg.nsweeps} sweeps), {args.threads} thread(s)"
    )
    print("| backend | pre-process ms | network ms | decode+NMS ms | total ms p50 | total ms p95 |")
    print("|---|---|---|---|---|---|")
    for name, r in res.items():
        print(
            f"| {name} | {np.median(r['pre']):.1f} | {np.median(r['net']):.1f} | {np.median(r['post']):.1f} "
            f"| {np.median(r['total']):.1f} | {np.percentile(r['total'], 95):.1f} |"
        )


if __name__ == "__main__":
    main()
