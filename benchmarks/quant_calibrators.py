"""Calibrators on CenterPoint's sparse BEV canvas: where each one clips, and what it costs.

Takes the input of the first 2-D backbone conv (the scattered pillar canvas, mostly empty cells)
of a CenterPoint over synthetic sweeps, runs every calibrator on it, and reports per bit width:
the clip (as a fraction of the max), the share of occupied cells empty, SQNR over the occupied
cells, and the relative error of the largest 0.1 % of values (the rare strong responses that
entropy calibration is known to clip). Prints a markdown table for docs/benchmarks.md.

    nice -n 10 .venv/bin/python benchmarks/quant_calibrators.py --frames 8 [--ckpt CKPT]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.models.build import build_model, load_model_file
from qd_perception.quant.calib import (
    EntropyCalibrator,
    MaxCalibrator,
    MSECalibrator,
    PercentileCalibrator,
    SparsityGridCalibrator,
    UnilateralHistogramCalibrator,
    occupied_values,
)
from qd_perception.quant.tensor_quant import fake_quant_affine, fake_quant_symmetric
from qd_perception.runtime.centerpoint import load_checkpoint
from qd_perception.train.export_lidar import example_frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=None, help="trained checkpoint (default: random init)")
    ap.add_argument(
        "--model-config", type=Path, default=Path("config/models/centerpoint_pillar_cpu.model.yaml")
    )
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--points", type=int, default=30000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.ckpt:
        cfg, model, _ = load_checkpoint(args.ckpt)
    else:
        _, cfg = load_model_file(args.model_config)
        torch.manual_seed(0)
        model = build_model("centerpoint", cfg).eval()
    bevs = []
    with torch.no_grad():
        for i in range(args.frames):
            f = example_frame(cfg, args.points, seed=i)
            bevs.append(model.encode(model.preprocess([torch.from_numpy(f.points)])))
    x = torch.cat(bevs)
    occ = occupied_values(x).reshape(-1)
    empty = 1 - occupied_values(x).shape[0] / (x.shape[0] * x.shape[2] * x.shape[3])
    top = occ.abs() >= torch.quantile(occ.abs()[:: max(1, occ.numel() // 200_000)], 0.999)
    print(
        f"\nBEV canvas of `{cfg.name}` ({'trained ' + str(args.ckpt) if args.ckpt else 'random init'}), "
        f"{args.frames} synthetic sweeps: {tuple(x.shape[1:])}, {100 * empty:.1f} % of cells empty, "
        f"min {float(x.min()):.3g}, max {float(x.max()):.3g}\n"
    )
    print("| bits | calibrator | clip / max | SQNR occupied (dB) | rel. error of top 0.1 % |")
    print("|---|---|---|---|---|")
    for bits in (8, 4):
        cals = {
            "max-min": MaxCalibrator(),
            "percentile 99.99": PercentileCalibrator(99.99),
            "MSE (histogram)": MSECalibrator(),
            "entropy (KL)": EntropyCalibrator(),
            "UH (asymmetric)": UnilateralHistogramCalibrator(),
            "sparsity grid": SparsityGridCalibrator(),
        }
        for name, c in cals.items():
            for b in bevs:
                c.collect(b)
            if isinstance(c, UnilateralHistogramCalibrator):
                lo, hi = c.compute_range(bits)
                xq = fake_quant_affine(occ, lo, hi, bits)
                clip = float(hi)
            else:
                amax = c.compute_amax(bits)
                xq = fake_quant_symmetric(occ, amax, bits)
                clip = float(amax)
            noise = float(((xq - occ) ** 2).sum())
            sqnr = 10 * math.log10(float((occ**2).sum()) / max(noise, 1e-30))
            rel_top = float((xq[top] - occ[top]).abs().sum() / occ[top].abs().sum())
            print(f"| {bits} | {name} | {clip / float(x.abs().max()):.3f} | {sqnr:.1f} | {rel_top:.3f} |")


if __name__ == "__main__":
    main()
