"""``qd-perception quantize lidar``: post-training quantization of CenterPoint (LiDAR-PTQ and
calibrator baselines) into a deployable INT8 artefact.

    qd-perception quantize lidar --model CKPT --calib DIR --method lidar_ptq --bits w8a8 --out ARTEFACT

``--calib`` is a calibration set (calibration node / ``calibrate``) or a nuScenes-format dataroot
(frames drawn evenly from ``--split``). The artefact is an export directory the lidar node and
``eval lidar`` load as ONNX Runtime INT8 (``--target ort``, default) or that ``TrtDetector``
builds an engine from (``--target trt``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TARGETS: tuple[str, ...] = ("lidar",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from qd_perception.quant.lidar import METHODS

    sub = parser.add_subparsers(dest="target_model", metavar="lidar", required=True)
    p = sub.add_parser("lidar", help="CenterPoint (pillar or voxel)")
    p.add_argument("--model", required=True, type=Path, help="checkpoint from `train lidar`")
    p.add_argument("--calib", required=True, type=Path, help="calibration set dir or nuScenes dataroot")
    p.add_argument("--method", choices=METHODS, default="lidar_ptq")
    p.add_argument("--bits", default="w8a8", help="wXaY, e.g. w8a8, w4a8")
    p.add_argument("--target", choices=("ort", "trt"), default="ort", help="deployment runtime")
    p.add_argument("--config", type=Path, default=None, help="LiDAR-PTQ YAML (config/quant/lidar_ptq.yaml)")
    p.add_argument("--max-frames", type=int, default=64, help="calibration frames used (0 = all)")
    p.add_argument("--version", default="v1.0-synthetic", help="data set version (dataroot input)")
    p.add_argument("--split", default="train", help="data set split (dataroot input)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--out", required=True, type=Path, help="artefact directory")


def run(args: argparse.Namespace) -> int:
    import torch

    from qd_perception.quant.lidar import (
        calibration_frames,
        load_ptq_config,
        quantize_centerpoint,
        write_artefact,
    )
    from qd_perception.runtime.centerpoint import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg, model, _ = load_checkpoint(args.model)
    ptq_cfg = load_ptq_config(args.config)
    frames = calibration_frames(args.calib, cfg.nsweeps, args.max_frames, args.version, args.split)
    print(f"calibrating on {len(frames)} frames from {args.calib}")
    result = quantize_centerpoint(model, frames, args.method, args.bits, args.target, ptq_cfg)
    report = write_artefact(result, args.out, parity_frame=frames[0])
    print(json.dumps(report["quant"], indent=2))
    print(
        f"quantized ({args.method}, {args.bits}, {args.target}) in {result.seconds:.1f} s; "
        f"total {time.perf_counter() - t0:.1f} s; artefact in {args.out}"
    )
    return 0
