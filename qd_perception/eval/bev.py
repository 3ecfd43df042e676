"""``qd-perception eval bev --model CKPT|ONNX --data DIR --out DIR``: nuScenes metrics (devkit) and
latency of the camera BEV detector.

Frames are run in scene/time order through one detector, so the temporal state (previous BEV)
is used exactly as online; it resets at every scene start. Writes into ``--out`` the devkit files
(``results_nusc.json``, ``metrics_summary.json``, ``metrics.json``), ``latency.json`` and, with
``--pictures N``, N pictures of predicted (dashed) and ground-truth boxes on the six images and in
BEV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from qd_perception.fileio import atomic_write_json

CAMERA_ONLY_META = {
    "use_camera": True,
    "use_lidar": False,
    "use_radar": False,
    "use_map": False,
    "use_external": False,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint (.pt, torch) or exported bevformer.onnx (ORT)")
    p.add_argument("--data", required=True, help="nuScenes-format dataroot")
    p.add_argument("--version", default="v1.0-synthetic")
    p.add_argument("--split", default="val")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-threshold", type=float, default=None, help="default: the model config's")
    p.add_argument("--pictures", type=int, default=1, help="pictures of predictions to draw")
    p.add_argument("--picture-out", default="", help="also copy the first picture here (e.g. docs/images/)")
    p.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime CPU threads (0 = default)")


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, indent=2)


def run(args: argparse.Namespace) -> int:
    import shutil

    import torch
    from tqdm import tqdm

    from qd_perception.data.nuscenes import NuScenesReader
    from qd_perception.eval.latency import latency_stats
    from qd_perception.eval.nuscenes_eval import evaluate
    from qd_perception.runtime.bev import load_bev_detector

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    det = load_bev_detector(args.model, args.score_threshold, threads=args.threads)
    reader = NuScenesReader(args.data, args.version, args.split, nsweeps=0, load_images=True)
    n = len(reader)
    # pictures: the middle keyframe of the first scenes (history in use); lidar only for the drawing
    picture_idx: list[int] = []
    scenes: dict[str, list[int]] = {}
    for i, tok in enumerate(reader.sample_tokens):
        scenes.setdefault(reader.scene_of(tok), []).append(i)
    for idx in list(scenes.values())[: args.pictures]:
        picture_idx.append(idx[len(idx) // 2])
    preds = {}
    infer_ms, total_ms = [], []
    pictures: list[Path] = []
    for i in tqdm(range(n), desc=f"eval bev ({type(det).__name__})", unit="frame"):
        frame = reader[i]
        d = det.detect(frame)
        preds[frame.token] = d
        t = det.last_timing
        infer_ms.append(t.inference_ms)
        total_ms.append(t.preprocess_ms + t.inference_ms + t.postprocess_ms)
        if i in picture_idx:
            pictures.append(_picture(args, frame.token, d, out, len(pictures)))
    if sum(len(d) for d in preds.values()) == 0:
        # the devkit cannot score an empty submission (it crashes on the box type); with no
        # prediction at all mAP = 0 and every TP error is 1, hence NDS = 0
        print(f"no detection above the score threshold {det.score_threshold} in {n} frames: mAP 0, NDS 0")
        _write_json(out / "metrics.json", {"nds": 0.0, "map": 0.0, "num_samples": n, "num_predictions": 0})
        summary = "NDS 0.0000  mAP 0.0000 (no predictions)"
    else:
        summary = evaluate(args.data, args.version, args.split, preds, out, meta=CAMERA_ONLY_META).summary()
    lat = {
        "backend": type(det).__name__,
        "model": str(args.model),
        "threads": args.threads or "default",
        "inference_ms": latency_stats(infer_ms[1:] or infer_ms).to_dict(),  # first call warms up
        "end_to_end_ms": latency_stats(total_ms[1:] or total_ms).to_dict(),
        "temporal_resets": det.resets,
        "frames": n,
    }
    _write_json(out / "latency.json", lat)
    if pictures and args.picture_out:
        dst = Path(args.picture_out)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pictures[0], dst)
    print(summary)
    i50 = lat["inference_ms"]["p50"]
    e50 = lat["end_to_end_ms"]["p50"]
    print(f"latency p50: inference {i50:.1f} ms, end-to-end {e50:.1f} ms ({lat['backend']})")
    print(f"wrote {out}")
    return 0


def _picture(args: argparse.Namespace, token: str, pred, out: Path, k: int) -> Path:
    """Boxes on the six images and in BEV (with the keyframe's lidar sweep as backdrop)."""
    from qd_perception.data.nuscenes import NuScenesReader
    from qd_perception.eval.viz import plot_frame, save_figure

    reader = NuScenesReader(args.data, args.version, args.split, nsweeps=1, load_images=True)
    frame = reader.frame(token)
    keep = np.asarray(pred.scores) >= 0.3
    shown = type(pred)(pred.boxes[keep], pred.labels[keep], pred.scores[keep])
    title = (
        f"{Path(args.model).name}: predictions (dashed, score >= 0.3) vs ground truth (solid), "
        f"sample {token[:8]}"
    )
    return save_figure(plot_frame(frame, shown, title=title), out / f"predictions_{k}.png")
