"""LiDAR-PTQ ablation on CenterPoint: FP32 vs INT8 calibrators vs LiDAR-PTQ stage by stage.

For one trained checkpoint: evaluates the FP32 model, then the fake-quant torch model after each
PTQ variant — min-max, percentile, MSE, entropy, UH, and LiDAR-PTQ after each of its stages
(max-min, +grid, +TGPL, +AdaRound), plus LiDAR-PTQ at W4A8 — with the real nuscenes-devkit on
``--data``/``--split``, and prints the markdown table (mAP, NDS, gap to FP32, PTQ wall time) for
docs/benchmarks.md, and a bar chart PNG. Fake-quant torch and the ORT INT8 artefact agree to the
parity printed by ``quantize lidar`` (``export.json``).

    nice -n 10 .venv/bin/python benchmarks/quant_lidar_ablation.py --ckpt weights/centerpoint_pillar_cpu.pt \
        --data /tmp/cp_val --calib-split train --split val --config config/quant/lidar_ptq.yaml \
        --png docs/images/quant_lidar_ablation.png
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.data.nuscenes import NuScenesReader
from qd_perception.eval.lidar import predict
from qd_perception.eval.nuscenes_eval import evaluate
from qd_perception.quant.lidar import calibration_frames, load_ptq_config, quantize_centerpoint
from qd_perception.runtime.centerpoint import TorchCenterPointDetector, load_checkpoint

CALIBRATORS = ("minmax", "percentile", "mse", "entropy", "uh")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="nuScenes-format dataroot")
    ap.add_argument("--version", default="v1.0-synthetic")
    ap.add_argument("--split", default="val", help="evaluation split")
    ap.add_argument("--calib", type=Path, default=None, help="calibration set (default: --data)")
    ap.add_argument("--calib-split", default="train")
    ap.add_argument("--calib-frames", type=int, default=32)
    ap.add_argument("--config", type=Path, default=Path("config/quant/lidar_ptq.yaml"))
    ap.add_argument("--methods", default=",".join(CALIBRATORS), help="comma list of calibrators")
    ap.add_argument("--no-w4", action="store_true", help="skip the W4A8 LiDAR-PTQ run")
    ap.add_argument("--w4-stages", action="store_true", help="score the W4A8 LiDAR-PTQ run after each stage")
    ap.add_argument("--no-lidar-ptq", action="store_true", help="skip the W8A8 LiDAR-PTQ stage-by-stage run")
    ap.add_argument("--max-val", type=int, default=0, help="evaluate only N samples (others count as misses)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg, model, ckpt = load_checkpoint(args.ckpt)
    reader = NuScenesReader(args.data, args.version, args.split, nsweeps=cfg.nsweeps, load_images=False)
    frames = calibration_frames(
        args.calib or args.data, cfg.nsweeps, args.calib_frames, args.version, args.calib_split
    )
    ptq_cfg = load_ptq_config(args.config)
    rows: list[tuple[str, float, float, float | None]] = []
    work = Path(tempfile.mkdtemp(prefix="quant_ablation_"))

    def score(name: str, m: torch.nn.Module, seconds: float | None) -> None:
        preds, _ = predict(TorchCenterPointDetector(m), reader, args.max_val)
        met = evaluate(
            args.data, args.version, args.split, preds, work / name, allow_missing=bool(args.max_val)
        )
        rows.append((name, met.map, met.nds, seconds))
        print(
            f"{name}: mAP {met.map:.4f} NDS {met.nds:.4f}" + (f" ({seconds:.1f} s PTQ)" if seconds else ""),
            flush=True,
        )

    score("FP32", model, None)
    for method in [m for m in args.methods.split(",") if m]:
        r = quantize_centerpoint(model, frames, method, "w8a8", "ort")
        score(f"INT8 {method}", r.model, r.seconds)

    stage_names = {
        "minmax": "LiDAR-PTQ: max-min",
        "grid": "+ sparsity grid",
        "tgpl": "+ TGPL",
        "adaround": "+ AdaRound",
    }
    t0 = time.perf_counter()
    snapshots: list[tuple[str, torch.nn.Module, float]] = []

    def on_stage(stage: str, q: torch.nn.Module) -> None:
        snapshots.append((stage_names[stage], copy.deepcopy(q), time.perf_counter() - t0))

    if not args.no_lidar_ptq:
        quantize_centerpoint(model, frames, "lidar_ptq", "w8a8", "ort", ptq_cfg, on_stage)
    for name, q, secs in snapshots:
        score(f"INT8 {name}", q, secs)
    if not args.no_w4:
        snapshots.clear()
        t0 = time.perf_counter()
        r = quantize_centerpoint(
            model, frames, "lidar_ptq", "w4a8", "ort", ptq_cfg, on_stage if args.w4_stages else None
        )
        if args.w4_stages:
            for name, q, secs in snapshots:
                score(f"W4A8 {name}", q, secs)
        else:
            score("W4A8 LiDAR-PTQ", r.model, r.seconds)

    fp_map, fp_nds = rows[0][1], rows[0][2]
    print(
        f"\nCheckpoint `{args.ckpt}` ({cfg.name}), eval {args.data} split {args.split}"
        f"{f' (first {args.max_val} samples)' if args.max_val else ''}, calibration {len(frames)} frames "
        f"({args.calib or args.data}, split {args.calib_split}), {args.threads} thread(s)\n"
    )
    print("| model | mAP | NDS | mAP gap to FP32 | NDS gap | PTQ wall s (cumulative) |")
    print("|---|---|---|---|---|---|")
    for name, m, n, s in rows:
        secs = "" if s is None else f"{s:.1f}"
        print(f"| {name} | {m:.4f} | {n:.4f} | {m - fp_map:+.4f} | {n - fp_nds:+.4f} | {secs} |")
    if "train_seconds" in ckpt:
        print(f"\nFP32 training took {ckpt['train_seconds']:.0f} s ({ckpt.get('epochs')} epochs).")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        names = [r[0] for r in rows]
        ax.bar(range(len(rows)), [r[1] for r in rows], color=["gray"] + ["C0"] * (len(rows) - 1))
        ax.axhline(fp_map, color="k", lw=0.8, ls="--", label="FP32")
        ax.set_xticks(range(len(rows)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("mAP")
        ax.set_title(f"CenterPoint {cfg.name}: PTQ methods (synthetic {args.split})")
        ax.legend()
        fig.tight_layout()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
