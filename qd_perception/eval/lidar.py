"""``qd-perception eval lidar --model CKPT|EXPORT_DIR --data DIR --out DIR``: nuScenes metrics.

``--model`` is a training checkpoint (torch FP32 backend) or an export directory / one of its
``.onnx`` files (ONNX Runtime backend; voxel models run their spconv encoder in torch). Every
sample of the split is detected, then scored by the real nuscenes-devkit through
:func:`qd_perception.eval.nuscenes_eval.evaluate`, which writes ``metrics.json`` into ``--out``.
Per-frame latency (pre-processing, network, decode) goes to ``latency.json`` beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qd_perception.data.types import Detections
from qd_perception.fileio import atomic_write_json
from qd_perception.runtime.centerpoint import (
    CenterPointPipeline,
    OrtCenterPointDetector,
    TorchCenterPointDetector,
)


def load_detector(model: str | Path, score_threshold: float | None = None) -> CenterPointPipeline:
    """Checkpoint (``.pt``/``.pth``) -> torch detector; export dir or ``.onnx`` -> ONNX Runtime."""
    p = Path(model)
    if not p.exists():
        raise FileNotFoundError(f"model not found: {p}")
    if p.is_dir() or p.suffix == ".onnx":
        return OrtCenterPointDetector(p, score_threshold)
    return TorchCenterPointDetector.from_checkpoint(p, score_threshold)


def predict(
    detector: CenterPointPipeline, reader, max_samples: int = 0
) -> tuple[dict[str, Detections], dict[str, list[float]]]:
    """Run ``detector`` over a reader's samples -> (token -> detections, timings in ms)."""
    preds: dict[str, Detections] = {}
    times: dict[str, list[float]] = {"preprocess_ms": [], "inference_ms": [], "postprocess_ms": []}
    n = len(reader) if not max_samples else min(max_samples, len(reader))
    for i in tqdm(range(n), desc="detect", unit="frame"):
        frame = reader[i]
        preds[frame.token] = detector.detect(frame)
        t = detector.last_timing
        times["preprocess_ms"].append(t.preprocess_ms)
        times["inference_ms"].append(t.inference_ms)
        times["postprocess_ms"].append(t.postprocess_ms)
    return preds, times


def latency_summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    total = np.sum([np.asarray(v) for v in times.values()], axis=0)
    out = {}
    for k, v in {**times, "total_ms": total}.items():
        a = np.asarray(v, float)[1:] if len(v) > 1 else np.asarray(v, float)  # drop the warm-up frame
        out[k] = {
            "mean": float(a.mean()),
            "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)),
        }
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="checkpoint, export dir or .onnx")
    parser.add_argument("--data", required=True, type=Path, help="nuScenes-format dataroot")
    parser.add_argument("--version", default="v1.0-synthetic")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", required=True, type=Path, help="output folder (metrics.json, latency.json)")
    parser.add_argument("--score-threshold", type=float, default=None, help="override the model's")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")


def run(args: argparse.Namespace) -> int:
    """CLI entry: bad input gets one clear line on stderr (exit 2) instead of a traceback."""
    import sys

    from qd_perception.config import ConfigError
    from qd_perception.data.nuscenes import DatasetError

    try:
        return _run(args)
    except (ConfigError, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from qd_perception.data.nuscenes import NuScenesReader
    from qd_perception.eval.nuscenes_eval import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    detector = load_detector(args.model, args.score_threshold)
    cfg = detector.cfg
    reader = NuScenesReader(args.data, args.version, args.split, nsweeps=cfg.nsweeps, load_images=False)
    preds, times = predict(detector, reader)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(args.data, args.version, args.split, preds, out)
    lat = {
        "model": str(args.model),
        "backend": type(detector).__name__,
        "frames": len(preds),
        "torch_threads": torch.get_num_threads(),
        **latency_summary(times),
    }
    atomic_write_json(out / "latency.json", lat, indent=2)
    print(metrics.summary())
    print(f"latency per frame: {lat['total_ms']['mean']:.1f} ms mean ({lat['backend']})")
    print(f"wrote {out / 'metrics.json'} and {out / 'latency.json'}")
    return 0
