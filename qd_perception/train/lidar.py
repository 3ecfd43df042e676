"""``qd-perception train lidar``: train CenterPoint on a nuScenes-format data set.

    qd-perception train lidar --config config/models/centerpoint_pillar_cpu.model.yaml \
        --data DATAROOT --out runs/cp.pt [--epochs 20 --batch-size 2 --lr 1e-3]

AdamW with a one-cycle schedule (CenterPoint's recipe). After every epoch the checkpoint is
written atomically: model, optimizer, scheduler, epoch, loss history and the model config (so
the checkpoint loads alone); a loss curve is drawn next to it (``<out>.loss.png``). Running the
same command again resumes from the checkpoint.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from qd_perception.config import ConfigError, to_dict
from qd_perception.models.build import build_model, config_from_dict, load_model_file
from qd_perception.models.centerpoint.config import CenterPointConfig
from qd_perception.models.centerpoint.loss import LossOutput, centerpoint_loss
from qd_perception.models.centerpoint.model import CenterPoint
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


def train_step(
    model: CenterPoint,
    batch: LidarBatch,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None = None,
    grad_clip: float = 35.0,
    frozen_batchnorm: bool = False,
) -> LossOutput:
    """One optimisation step on a batch; returns the loss terms (before the step).
    ``frozen_batchnorm``: BatchNorm layers use their running statistics (QAT fine-tuning)."""
    model.train()
    if frozen_batchnorm:
        freeze_batchnorm(model)
    vox = model.preprocess(batch.points, generator)
    loss = centerpoint_loss(model(vox), batch.targets, model.cfg.loss)
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss


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
    """Atomic: write a temporary file beside ``path`` then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "arch": "centerpoint",
        "config": to_dict(model.cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "history": state.history,
        "epoch_loss": state.epoch_loss,
        "train_seconds": state.train_seconds,
        **extra,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


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
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def epoch_loader(
    dataset: LidarDataset, epoch: int, batch_size: int, seed: int, workers: int = 0
) -> torch.utils.data.DataLoader:
    """The shuffled batches of one epoch (augmentation and order seeded by ``seed`` and ``epoch``,
    so a resumed run sees the same epochs)."""
    dataset.set_epoch(epoch)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed * 1000 + epoch),
        drop_last=False,
    )


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
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (one-cycle)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data-loader processes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--max-samples", type=int, default=0, help="use only the first N samples (debug)")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint at --out")
    parser.add_argument(
        "--release",
        type=Path,
        default=None,
        help="also write model weights + config only (no optimizer) here",
    )


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
    from qd_perception.data.nuscenes import NuScenesReader

    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    resume = out.is_file() and not args.fresh
    ckpt = torch.load(out, map_location="cpu", weights_only=True) if resume else None
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(dataset) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.4, div_factor=10
    )
    state = TrainState()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler") and ckpt["scheduler"]["total_steps"] == args.epochs * steps_per_epoch:
            scheduler.load_state_dict(ckpt["scheduler"])
        elif ckpt.get("scheduler"):
            raise ConfigError(f"{out}: resume with the same --epochs/--batch-size/data (schedule differs)")
        state = TrainState(
            ckpt["epoch"],
            ckpt["step"],
            list(ckpt["history"]),
            list(ckpt["epoch_loss"]),
            ckpt["train_seconds"],
        )
        print(f"resuming {out} after epoch {state.epoch}")
    gen = torch.Generator().manual_seed(args.seed)
    extra = {
        "data": [str(d) for d in args.data],
        "split": args.split,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
    }
    png = out.with_suffix(".loss.png")
    for epoch in range(state.epoch, args.epochs):
        loader = epoch_loader(dataset, epoch, args.batch_size, args.seed, args.workers)
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch")
        for batch in bar:
            loss = train_step(model, batch, optimizer, gen)
            scheduler.step()
            state.step += 1
            row = {
                "step": state.step,
                "epoch": epoch + 1,
                "total": float(loss.total),
                "heatmap": float(loss.heatmap),
                "loc": float(loss.loc),
                "lr": float(scheduler.get_last_lr()[0]),
            }
            state.history.append(row)
            losses.append(row["total"])
            bar.set_postfix(loss=f"{row['total']:.3f}", hm=f"{row['heatmap']:.3f}", loc=f"{row['loc']:.3f}")
        state.train_seconds += time.perf_counter() - t0
        state.epoch = epoch + 1
        state.epoch_loss.append(float(np.mean(losses)))
        save_checkpoint(out, model, optimizer, scheduler, state, extra)
        plot_loss(png, state, f"{cfg.name} on {'+'.join(d.name for d in args.data)}/{args.split}")
        print(
            f"epoch {state.epoch}: mean loss {state.epoch_loss[-1]:.4f}  ({state.train_seconds:.0f} s total)"
        )
    print(f"checkpoint: {out}  loss curve: {png}  training time {state.train_seconds / 60:.1f} min")
    if args.release is not None:
        save_checkpoint(args.release, model, None, None, state, extra)
        print(f"release weights: {args.release} ({args.release.stat().st_size / 1e6:.1f} MB)")
    return 0
