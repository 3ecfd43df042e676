"""LiDAR-PTQ ablation on CenterPoint: FP32 vs INT8 calibrators vs LiDAR-PTQ stage by stage.

For one trained checkpoint: evaluates the FP32 model, then the fake-quant torch model after each
PTQ variant — min-max, percentile, MSE, entropy, UH, and LiDAR-PTQ after each of its stages
(max-min, +grid, +TGPL, +AdaRound), plus LiDAR-PTQ at W4A8 — with the real nuscenes-devkit on
``--data``/``--split``, and prints the markdown table (mAP, NDS, gap to FP32, PTQ wall time) for
docs/benchmarks.md, and a bar chart PNG. Fake-quant torch and the ORT INT8 artefact agree to the
parity printed by ``quantize lidar`` (``export.json``); ``--ort-artefacts DIR`` also writes each final
model's ORT artefact and scores it (rows ``ORT ...``).

Error bars: ``--calib-seed S --calib-subset K`` calibrates on block K of a seeded permutation of the
calibration split (blocks of ``--calib-frames`` are disjoint), ``--work DIR`` keeps every row's
``results_nusc.json`` for ``benchmarks/quant_error_bars.py`` (paired bootstrap over val samples),
``--fp32-from DIR`` reuses an earlier FP32 scoring of the same checkpoint instead of re-running it.

    nice -n 10 .venv/bin/python benchmarks/quant_lidar_ablation.py --ckpt weights/centerpoint_pillar_cpu.pt \
        --data .cache/bench/cp_val --calib-split train --split val --config config/quant/lidar_ptq.yaml \
        --png docs/images/quant_lidar_ablation.png
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.data.nuscenes import NuScenesReader
from qd_perception.eval.lidar import predict
from qd_perception.eval.nuscenes_eval import evaluate
from qd_perception.quant.calib import ACT_PRESETS
from qd_perception.runtime.centerpoint import (
    CenterPointPipeline,
    OrtCenterPointDetector,
    TorchCenterPointDetector,
    load_checkpoint,
)
from qd_perception.train.quantize_lidar import (
    calibration_frames,
    load_ptq_config,
    quantize_centerpoint,
    write_artefact,
)

CALIBRATORS = tuple(ACT_PRESETS)  # minmax, percentile, mse, entropy, uh


def calibration_subset(
    path: Path, nsweeps: int, n: int, seed: int, subset: int, version: str, split: str
) -> tuple[list, list[str]]:
    """Block ``subset`` of ``n`` samples of a ``seed``-permutation of the split -> (frames, tokens).

    Blocks of one seed are disjoint, so K subsets give K independent calibration sets.
    """
    from qd_perception.data.nuscenes import NuScenesReader

    reader = NuScenesReader(path, version, split, nsweeps=nsweeps, load_images=False)
    perm = np.random.default_rng(seed).permutation(len(reader))
    if (subset + 1) * n > len(reader):
        raise SystemExit(
            f"--calib-subset {subset}: split {split!r} has {len(reader)} samples, "
            f"fewer than {(subset + 1) * n}"
        )
    idx = sorted(int(i) for i in perm[subset * n : (subset + 1) * n])
    frames = [reader[i] for i in idx]
    tokens = [reader.sample_tokens[i] for i in idx]
    return [f for f in frames if f.points is not None and len(f.points)], tokens


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
    ap.add_argument("--calib-seed", type=int, default=0, help="permutation seed for --calib-subset")
    ap.add_argument(
        "--calib-subset", type=int, default=-1,
        help="calibrate on block K of a seeded permutation (default -1: frames spread evenly over the split)",
    )  # fmt: skip
    ap.add_argument("--work", type=Path, default=None, help="keep each row's results/metrics here")
    ap.add_argument(
        "--fp32-from", type=Path, default=None, help="FP32 row dir of an earlier run (its metrics.json)"
    )
    ap.add_argument(
        "--ptq-final-only", action="store_true", help="score W8A8 LiDAR-PTQ after its last stage only"
    )
    ap.add_argument(
        "--ort-artefacts", type=Path, default=None,
        help="write each final INT8 model's ORT artefact here and score it with ONNX Runtime too",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg, model, ckpt = load_checkpoint(args.ckpt)
    reader = NuScenesReader(args.data, args.version, args.split, nsweeps=cfg.nsweeps, load_images=False)
    if args.calib_subset >= 0:
        frames, calib_tokens = calibration_subset(
            args.calib or args.data, cfg.nsweeps, args.calib_frames, args.calib_seed,
            args.calib_subset, args.version, args.calib_split,
        )  # fmt: skip
        print(f"calibration subset {args.calib_subset} (seed {args.calib_seed}): {calib_tokens}", flush=True)
    else:
        frames = calibration_frames(
            args.calib or args.data, cfg.nsweeps, args.calib_frames, args.version, args.calib_split
        )
    ptq_cfg = load_ptq_config(args.config)
    rows: list[tuple[str, float, float, float | None]] = []
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="quant_ablation_"))
    print(f"row outputs in {work}", flush=True)

    def score(name: str, m: torch.nn.Module | CenterPointPipeline, seconds: float | None) -> None:
        det = m if isinstance(m, CenterPointPipeline) else TorchCenterPointDetector(m)
        preds, _ = predict(det, reader, args.max_val)
        met = evaluate(
            args.data, args.version, args.split, preds, work / name, allow_missing=bool(args.max_val)
        )
        rows.append((name, met.map, met.nds, seconds))
        print(
            f"{name}: mAP {met.map:.4f} NDS {met.nds:.4f}" + (f" ({seconds:.1f} s PTQ)" if seconds else ""),
            flush=True,
        )

    def score_ort(name: str, r) -> None:
        """Export ``r`` as the deployable ORT artefact and score that (ONNX Runtime INT8)."""
        if args.ort_artefacts is None:
            return
        out = args.ort_artefacts / name.replace(" ", "_").replace(":", "")
        report = write_artefact(r, out, parity_frame=frames[0])
        print(f"{name}: artefact {out}, parity max |diff| {report.get('parity_max_abs_diff')}", flush=True)
        score(f"ORT {name}", OrtCenterPointDetector(out, threads=args.threads), None)

    if args.fp32_from:
        met = json.loads((args.fp32_from / "metrics.json").read_text())
        rows.append(("FP32", met["map"], met["nds"], None))
        print(f"FP32: mAP {met['map']:.4f} NDS {met['nds']:.4f} (from {args.fp32_from})", flush=True)
    else:
        score("FP32", model, None)
    for method in [m for m in args.methods.split(",") if m]:
        r = quantize_centerpoint(model, frames, method, "w8a8", "ort")
        score(f"INT8 {method}", r.model, r.seconds)
        score_ort(f"INT8 {method}", r)

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
        r = quantize_centerpoint(
            model, frames, "lidar_ptq", "w8a8", "ort", ptq_cfg, None if args.ptq_final_only else on_stage
        )
        if args.ptq_final_only:
            score("INT8 LiDAR-PTQ", r.model, r.seconds)
        for name, q, secs in snapshots:
            score(f"INT8 {name}", q, secs)
        score_ort("INT8 LiDAR-PTQ", r)
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
        score_ort("W4A8 LiDAR-PTQ", r)

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
