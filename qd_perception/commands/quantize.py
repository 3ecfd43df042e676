"""``qd-perception quantize lidar``: post-training quantization of CenterPoint (LiDAR-PTQ and
calibrator baselines) into a deployable INT8 artefact.

    qd-perception quantize lidar --model CKPT --calib DIR --method lidar_ptq --bits w8a8 --out ARTEFACT

``--calib`` is a calibration set (calibration node / ``calibrate``) or a nuScenes-format dataroot
(frames drawn evenly from ``--split``).

QAT (min-max init, then fine-tuning through the fake-quant graph on a *labelled* split) writes the
same artefact, ``quant.yaml`` with ``method: qat`` and its wall time:

    qd-perception quantize lidar --method qat --model CKPT --data DATAROOT --split train \
        --qat-epochs 1 --bits w4a8 --out ARTEFACT

QAT runs data parallel under ``torchrun`` like ``train lidar`` (``--batch-size`` per process,
``--device``, ``--amp``, ``--grad-accum``, ``--workers``); rank 0 writes the artefact.

The artefact is an export directory the lidar node and
``eval lidar`` load as ONNX Runtime INT8 (``--target ort``, default) or that ``TrtDetector``
builds an engine from (``--target trt``).

``qd-perception quantize bev``: camera BEVFormer (QD-BEV, docs/quantization.md): PTQ, standard
or progressive QAT, progressive QAT with view-guided distillation, into an artefact
``bev_detector`` runs through ``detector.model_path`` (backend onnxruntime):

    qd-perception quantize bev --model CKPT --data DATAROOT --method qd_bev --bits w4a6 --out ARTEFACT

It runs data parallel under ``torchrun`` as well (same options as QAT above; rank 0 calibrates
and sends the ranges to the other ranks, DDP wraps the student only, rank 0 writes the artefact).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qd_perception.train.distributed import Dist, Runtime

TARGETS: tuple[str, ...] = ("lidar", "bev")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from qd_perception.quant.config import ORT_WEIGHTS
    from qd_perception.train.distributed import add_runtime_arguments
    from qd_perception.train.quantize_lidar import METHODS

    sub = parser.add_subparsers(dest="target_model", metavar="{lidar,bev}", required=True)
    _add_bev_arguments(sub)
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
    q.add_argument("--batch-size", type=int, default=2, help="samples per process and micro-batch")
    q.add_argument("--learn-scale", action="store_true", help="also learn the step sizes (LSQ)")
    add_runtime_arguments(q)
    p.add_argument("--out", required=True, type=Path, help="artefact directory")


def run(args: argparse.Namespace) -> int:
    """CLI entry: bad input gets one clear line on stderr (exit 2) instead of a traceback."""
    import sys

    from qd_perception.config import ConfigError
    from qd_perception.data.nuscenes import DatasetError

    try:
        if args.target_model == "bev" or args.method == "qat":
            from qd_perception.train.distributed import distributed, runtime_from_args

            runtime = runtime_from_args(args)
            with distributed(runtime.device) as dist:
                if args.target_model == "bev":
                    return _run_bev(args, runtime, dist)
                return _run_qat(args, runtime, dist)
        if args.calib is None:
            raise ValueError(f"--method {args.method} needs --calib (calibration set or dataroot)")
        return _run(args)
    except (ConfigError, DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _add_bev_arguments(sub) -> None:
    from qd_perception.distill.vgd import COMBINES, DISTILL_KINDS
    from qd_perception.train.distributed import add_runtime_arguments
    from qd_perception.train.quantize_bev import BITS, METHODS, BEVQATConfig

    d = BEVQATConfig()
    p = sub.add_parser("bev", help="camera BEVFormer (QD-BEV: progressive QAT + view-guided distillation)")
    p.add_argument("--model", required=True, type=Path, help="FP32 checkpoint from `train bev`")
    p.add_argument("--data", required=True, type=Path, help="labelled nuScenes-format dataroot")
    p.add_argument("--version", default="v1.0-synthetic")
    p.add_argument("--split", default="train", help="training / calibration split")
    p.add_argument("--method", choices=METHODS, default="qd_bev")
    p.add_argument("--bits", choices=BITS, default="w4a6")
    p.add_argument("--target", choices=("ort", "trt"), default="ort", help="deployment runtime")
    p.add_argument(
        "--out", required=True, type=Path, help="artefact directory (resumed if it holds a QAT state)"
    )
    p.add_argument("--calib-samples", type=int, default=d.calib_samples, help="calibration samples (0 = all)")
    p.add_argument("--epochs-per-stage", type=int, default=d.epochs_per_stage)
    p.add_argument("--extra-epochs", type=int, default=d.extra_epochs, help="epochs after the last stage")
    p.add_argument("--epochs", type=int, default=d.epochs, help="total QAT epochs (0 = 4 stages + extra)")
    p.add_argument("--max-samples", type=int, default=d.max_samples, help="samples per epoch (0 = all)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--queue-length", type=int, default=d.queue_length)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per process and micro-batch")
    g = p.add_argument_group("distillation (default: vgd for qd_bev, none otherwise)")
    g.add_argument("--distill", choices=DISTILL_KINDS, default=None)
    g.add_argument("--distill-weight", type=float, default=1.0, help="lambda of detection + lambda * L")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--combine", choices=COMBINES, default="product", help="VGD: mean(L_view*L_bev) or sum")
    g.add_argument("--distill-start-epoch", type=int, default=d.distill_start_epoch)
    h = "also TempDistiller from this long-history FP32 model (docs/distillation.md)"
    g.add_argument("--temporal-teacher", type=Path, default=None, help=h)
    g.add_argument("--temporal-config", type=Path, default=None, help="default config/distill/temporal.yaml")
    v = p.add_argument_group("validation curve")
    v.add_argument("--val-data", type=Path, default=None, help="dataroot scored after every epoch (NDS)")
    v.add_argument("--val-split", default="val")
    v.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    add_runtime_arguments(p.add_argument_group("devices and processes (torchrun)"))


def _run_bev(args: argparse.Namespace, runtime: Runtime, dist: Dist) -> int:
    """QD-BEV in this process of the job ``dist`` (one process without torchrun): every rank
    reads the data and trains its share; rank 0 alone writes the artefact."""
    import torch

    from qd_perception.data.nuscenes import NuScenesReader
    from qd_perception.distill.vgd import DistillConfig
    from qd_perception.models.bevformer.checkpoint import load_checkpoint
    from qd_perception.train.bev_data import BEVDataset
    from qd_perception.train.quantize_bev import method_config, run_qat, validator, write_bev_artefact

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    fp = load_checkpoint(args.model)
    kind = args.distill or ("vgd" if args.method == "qd_bev" else "none")
    if args.method == "ptq" and kind != "none":
        raise ValueError("--method ptq trains nothing: --distill needs qat, progressive or qd_bev")
    cfg = method_config(
        args.method, args.bits, target=args.target, epochs_per_stage=args.epochs_per_stage,
        extra_epochs=args.extra_epochs, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, queue_length=args.queue_length, calib_samples=args.calib_samples,
        max_samples=args.max_samples, distill_start_epoch=args.distill_start_epoch,
        checkpoint_minutes=args.checkpoint_minutes, seed=args.seed, batch_size=args.batch_size,
        distill=DistillConfig(kind=kind, temperature=args.temperature, weight=args.distill_weight,
                              combine=args.combine),
    )  # fmt: skip
    reader = NuScenesReader(args.data, args.version, args.split, nsweeps=0, load_images=True)
    dataset = BEVDataset(reader, fp.cfg)
    validate = None
    if args.val_data is not None:
        from qd_perception.runtime.bev import uses_history

        history = uses_history(cfg.queue_length)
        validate = validator(args.val_data, args.version, args.val_split, args.out / "val", history)
    dist.log(f"{args.method} {args.bits} ({args.target}): {len(dataset)} samples of {args.data}, "
             f"{cfg.total_epochs} epochs, distillation {kind}")  # fmt: skip
    extra_loss = None
    if args.temporal_teacher is not None:
        extra_loss = _temporal_loss(args, fp, cfg.queue_length)
    qmodel, state = run_qat(
        fp, dataset, cfg, args.out, validate, runtime=runtime, dist=dist, extra_loss=extra_loss
    )
    if not dist.is_main:
        return 0
    extra = {
        "data": {"dataroot": str(args.data), "version": args.version, "split": args.split},
        "steps": state.step,
        "world_size": dist.world_size,
        "grad_accum": runtime.grad_accum,
        "train_seconds": round(state.elapsed_s, 1),
        "final_loss": state.history[-1][2] if state.history else None,
        "val": [{"epoch": int(e), "nds": n, "map": m} for e, n, m in state.val],
    }
    # parity on two consecutive real keyframes (random images give a flat heatmap whose near-ties
    # make the two-stage queries differ between backends for no deployment-relevant reason)
    frames = [reader[i] for i in range(min(2, len(reader)))]
    info = write_bev_artefact(qmodel, fp, args.out, cfg, args.model, extra, parity_frames=frames)
    print(json.dumps({k: info[k] for k in ("bits", "method", "fp32_mib", "packed_mib", "compression")}))
    if "parity_max_abs_diff" in info:
        print(f"torch fake-quant vs ONNX Runtime max |diff|: {info['parity_max_abs_diff']}; "
              f"detections: {info['parity_detections']}")  # fmt: skip
    print(f"artefact in {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _temporal_loss(args: argparse.Namespace, student, queue_length: int):
    """TempDistiller from ``--temporal-teacher`` into the ``queue_length`` student (its queue: the
    ``--temporal-config``'s ``teacher_queue_length`` or the one it was trained with)."""
    from qd_perception.config import ConfigError
    from qd_perception.distill.temporal import (
        TemporalDistillLoss,
        load_temporal_config,
        teacher_from_checkpoint,
    )
    from qd_perception.models.bevformer.checkpoint import read_checkpoint
    from qd_perception.paths import config_dir

    tcfg = load_temporal_config(args.temporal_config or config_dir() / "distill" / "temporal.yaml")
    teacher, queue = teacher_from_checkpoint(
        read_checkpoint(args.temporal_teacher), args.temporal_teacher, tcfg
    )
    if queue < queue_length:
        raise ConfigError(f"--temporal-teacher queue {queue} is shorter than --queue-length {queue_length}")
    print(f"TempDistiller: teacher {args.temporal_teacher} (queue {queue}) -> student queue {queue_length}")
    return TemporalDistillLoss(teacher, student.cfg, tcfg, queue, queue_length)


def _run_qat(args: argparse.Namespace, runtime: Runtime, dist: Dist) -> int:
    import dataclasses

    import torch

    from qd_perception.data.nuscenes import NuScenesReader
    from qd_perception.runtime.centerpoint import load_checkpoint
    from qd_perception.train.qat_lidar import QATConfig, qat_centerpoint
    from qd_perception.train.quantize_lidar import calibration_frames, write_artefact

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
    steps = qcfg.total_steps(len(train), dist.world_size, runtime.grad_accum)
    dist.log(f"QAT {args.bits}: min-max init on {len(calib)} frames, {steps} steps on {args.data}")
    r = qat_centerpoint(model, train, calib, args.bits, args.target, qcfg, runtime=runtime, dist=dist)
    if not dist.is_main:
        return 0
    extra = {
        "qat": {
            **dataclasses.asdict(qcfg),
            "steps": r.steps,
            "world_size": dist.world_size,
            "grad_accum": runtime.grad_accum,
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
    from qd_perception.runtime.centerpoint import load_checkpoint
    from qd_perception.train.quantize_lidar import (
        calibration_frames,
        load_ptq_config,
        quantize_centerpoint,
        write_artefact,
    )

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
