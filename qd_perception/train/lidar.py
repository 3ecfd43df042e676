"""``qd-perception train lidar``: train CenterPoint on a nuScenes-format data set.

    qd-perception train lidar --config config/models/centerpoint_pillar_cpu.model.yaml \
        --data DATAROOT --out runs/cp.pt [--epochs 20 --batch-size 2 --lr 1e-3]

AdamW with a one-cycle schedule (CenterPoint's recipe). After every epoch the checkpoint is
written atomically: model, optimizer, scheduler, epoch, loss history and the model config (so
the checkpoint loads alone); a loss curve is drawn next to it (``<out>.loss.png``). Running the
same command again resumes from the checkpoint, on any number of processes.

Several processes or machines (data parallel, :mod:`qd_perception.train.distributed`)::

    torchrun --standalone --nproc_per_node 8 -m qd_perception.cli train lidar --device cuda \
        --amp bf16 --batch-size 4 --workers 4 --config ... --data ... --out runs/cp.pt

``--batch-size`` is per process: the optimizer sees ``batch_size * processes * grad_accum``
samples a step. The CenterPoint loss is normalised by each process's own object count (as in
CenterPoint's reference code), and DDP averages the gradients of the processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from qd_perception.config import ConfigError, to_dict
from qd_perception.fileio import atomic_output
from qd_perception.models.build import build_model, config_from_dict, load_model_file
from qd_perception.models.centerpoint.config import CenterPointConfig
from qd_perception.models.centerpoint.head import TaskOutput
from qd_perception.models.centerpoint.loss import LossOutput, centerpoint_loss
from qd_perception.models.centerpoint.model import CenterPoint
from qd_perception.train.distributed import (
    Dist,
    Runtime,
    Stepper,
    accumulate,
    add_runtime_arguments,
    cpu_state,
    distributed,
    runtime_from_args,
    sharded_loader,
    steps_per_epoch,
    unwrap,
    wrap,
)
from qd_perception.train.lidar_data import AugmentConfig, LidarBatch, LidarDataset, collate


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0
    history: list[dict] = field(default_factory=list)  # one row per logged step
    epoch_loss: list[float] = field(default_factory=list)
    train_seconds: float = 0.0


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Put every BatchNorm in eval mode (running statistics, as in an exported graph)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _float32(out: TaskOutput) -> TaskOutput:
    """Head maps of an autocast forward in float32 (the focal loss's logs need it)."""
    if out.heatmap.dtype == torch.float32:
        return out
    fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return dataclasses.replace(out, **{k: None if t is None else t.float() for k, t in fields.items()})


def batch_loss(
    model: nn.Module,
    batch: LidarBatch,
    generator: torch.Generator | None = None,
    frozen_batchnorm: bool = False,
) -> LossOutput:
    """Forward and CenterPoint loss of a batch through ``model`` (a :class:`CenterPoint` or its DDP
    wrapper), in train mode. Voxelisation runs on the CPU, the network on the model's device; the
    loss is computed in float32 whatever the autocast precision of the forward.
    ``frozen_batchnorm``: BatchNorm layers use their running statistics (QAT fine-tuning)."""
    core: CenterPoint = unwrap(model)  # type: ignore[assignment]
    model.train()
    if frozen_batchnorm:
        freeze_batchnorm(core)
    device = next(core.parameters()).device
    vox = core.preprocess(batch.points, generator)
    if device.type != "cpu":
        vox = vox.to(device, non_blocking=True)
    outputs = model(vox)
    with torch.autocast(device.type, enabled=False):
        return centerpoint_loss([_float32(o) for o in outputs], batch.targets_on(device), core.cfg.loss)


def train_step(
    model: nn.Module,
    batch: LidarBatch,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None = None,
    grad_clip: float = 35.0,
    frozen_batchnorm: bool = False,
) -> LossOutput:
    """One optimisation step on a batch, one process, float32; returns the loss terms (before
    the step). ``frozen_batchnorm``: see :func:`batch_loss`."""
    loss_fn = functools.partial(batch_loss, generator=generator, frozen_batchnorm=frozen_batchnorm)
    return Stepper(model, optimizer, grad_clip=grad_clip).step([batch], loss_fn)[0]


@torch.no_grad()
def recalibrate_batchnorm(model: CenterPoint, batches: list[LidarBatch]) -> None:
    """Reset BatchNorm running statistics to the plain average over ``batches`` (train-mode
    forward, no weight update). Needed after very short training runs: with momentum 0.01 the
    running statistics lag the weights for hundreds of steps."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for batch in batches:
        model(model.preprocess(batch.points))
    for m, mom in zip(norms, saved):
        m.momentum = mom
    model.eval()


def save_checkpoint(
    path: Path, model: CenterPoint, optimizer, scheduler, state: TrainState, extra: dict
) -> None:
    """Atomic: write a temporary file beside ``path`` then rename it over. ``model`` is the
    unwrapped module (no DDP prefix); tensors are stored on the CPU whatever the device."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "arch": "centerpoint",
        "config": to_dict(model.cfg),
        "model": cpu_state(model.state_dict()),
        "optimizer": cpu_state(optimizer.state_dict()) if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "history": state.history,
        "epoch_loss": state.epoch_loss,
        "train_seconds": state.train_seconds,
        **extra,
    }
    with atomic_output(path) as tmp:
        torch.save(ckpt, tmp)


