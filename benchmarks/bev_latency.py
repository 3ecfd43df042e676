"""Camera BEV detector latency on this CPU: torch (FP32) vs ONNX Runtime (FP32), same model.

Runs ``--frames`` consecutive synthetic frames (random images on the nuScenes-like rig, so the
temporal path is exercised) through both backends after ``--warmup`` frames and prints markdown
rows for docs/benchmarks.md::

    nice -n 10 .venv/bin/python benchmarks/bev_latency.py --model weights/bevformer_nano.pt --threads 1
    nice -n 10 .venv/bin/python benchmarks/bev_latency.py --preset tiny --frames 5 --threads 2

``--preset`` uses untrained weights (latency does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from qd_perception.eval.latency import latency_stats
from qd_perception.models.bevformer import BEVFormer, preset
from qd_perception.models.bevformer.checkpoint import load_checkpoint
from qd_perception.runtime.bev import OrtBEVDetector, TorchBEVDetector
from qd_perception.train.export_bev import example_frames, export_onnx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint from `train bev`")
    src.add_argument("--preset", help="nano | tiny | small | base (random weights)")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.model) if args.model else BEVFormer(preset(args.preset)).eval()
    cfg = model.cfg
    frames = example_frames(cfg, args.warmup + args.frames)
    with tempfile.TemporaryDirectory(prefix="qd_bev_bench_") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "bevformer.onnx")
        dets = {
            "torch FP32": TorchBEVDetector(model),
            "ONNX Runtime FP32": OrtBEVDetector(onnx_path, threads=args.threads),
        }
        H, W = cfg.image_size
        cpu = platform.processor() or platform.machine()
        print(
            f"# {cpu}, {os.cpu_count()} cores, {args.threads} thread(s), load avg {os.getloadavg()[0]:.1f}; "
            f"BEVFormer-{cfg.name} {H}x{W} x6, BEV {cfg.bev_h}x{cfg.bev_w}"
        )
        print("| model | backend | frames | inference p50 ms | p95 ms | end-to-end p50 ms |")
        print("|---|---|---|---|---|---|")
        for name, det in dets.items():
            inf, e2e = [], []
            for i, f in enumerate(frames):
                det.detect(f)
                if i >= args.warmup:
                    t = det.last_timing
                    inf.append(t.inference_ms)
                    e2e.append(t.preprocess_ms + t.inference_ms + t.postprocess_ms)
            s, e = latency_stats(np.asarray(inf)), latency_stats(np.asarray(e2e))
            print(
                f"| BEVFormer-{cfg.name} | {name} | {s.n} | {s.p50:.1f} | {s.p95:.1f} | {e.p50:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
