r"""Camera BEV detector latency on this CPU: torch FP32, ONNX Runtime FP32 and quantized artefacts.

Every backend sees the same frames, **interleaved** (frame k through every backend, then frame
k+1), so a change of the machine's load hits all of them alike; each keeps its own temporal state.
Frames are consecutive keyframes of a data set (``--data``, real images: the two-stage queries
follow the real heatmap) or synthetic random frames. Prints the CPU line (flags, load) and
markdown rows for docs/benchmarks.md, with each backend's p50 as a ratio to torch FP32::

    python -m benchmarks.bev_latency --model weights/bevformer_nano.pt --threads 1
    python -m benchmarks.bev_latency --model weights/bevformer_nano.pt --data .cache/bev/val \\
        --artefact W4A6=weights/bevformer_nano_w4a6_ort --threads 2
    python -m benchmarks.bev_latency --preset tiny --frames 5 --threads 2

``--preset`` uses untrained weights (latency does not depend on them).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cpu_line, label_path
from qd_perception.eval.latency import latency_stats
from qd_perception.models.bevformer import BEVFormer, preset
from qd_perception.models.bevformer.checkpoint import load_checkpoint
from qd_perception.runtime.bev import OrtBEVDetector, TorchBEVDetector
from qd_perception.train.export_bev import example_frames, export_onnx


def _frames(args, cfg) -> list:
    n = args.warmup + args.frames
    if args.data is None:
        return example_frames(cfg, n)
    from qd_perception.data.nuscenes import NuScenesReader

    reader = NuScenesReader(args.data, args.version, args.split, nsweeps=0, load_images=True)
    return [reader[i] for i in range(min(n, len(reader)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint from `train bev`")
    src.add_argument("--preset", help="nano | tiny | small | base (random weights)")
    ap.add_argument("--artefact", type=label_path, action="append", default=[], metavar="NAME=DIR",
                    help="`export bev` / `quantize bev` directory; repeatable")  # fmt: skip
    ap.add_argument("--data", type=Path, default=None, help="nuScenes-format dataroot (default: synthetic)")
    ap.add_argument("--version", default="v1.0-synthetic")
    ap.add_argument("--split", default="val")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.model) if args.model else BEVFormer(preset(args.preset)).eval()
    cfg = model.cfg
    frames = _frames(args, cfg)
    with tempfile.TemporaryDirectory(prefix="qd_bev_bench_") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "bevformer.onnx")
        dets = {
            "torch FP32": TorchBEVDetector(model),
            "ONNX Runtime FP32": OrtBEVDetector(onnx_path, threads=args.threads),
            **{f"ONNX Runtime {n}": OrtBEVDetector(p, threads=args.threads) for n, p in args.artefact},
        }
        inf: dict[str, list[float]] = {k: [] for k in dets}
        e2e: dict[str, list[float]] = {k: [] for k in dets}
        for i, f in enumerate(frames):
            for name, det in dets.items():
                det.detect(f)
                if i >= args.warmup:
                    t = det.last_timing
                    inf[name].append(t.inference_ms)
                    e2e[name].append(t.preprocess_ms + t.inference_ms + t.postprocess_ms)
        H, W = cfg.image_size
        source = args.data or "synthetic random frames"
        print(f"# {cpu_line()}; {args.threads} thread(s); BEVFormer-{cfg.name} {H}x{W} x6, "
              f"BEV {cfg.bev_h}x{cfg.bev_w}; frames of {source}, interleaved")  # fmt: skip
        print("| model | backend | frames | inference p50 ms | p95 ms | end-to-end p50 ms | p50 / torch |")
        print("|---|---|---|---|---|---|---|")
        base = latency_stats(np.asarray(inf["torch FP32"])).p50
        for name in dets:
            s, e = latency_stats(np.asarray(inf[name])), latency_stats(np.asarray(e2e[name]))
            print(
                f"| BEVFormer-{cfg.name} | {name} | {s.n} | {s.p50:.1f} | {s.p95:.1f} | {e.p50:.1f} "
                f"| {s.p50 / base:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