def plot_loss(path: Path, state: TrainState, title: str) -> None:
    """Loss curve PNG (total, heatmap, regression per logged step; epoch means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not state.history:
        return
    steps = [h["step"] for h in state.history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("total", "total"), ("heatmap", "heatmap focal"), ("loc", "box L1 (weighted)")):
        ax.plot(steps, [h[key] for h in state.history], label=label, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def epoch_loader(
    dataset: LidarDataset,
    epoch: int,
    batch_size: int,
    seed: int,
    workers: int = 0,
    dist: Dist | None = None,
) -> torch.utils.data.DataLoader:
    """This process's shuffled batches of one epoch (augmentation and order seeded by ``seed``
    and ``epoch``, so a resumed run sees the same epochs; see :func:`sharded_loader`)."""
    dataset.set_epoch(epoch)
    return sharded_loader(dataset, batch_size, seed, epoch, dist or Dist(), collate, workers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="config/models/<name>.model.yaml (not needed to resume)")
    parser.add_argument(
        "--data", type=Path, nargs="+", required=True, help="nuScenes-format dataroot(s), concatenated"
    )
    parser.add_argument(
        "--version", default="v1.0-synthetic", help="table folder (v1.0-trainval for nuScenes)"
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint path (resumed if it exists)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2, help="samples per process and micro-batch")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (one-cycle)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--max-samples", type=int, default=0, help="use only the first N samples (debug)")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint at --out")
    parser.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="stop once N of the --epochs are done (a job time limit; the next run resumes)",
    )
    parser.add_argument(
        "--release",
        type=Path,
        default=None,
        help="also write model weights + config only (no optimizer) here",
    )
    add_runtime_arguments(parser.add_argument_group("devices and processes (torchrun)"))


def run(args: argparse.Namespace) -> int:
    """CLI entry: bad input gets one clear line on stderr (exit 2) instead of a traceback."""
    import sys

    from qd_perception.config import ConfigError
    from qd_perception.data.nuscenes import DatasetError

    try:
        runtime = runtime_from_args(args)
        with distributed(runtime.device) as dist:
            return _run(args, runtime, dist)
    except (ConfigError, DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def one_cycle(
    optimizer: torch.optim.Optimizer, lr: float, total_steps: int, done_steps: int = 0
) -> torch.optim.lr_scheduler.OneCycleLR:
    """CenterPoint's one-cycle schedule over ``total_steps``, positioned after ``done_steps``
    (a resume on another world size or batch: the same point of the schedule, new step count;
    needs the optimizer state of the earlier run, which holds each group's ``initial_lr``)."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=lr,
        total_steps=total_steps,
        pct_start=0.4,
        div_factor=10,
        last_epoch=done_steps - 1,
    )


