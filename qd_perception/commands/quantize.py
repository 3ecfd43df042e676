"""``qd-perception quantize lidar``: post-training quantization of CenterPoint (LiDAR-PTQ and
calibrator baselines) into a deployable INT8 artefact.

    qd-perception quantize lidar --model CKPT --calib DIR --method lidar_ptq --bits w8a8 --out ARTEFACT

``--calib`` is a calibration set (calibration node / ``calibrate``) or a nuScenes-format dataroot
(frames drawn evenly from ``--split``).

QAT (min-max init, then fine-tuning through the fake-quant graph on a *labelled* split) writes the
same artefact, ``quant.yaml`` with ``method: qat`` and its wall time:

    qd-perception quantize lidar --method qat --model CKPT --data DATAROOT --split train \
        --qat-epochs 1 --bits w4a8 --out ARTEFACT
 The artefact is an export directory the lidar node and
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
    from qd_perception.quant.config import ORT_WEIGHTS
    from qd_perception.quant.lidar import METHODS

    sub = parser.add_subparsers(dest="target_model", metavar="lidar", required=True)
    p = sub.add_parser("lidar", help="CenterPoint (pillar or voxel)")
    p.add_argument("--model", required=True, type=Path, help="checkpoint from `train lidar`")
    p.add_argument("--calib", type=Path, default=None, help="calibration set dir or nuScenes dataroot")
    p.add_argument("--method", choices=(*METHODS, "qat"), default="lidar_ptq")
    p.add_argument("--bits", default="w8a8", help="wXaY, e.g. w8a8, w4a8")
    p.add_argument("--target", choices=("ort", "trt"), default="ort", help="deployment runtime")
    p.add_argument(
        "--ort-weights",
        choices=ORT_WEIGHTS,
        default="auto",
        help="8-bit ORT weights: 7bit (exact on every x86 CPU), 8bit (full grid, needs VNNI), "
        "auto (8bit where this CPU has avx512_vnni / avx_vnni); recorded in quant.yaml",
    )
    p.add_argument("--config", type=Path, default=None, help="LiDAR-PTQ YAML (config/quant/lidar_ptq.yaml)")
    p.add_argument("--max-frames", type=int, default=64, help="calibration frames used (0 = all)")
    p.add_argument("--version", default="v1.0-synthetic", help="data set version (dataroot input)")
    p.add_argument("--split", default="train", help="data set split (dataroot input)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    q = p.add_argument_group("QAT (--method qat)")
    q.add_argument("--data", type=Path, default=None, help="labelled nuScenes-format dataroot (--split)")
    q.add_argument("--qat-epochs", type=float, default=1.0, help="fine-tuning epochs over --split")
    q.add_argument("--qat-steps", type=int, default=0, help="fine-tuning steps (overrides --qat-epochs)")
    q.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (cosine decay)")
    q.add_argument("--batch-size", type=int, default=2)
    q.add_argument("--learn-scale", action="store_true", help="also learn the step sizes (LSQ)")
    p.add_argument("--out", required=True, type=Path, help="artefact directory")


def run(args: argparse.Namespace) -> int:
    """CLI entry: bad input gets one clear line on stderr (exit 2) instead of a traceback."""
    import sys

    from qd_perception.config import ConfigError
    from qd_perception.data.nuscenes import DatasetError

    try:
        if args.method == "qat":
            return _run_qat(args)
        if args.calib is None:
            raise ValueError(f"--method {args.method} needs --calib (calibration set or dataroot)")
        return _run(args)
    except (ConfigError, DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run_qat(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from qd_perception.data.nuscenes import NuScenesReader
    from qd_perception.quant.lidar import calibration_frames, write_artefact
    from qd_perception.quant.qat_lidar import QATConfig, qat_centerpoint
    from qd_perception.runtime.centerpoint import load_checkpoint

    if args.data is None:
        raise ValueError(
            "QAT trains on the detection loss and needs labelled frames: give --data DATAROOT "
            "(nuScenes-format, with annotations) [--split train]; a --calib set from the car has no labels"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg, model, _ = load_checkpoint(args.model)
    train = NuScenesReader(args.data, args.version, args.split, nsweeps=cfg.nsweeps, load_images=False)
    calib = calibration_frames(
        args.calib or args.data, cfg.nsweeps, args.max_frames, args.version, args.split
    )
    qcfg = QATConfig(
        epochs=args.qat_epochs,
        steps=args.qat_steps,
        lr=args.lr,
        batch_size=args.batch_size,
        learn_scale=args.learn_scale,
        calib_frames=len(calib),
    )
    print(
        f"QAT {args.bits}: min-max init on {len(calib)} frames, "
        f"{qcfg.total_steps(len(train))} steps on {args.data}"
    )
    r = qat_centerpoint(model, train, calib, args.bits, args.target, qcfg)
    extra = {
        "qat": {
            **dataclasses.asdict(qcfg),
            "steps": r.steps,
            "data": str(args.data),
            "split": args.split,
            "calib_seconds": round(r.calib_seconds, 2),
            "train_seconds": round(r.train_seconds, 2),
            "final_loss": r.history[-1]["total"] if r.history else None,
        }
    }
    report = write_artefact(r.as_quantize_result(), args.out, parity_frame=calib[0], extra=extra)
    print(json.dumps(report["quant"], indent=2))
    print(
        f"QAT ({args.bits}, {args.target}) in {r.seconds:.1f} s; "
        f"total {time.perf_counter() - t0:.1f} s; artefact in {args.out}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    import torch

    from qd_perception.quant.config import ort_reduce_range
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
    reduce_range = ort_reduce_range(args.ort_weights)
    result = quantize_centerpoint(
        model, frames, args.method, args.bits, args.target, ptq_cfg, reduce_range=reduce_range
    )
    report = write_artefact(result, args.out, parity_frame=frames[0], extra={"ort_weights": args.ort_weights})
    print(json.dumps(report["quant"], indent=2))
    print(
        f"quantized ({args.method}, {args.bits}, {args.target}) in {result.seconds:.1f} s; "
        f"total {time.perf_counter() - t0:.1f} s; artefact in {args.out}"
    )
    return 0
