"""Quantization-aware training (QAT) of a trained FP32 CenterPoint.

The deployment recipe (as in NVIDIA's CUDA-CenterPoint QAT): copy the float model, fold BatchNorm
into the convs, swap in the quantized modules with the same presets as PTQ
(:func:`~qd_perception.quant.config.preset`; the ORT target keeps the pillar PFN float), initialise
every range by min-max calibration on a few frames (this *is* :func:`quantize_centerpoint` with
``method="minmax"``), then fine-tune the weights through the fake-quant graph (straight-through
estimator) with the CenterPoint training loss on the labelled train split, small learning rate,
cosine or constant schedule. With ``learn_scale`` the step sizes train too (LSQ).

Weight ranges stay at their min-max values from the initialisation (the weights move little at
these learning rates; a weight pushed past its range is clipped, which the STE reports as a zero
gradient). BatchNorms that could not be folded (the PFN's) are frozen in eval mode: the exported
graph uses their running statistics, so training must too.

The result is a fake-quant model in ``quantize`` mode that
:func:`~qd_perception.train.quantize_lidar.write_artefact` exports exactly like a PTQ result
(``quant.yaml`` says ``method: qat``).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from tqdm import tqdm

from qd_perception.data.types import Frame
from qd_perception.models.centerpoint.loss import LossOutput
from qd_perception.quant.config import Target
from qd_perception.quant.model import quantizers
from qd_perception.train.distributed import Dist, Runtime, Stepper, accumulate, steps_per_epoch, wrap
from qd_perception.train.lidar import batch_loss, epoch_loader, train_step
from qd_perception.train.lidar_data import AugmentConfig, LidarBatch, LidarDataset, gt_arrays
from qd_perception.train.quantize_lidar import QuantizeResult, quantize_centerpoint


@dataclass(frozen=True)
class QATConfig:
    """QAT fine-tuning of a trained model.

    ``steps`` > 0 overrides ``epochs`` (an epoch is one pass over the train frames in batches of
    ``batch_size``; fractional epochs are allowed). ``lr`` is the peak AdamW learning rate;
    ``schedule`` ``cosine`` decays it to ``lr * min_lr_ratio`` over the run, ``constant`` keeps it.
    ``learn_scale``: LSQ step sizes (trained with ``lr * scale_lr_ratio``). ``calib_frames``: how
    many frames the caller draws for the min-max initialisation (informational here; the frames
    are passed in). ``augment``: the training augmentation of ``train lidar`` (flips, rotation, scale).
    """

    epochs: float = 1.0
    steps: int = 0
    lr: float = 1e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.0
    batch_size: int = 2
    grad_clip: float = 35.0
    learn_scale: bool = False
    scale_lr_ratio: float = 0.1
    calib_frames: int = 32
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs == 0):
            raise ValueError(
                f"QAT needs steps > 0 or epochs > 0 (got steps={self.steps}, epochs={self.epochs})"
            )
        if self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"lr must be > 0 and batch_size >= 1 (got {self.lr}, {self.batch_size})")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {self.schedule!r}")

    def total_steps(self, num_frames: int, world_size: int = 1, grad_accum: int = 1) -> int:
        """Optimizer steps of the run (``batch_size`` per process, ``grad_accum`` micro-batches a step)."""
        if self.steps:
            return self.steps
        per_epoch = steps_per_epoch(num_frames, self.batch_size, world_size, grad_accum)
        return max(1, math.ceil(self.epochs * per_epoch))


@dataclass(frozen=True)
class QATProgress:
    """Where a QAT run stands when the callback fires.

    ``seconds``: QAT cost so far = min-max initialisation + training steps (the callback's own
    time, e.g. an evaluation, is excluded); ``cpu_seconds``: the same in process CPU time (with
    one torch thread, the cost without the other processes of a shared machine). ``loss``: mean
    total loss since the previous callback (``None`` at step 0).
    """

    step: int
    epoch: float
    seconds: float
    train_seconds: float
    cpu_seconds: float
    loss: float | None


@dataclass
class QATResult:
    model: nn.Module  # fake-quant CenterPoint, eval mode, every quantizer in quantize mode
    bits: str
    target: str
    calib_seconds: float
    train_seconds: float
    steps: int
    calib_cpu_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # one row per step: step, total, heatmap, loc, lr

    @property
    def seconds(self) -> float:
        return self.calib_seconds + self.train_seconds

    @property
    def cpu_seconds(self) -> float:
        return self.calib_cpu_seconds + self.train_cpu_seconds

    def as_quantize_result(self) -> QuantizeResult:
        """For :func:`~qd_perception.train.quantize_lidar.write_artefact` (``quantize_seconds`` =
        QAT wall time)."""
        return QuantizeResult(self.model, "qat", self.bits, self.target, self.seconds, None)


def check_labelled(frames: Sequence[Frame], probe: int = 8) -> None:
    """QAT trains on the detection loss: refuse frames without ground truth (a calibration set
    collected on the car has none) instead of training every heatmap towards zero."""
    n = len(frames)
    if n == 0:
        raise ValueError("QAT needs labelled training frames; got none")
    idx = sorted({round(i * (n - 1) / max(min(probe, n) - 1, 1)) for i in range(min(probe, n))})
    if not any(len(gt_arrays(frames[i])[0]) for i in idx):
        raise ValueError(
            "QAT needs labelled frames (ground-truth boxes); none of the probed frames has any. "
            "A calibration set from the calibration node has no labels: use PTQ for it, or give a "
            "nuScenes-format dataroot with annotations."
        )


def qat_step(
    model: nn.Module,
    batch: LidarBatch,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None = None,
    grad_clip: float = 35.0,
) -> LossOutput:
    """One QAT step (one process, float32): ``train.lidar.train_step`` with BatchNorm frozen (see
    module doc)."""
    return train_step(model, batch, optimizer, generator, grad_clip, frozen_batchnorm=True)


def qat_centerpoint(
    model: nn.Module,
    train_frames: Sequence[Frame],
    calib_frames: Sequence[Frame],
    bits: str = "w8a8",
    target: Target = "ort",
    cfg: QATConfig | None = None,
    callback: Callable[[QATProgress, nn.Module], None] | None = None,
    every: int = 0,
    runtime: Runtime | None = None,
    dist: Dist | None = None,
) -> QATResult:
    """QAT of a float CenterPoint (``model`` is not modified).

    ``train_frames``: labelled frames (e.g. a ``NuScenesReader`` on the train split), ``calib_frames``:
    the frames of the min-max initialisation. ``callback(progress, qmodel)`` runs at step 0 (after
    initialisation), every ``every`` steps (0 = never) and after the last step, with ``qmodel`` in
    eval mode, on rank 0 only; its time is not counted in the QAT wall time.

    ``runtime``/``dist`` (:mod:`qd_perception.train.distributed`): device, mixed precision,
    gradient accumulation, data-loader workers and the process group of a ``torchrun`` job
    (default: this process alone, CPU, float32). Every rank initialises the ranges on the same
    frames (deterministic, so identical); the fine-tuning is data parallel, ``batch_size`` per
    process. The result is on the CPU (export and the runtimes take it there).
    """
    cfg = cfg or QATConfig()
    runtime = runtime or Runtime(device="cpu")
    dist = dist or Dist()
    check_labelled(train_frames)
    c0 = time.process_time()
    init = quantize_centerpoint(model, calib_frames, "minmax", bits, target)
    qmodel, calib_seconds, calib_cpu = init.model, init.seconds, time.process_time() - c0
    qmodel.to(dist.device)
    active = [q for _, q in quantizers(qmodel) if q.mode == "quantize"]
    scales = [q.enable_lsq() for q in active] if cfg.learn_scale else []
    scale_ids = {id(s) for s in scales}
    weights = [p for p in qmodel.parameters() if p.requires_grad and id(p) not in scale_ids]
    groups = [{"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if scales:
        groups.append({"params": scales, "lr": cfg.lr * cfg.scale_lr_ratio, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)

    total = cfg.total_steps(len(train_frames), dist.world_size, runtime.grad_accum)
    if cfg.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total, eta_min=cfg.lr * cfg.min_lr_ratio
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    dataset = LidarDataset(train_frames, qmodel.cfg, AugmentConfig() if cfg.augment else None, seed=cfg.seed)
    per_epoch = steps_per_epoch(len(dataset), cfg.batch_size, dist.world_size, runtime.grad_accum)
    # Each rank its own voxel-subsampling stream; rank 0's is the one-process stream.
    gen = torch.Generator().manual_seed(cfg.seed + dist.rank)
    torch.manual_seed(cfg.seed)
    # BatchNorm is frozen (running statistics): nothing to synchronise, no SyncBatchNorm.
    ddp = wrap(qmodel, dist, sync_bn="off")
    stepper = Stepper(ddp, optimizer, dist, runtime.amp, cfg.grad_clip)
    loss_fn = functools.partial(batch_loss, generator=gen, frozen_batchnorm=True)

    history: list[dict] = []
    train_seconds = train_cpu = 0.0
    recent: list[float] = []

    def report(step: int) -> None:
        if callback is None or not dist.is_main:
            return
        qmodel.eval()
        loss = sum(recent) / len(recent) if recent else None
        seconds, cpu = calib_seconds + train_seconds, calib_cpu + train_cpu
        callback(QATProgress(step, step / per_epoch, seconds, train_seconds, cpu, loss), qmodel)
        recent.clear()

    report(0)
    step, epoch = 0, 0
    bar = tqdm(total=total, desc=f"QAT {bits}", unit="step", disable=not dist.is_main)
    while step < total:
        loader = epoch_loader(dataset, epoch, cfg.batch_size, cfg.seed, runtime.workers, dist)
        for micro in accumulate(loader, runtime.grad_accum):
            t0, c0 = time.perf_counter(), time.process_time()
            losses = stepper.step(micro, loss_fn)
            scheduler.step()
            train_seconds += time.perf_counter() - t0
            train_cpu += time.process_time() - c0
            step += 1
            terms = dist.mean_terms(losses, ("total", "heatmap", "loc"))
            row = {"step": step, **terms, "lr": float(scheduler.get_last_lr()[0])}
            history.append(row)
            recent.append(row["total"])
            bar.update(1)
            bar.set_postfix(loss=f"{row['total']:.3f}", hm=f"{row['heatmap']:.3f}", loc=f"{row['loc']:.3f}")
            if step == total or (every and step % every == 0):
                report(step)
            if step == total:
                break
        epoch += 1
    bar.close()
    qmodel.eval()
    for q in active:
        q.freeze_lsq()  # learned step sizes -> amax/amin (export reads those); no-op without LSQ
    qmodel.cpu()
    return QATResult(qmodel, bits, target, calib_seconds, train_seconds, step, calib_cpu, train_cpu, history)