def _run(args: argparse.Namespace, runtime: Runtime, dist: Dist) -> int:
    from qd_perception.data.nuscenes import NuScenesReader

    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    # Rank 0 reads the checkpoint and hands it to the others: --out need not be on a shared disk.
    ckpt = None
    if dist.is_main and out.is_file() and not args.fresh:
        ckpt = torch.load(out, map_location="cpu", weights_only=True)
    ckpt = dist.broadcast(ckpt)
    if ckpt is not None:
        cfg: CenterPointConfig = config_from_dict("centerpoint", ckpt["config"])
        if args.config is not None:
            _, given = load_model_file(args.config)
            if given != cfg:
                raise ConfigError(f"{out} was trained with another config than {args.config}; use --fresh")
    elif args.config is None:
        raise ConfigError("--config is required to start training (no checkpoint at --out)")
    else:
        arch, cfg = load_model_file(args.config)
        if arch != "centerpoint":
            raise ConfigError(f"{args.config}: arch {arch!r} is not a lidar model")
    torch.manual_seed(args.seed)
    readers = [
        NuScenesReader(d, args.version, args.split, nsweeps=cfg.nsweeps, load_images=False) for d in args.data
    ]
    frames = torch.utils.data.ConcatDataset(readers)
    if args.max_samples:
        frames = [frames[i] for i in range(min(args.max_samples, len(frames)))]
    aug = None if args.no_augment else AugmentConfig()
    dataset = LidarDataset(frames, cfg, aug, seed=args.seed)
    model: CenterPoint = build_model("centerpoint", cfg)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(dist.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    per_epoch = steps_per_epoch(len(dataset), args.batch_size, dist.world_size, runtime.grad_accum)
    total_steps = args.epochs * per_epoch
    scheduler = one_cycle(optimizer, args.lr, total_steps)
    state = TrainState()
    if ckpt is not None:
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler") and ckpt["scheduler"]["total_steps"] == total_steps:
            scheduler.load_state_dict(ckpt["scheduler"])
        elif ckpt.get("scheduler") and ckpt.get("optimizer") and ckpt.get("epochs") == args.epochs:
            # Another world size, batch or accumulation: same place in the schedule, new step count.
            scheduler = one_cycle(optimizer, args.lr, total_steps, ckpt["epoch"] * per_epoch)
            dist.log(f"schedule: {per_epoch} steps per epoch now (total {total_steps})")
        elif ckpt.get("scheduler"):
            raise ConfigError(f"{out}: resume with the same --epochs (the schedule's length differs)")
        state = TrainState(
            ckpt["epoch"],
            ckpt["step"],
            list(ckpt["history"]),
            list(ckpt["epoch_loss"]),
            ckpt["train_seconds"],
        )
        dist.log(f"resuming {out} after epoch {state.epoch}")
    ddp = wrap(model, dist, runtime.sync_bn, args.batch_size)
    stepper = Stepper(ddp, optimizer, dist, runtime.amp, grad_clip=35.0)
    # Each rank its own voxel-subsampling stream; rank 0's is the one-process stream.
    gen = torch.Generator().manual_seed(args.seed + dist.rank)
    loss_fn = functools.partial(batch_loss, generator=gen)
    extra = {
        "data": [str(d) for d in args.data],
        "split": args.split,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "world_size": dist.world_size,
        "grad_accum": runtime.grad_accum,
    }
    png = out.with_suffix(".loss.png")
    last = min(args.epochs, args.stop_after) if args.stop_after > 0 else args.epochs
    for epoch in range(state.epoch, last):
        loader = epoch_loader(dataset, epoch, args.batch_size, args.seed, runtime.workers, dist)
        t0 = time.perf_counter()
        losses = []
        steps = accumulate(loader, runtime.grad_accum)
        desc = f"epoch {epoch + 1}/{args.epochs}"
        bar = tqdm(steps, desc=desc, unit="step", total=per_epoch, disable=not dist.is_main)
        for micro in bar:
            micro_losses = stepper.step(micro, loss_fn)
            scheduler.step()
            state.step += 1
            terms = dist.mean_terms(micro_losses, ("total", "heatmap", "loc"))
            row = {"step": state.step, "epoch": epoch + 1, **terms, "lr": float(scheduler.get_last_lr()[0])}
            state.history.append(row)
            losses.append(row["total"])
            bar.set_postfix(loss=f"{row['total']:.3f}", hm=f"{row['heatmap']:.3f}", loc=f"{row['loc']:.3f}")
        state.train_seconds += time.perf_counter() - t0
        state.epoch = epoch + 1
        state.epoch_loss.append(float(np.mean(losses)))
        if dist.is_main:
            save_checkpoint(out, model, optimizer, scheduler, state, extra)
            plot_loss(png, state, f"{cfg.name} on {'+'.join(d.name for d in args.data)}/{args.split}")
        mean, seconds = state.epoch_loss[-1], state.train_seconds
        dist.log(f"epoch {state.epoch}: mean loss {mean:.4f}  ({seconds:.0f} s total)")
    dist.log(f"checkpoint: {out}  loss curve: {png}  training time {state.train_seconds / 60:.1f} min")
    if args.release is not None and dist.is_main:
        save_checkpoint(args.release, model, None, None, state, extra)
        print(f"release weights: {args.release} ({args.release.stat().st_size / 1e6:.1f} MB)")
    return 0
