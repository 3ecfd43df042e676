"""``qd-perception train bev``: train the BEVFormer-style camera detector.

Resumable: the checkpoint (written atomically every few minutes and at each epoch end) holds the
model, optimizer, epoch/position, loss history and the embedded model and training configs; running
the same command again continues where it stopped. A loss-curve PNG is written beside it.

Temporal training as BEVFormer: the BEV of up to ``queue_length - 1`` previous keyframes of the
same scene is computed without gradients (eval mode) and fed, aligned by ego motion, to the frame
being trained.

Data parallel under ``torchrun`` (``train/distributed.py``): ``--batch-size`` per process, the
epoch's seeded order dealt round-robin over the ranks (one process: the order of a plain run),
DDP gradient averaging, ``--grad-accum`` micro-batches per optimizer step (``no_sync`` on all but
the last), rank 0 alone writes files and draws the progress bar; the checkpoint is the same
whatever the world size, and a run resumes on another one.

TempDistiller (``--distill temporal --teacher CKPT``, ``qd_perception/distill/temporal.py``): the
model trained here is the short-history student (``--queue-length``), initialised from the
teacher's weights (``--init TEACHER``) or from scratch; the frozen teacher sees its own, longer
queue of the same samples. The checkpoint stays a plain BEVFormer checkpoint
(``eval bev`` and the runtime load it) with the generators' weights and the distillation config
beside it, so a distillation run resumes like any other.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qd_perception.config import ConfigError, from_dict, to_dict
from qd_perception.fileio import atomic_output
from qd_perception.train.distributed import (
    Dist,
    Runtime,
    Stepper,
    accumulate,
    add_runtime_arguments,
    cpu_state,
    deal,
    distributed,
    runtime_from_args,
    unwrap,
    wrap,
)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    queue_length: int = 2  # frames per training sample, current included (1 = no temporal input)
    warmup_steps: int = 200
    max_minutes: float = 0.0  # wall-clock budget (0 = none); training stops cleanly and saves
    checkpoint_minutes: float = 5.0
    seed: int = 0
    batch_size: int = 1  # per step; on a CPU batch 1 is the fastest per sample (docs/benchmarks.md)
    augment: bool = True  # BEV rotation/flip + photometric jitter (train/bev_data.AugmentConfig)
    snapshot_minutes: float = 0.0  # keep a copy of the weights every N training minutes (0 = none)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.queue_length < 1 or self.batch_size < 1:
            raise ConfigError("epochs, queue_length and batch_size must be >= 1")


#: ``--distill`` choices ("none": plain training)
DISTILL_KINDS: tuple[str, ...] = ("none", "temporal")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config/models/bevformer_<preset>.model.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the model config, e.g. denoising.enabled=true (repeatable; "
                   "the checkpoint embeds the result)")  # fmt: skip
    p.add_argument("--data", required=True, help="nuScenes-format dataroot")
    p.add_argument("--version", default="v1.0-synthetic")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="checkpoint path (.pt); resumed if it exists")
    d = TrainConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--queue-length", type=int, default=d.queue_length)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--max-minutes", type=float, default=d.max_minutes)
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--no-augment", action="store_true", help="no BEV / photometric augmentation")
    p.add_argument("--snapshot-minutes", type=float, default=d.snapshot_minutes,
                   help="keep the weights every N training minutes in <out>.snapshots/")  # fmt: skip
    p.add_argument("--cache-dir", default="", help="image cache root (default ~/.cache/qd_perception/bev)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint at --out")
    p.add_argument("--init", default="", help="start from these weights (same model config; fresh "
                   "optimizer and schedule), e.g. the teacher's for a TempDistiller student")  # fmt: skip
    p.add_argument(
        "--release", default="", help="also write the weights alone (no optimizer) here at the end"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    g = p.add_argument_group("distillation (TempDistiller, docs/distillation.md)")
    g.add_argument("--distill", choices=DISTILL_KINDS, default="none",
                   help="temporal: a long-history --teacher teaches this --queue-length student")  # fmt: skip
    g.add_argument("--teacher", default="", help="teacher checkpoint from `train bev` (long queue)")
    g.add_argument("--distill-config", default="", help="default config/distill/temporal.yaml")
    add_runtime_arguments(p.add_argument_group("devices and processes (torchrun)"))


def same_weights_layout(a, b) -> bool:
    """Whether two ``BEVFormerConfig`` differ at most in their name and training-only switches
    that add no weights (the denoising queries), so one's weights initialise the other."""
    import dataclasses

    return dataclasses.replace(a, name=b.name, denoising=b.denoising) == b


def lr_factor(step: int, total: int, warmup: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up then cosine decay to 1e-3 of the base rate. The decay follows whichever is
    further along: the steps or the wall-clock budget (``time_fraction`` of ``--max-minutes``
    used), so a time-limited run still ends at a low rate."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * t))


def encode_history_frames(model, tb) -> list:
    """``BEVEncoding`` (bev, bev_mask, img_feats) of every history frame of a
    :class:`~qd_perception.train.bev_data.TemporalBatch`, oldest first, each fed the previous
    one's BEV, without gradients (eval mode, as BEVFormer). Empty without history."""
    import torch

    if not tb.history:
        return []
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for k, hb in enumerate(tb.history):
            kw = {}
            if out:
                kw = dict(prev_bev=out[-1].bev, prev_valid=tb.valid[k - 1], prev_from_cur=tb.motion[k - 1])
            out.append(model.encode(hb.images, hb.intrinsics, hb.cam2ego, **kw))
    model.train(was_training)
    return out


def history_inputs(tb, history: list):
    """(prev_bev, prev_valid, prev_from_cur) of the current frame from
    :func:`encode_history_frames`' result, all None without history."""
    if not history:
        return None, None, None
    return history[-1].bev, tb.valid[-1], tb.motion[-1]


def encode_history(model, tb):
    """BEV of the history frames of a :class:`~qd_perception.train.bev_data.TemporalBatch`,
    oldest first, without gradients (eval mode, as BEVFormer). Returns (prev_bev, prev_valid,
    prev_from_cur) for the current frame, all None without history."""
    return history_inputs(tb, encode_history_frames(model, tb))


def batch_to(tb, device):
    """A :class:`~qd_perception.train.bev_data.TemporalBatch` with every tensor on ``device``
    (itself on the CPU)."""
    import dataclasses

    from qd_perception.models.bevformer.losses import Targets

    if device.type == "cpu":
        return tb

    def move(b):
        return dataclasses.replace(
            b, images=b.images.to(device), intrinsics=b.intrinsics.to(device),
            cam2ego=b.cam2ego.to(device),
            targets=[Targets(t.boxes.to(device), t.labels.to(device)) for t in b.targets],
        )  # fmt: skip

    return dataclasses.replace(
        tb, current=move(tb.current), history=[move(h) for h in tb.history],
        valid=[v.to(device) for v in tb.valid], motion=[m.to(device) for m in tb.motion],
    )  # fmt: skip


def as_float32(x):
    """Forward outputs of an autocast forward in float32 (the focal loss's logs need it)."""
    import dataclasses

    import torch

    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, list | tuple):
        return type(x)(as_float32(v) for v in x)
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(
            x, **{f.name: as_float32(getattr(x, f.name)) for f in dataclasses.fields(x)}
        )
    return x


def batch_forward(model, tb, train: bool = True):
    """Forward of a ``TemporalBatch`` through ``model`` (a :class:`BEVFormer` or its DDP wrapper):
    the history is encoded by the bare module (no gradients, eval mode, outside DDP), the current
    frame goes through ``model`` in train mode (``train``) or eval mode. Returns BEVFormerOutputs."""
    prev_bev, prev_valid, prev_from_cur = encode_history(unwrap(model), tb)
    model.train(train)
    b = tb.current
    # the ground truth feeds the denoising queries (training only; ignored without them)
    dn = b.targets if train else None
    return model(b.images, b.intrinsics, b.cam2ego, prev_bev, prev_valid, prev_from_cur, dn_targets=dn)


def batch_loss(model, tb):
    """Forward (:func:`batch_forward`, train mode) and loss of a ``TemporalBatch``. The loss is
    computed in float32 whatever the autocast precision of the forward, normalised by this
    batch's ground-truth count (per process under DDP, per micro-batch with ``--grad-accum``).
    Returns the LossBreakdown."""
    import torch

    from qd_perception.models.bevformer.losses import detection_loss

    out = batch_forward(model, tb)
    b = tb.current
    with torch.autocast(b.images.device.type, enabled=False):
        return detection_loss(as_float32(out), b.targets, unwrap(model).cfg, extra=b)


def train_step(model, optimizer, tb, tcfg: TrainConfig):
    """One single-process optimisation step on a ``TemporalBatch``. Returns the LossBreakdown."""
    return Stepper(model, optimizer, grad_clip=tcfg.grad_clip).step([tb], batch_loss)[0]


def epoch_order(n: int, seed: int, epoch: int, position: int, dist: Dist, limit: int = 0) -> list[int]:
    """This rank's samples of the rest of an epoch: the epoch's seeded permutation (its first
    ``limit`` samples when ``limit`` > 0) from global sample ``position`` on, dealt round-robin
    over the ranks (:func:`deal`). With one process it is the permutation itself; with N, step k
    of all ranks together is the one-process batch of ``batch_size * N`` at step k, and
    ``position`` counts global samples, so a resume on another world size continues with the
    same samples."""
    order = np.random.default_rng(seed + epoch).permutation(n)
    order = order[: limit or n][position:]
    return deal(order, dist.rank, dist.world_size)


#: logged loss terms of a plain run, in history-row order after the step; a distillation run
#: inserts its terms (``distill.temporal.DISTILL_LOG_NAMES``) before the last (newer) ones, so the
#: rows of runs started by an older version keep their columns
LOG_NAMES: tuple[str, ...] = ("total", "cls", "bbox", "dense_heatmap", "dense_reg", "perspective")
LOG_NAMES_NEW: tuple[str, ...] = ("denoising",)
_PLOT_LABELS = {
    "total": "total", "cls": "cls (last layer)", "bbox": "bbox L1 (last layer)",
    "dense_heatmap": "dense heatmap", "dense_reg": "dense codes", "perspective": "perspective",
    "distill": "TempDistiller (weighted sum)", "denoising": "denoising queries",
}  # fmt: skip


def plot_loss_curve(
    history: list[list[float]], path: Path, title: str, names: tuple[str, ...] = LOG_NAMES + LOG_NAMES_NEW
) -> None:
    """history rows [step, *terms named by ``names``] -> PNG (atomic). Terms that are zero or
    missing throughout (rows of an older run are shorter) are not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A run resumed with more loss terms (a newer version) has longer rows: pad the old ones
    width = max((len(r) for r in history), default=0)
    h = np.full((len(history), max(width, 1 + len(names))), np.nan)
    for i, r in enumerate(history):
        h[i, : len(r)] = r
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(h):
        k = max(1, len(h) // 50)
        kernel = np.ones(k) / k
        cols = [(1 + i, _PLOT_LABELS[n]) for i, n in enumerate(names)
                if n in _PLOT_LABELS and np.nansum(np.abs(h[:, 1 + i])) > 0]  # fmt: skip
        for col, name in cols:
            rows = np.isfinite(h[:, col])
            if rows.sum() >= k:
                ax.plot(h[rows, 0][k - 1 :], np.convolve(h[rows, col], kernel, mode="valid"), label=name)
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving mean over {max(1, len(h) // 50)} steps)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qd_perception" / "bev"


def open_cached_dataset(dataroot: str, version: str, split: str, cfg, cache_root: str | Path = ""):
    """The split's keyframes at the network resolution from the image cache, built on first use
    (JPEG decoding and resizing happen once per data set, not once per step)."""
    from qd_perception.data.nuscenes import NuScenesReader
    from qd_perception.train.bev_data import CachedBEVDataset, dataset_key

    root = Path(cache_root) if cache_root else default_cache_root()
    cache = root / dataset_key(dataroot, version, split, cfg)
    if (cache / "meta.npz").is_file():
        return CachedBEVDataset(cache, cfg)
    reader = NuScenesReader(dataroot, version, split, nsweeps=0, load_images=True)
    return CachedBEVDataset.build(reader, cfg, cache)


def distill_batch_loss(trainee, tb):
    """:func:`batch_loss` of ``train bev --distill temporal``: ``trainee`` is a
    :class:`~qd_perception.distill.temporal.TemporalTrainee` (or its DDP wrapper) and ``tb``
    carries the teacher's queue. Returns its ``DistillBreakdown``."""
    return trainee(tb)


@dataclass(frozen=True)
class DistillSetup:
    """What ``--distill temporal`` resolved to: the frozen teacher (CPU), its queue length, the
    TempDistiller config, and ``record`` (plain data kept in the checkpoint; a resume must match
    it)."""

    teacher: object
    teacher_queue: int
    config: object
    record: dict


def distill_setup(args: argparse.Namespace, cfg, tcfg: TrainConfig, dist: Dist) -> DistillSetup | None:
    """The distillation of ``args`` (``--distill``, ``--teacher``, ``--distill-config``), None for
    plain training. Rank 0 reads the teacher and hands it on."""
    from qd_perception.distill.temporal import load_temporal_config, teacher_from_checkpoint
    from qd_perception.models.bevformer.checkpoint import read_checkpoint
    from qd_perception.paths import config_dir

    kind = getattr(args, "distill", "none")
    if kind == "none":
        if getattr(args, "teacher", ""):
            raise ConfigError("--teacher needs --distill temporal")
        return None
    if not args.teacher:
        raise ConfigError(f"--distill {kind} needs --teacher CKPT")
    dcfg = load_temporal_config(args.distill_config or config_dir() / "distill" / "temporal.yaml")
    ckpt = dist.broadcast(read_checkpoint(args.teacher) if dist.is_main else None)
    teacher, queue = teacher_from_checkpoint(ckpt, args.teacher, dcfg)
    if tcfg.queue_length > queue:
        raise ConfigError(
            f"the student's --queue-length {tcfg.queue_length} exceeds the teacher's queue {queue}"
        )
    # what a resume must repeat (the teacher file may move: its path is kept beside, not compared)
    record = {"kind": kind, "teacher_queue_length": queue, "config": to_dict(dcfg)}
    return DistillSetup(teacher, queue, dcfg, record)


def run(args: argparse.Namespace) -> int:
    """One process, or one of torchrun's (data parallel, see ``train/distributed.py``). A bad
    device or precision choice (e.g. ``--amp`` without CUDA) gets one line on stderr (exit 2)."""
    import sys

    try:
        runtime = runtime_from_args(args)
        with distributed(runtime.device) as dist:
            train(args, runtime, dist)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def train(args: argparse.Namespace, runtime: Runtime, dist: Dist):
    """The training of ``run`` in this process of the job ``dist``; returns the trained
    :class:`BEVFormer` (the bare module, on ``dist.device``)."""
    import torch
    from tqdm import tqdm

    from qd_perception.models.bevformer.checkpoint import read_checkpoint, save_checkpoint
    from qd_perception.models.bevformer.config import load_model_config
    from qd_perception.models.bevformer.model import BEVFormer
    from qd_perception.train.bev_data import NO_AUGMENT, AugmentConfig, TemporalSamples, collate_temporal

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_model_config(args.config, args.set)
    tcfg = TrainConfig(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        queue_length=args.queue_length, warmup_steps=args.warmup_steps, max_minutes=args.max_minutes,
        checkpoint_minutes=args.checkpoint_minutes, seed=args.seed, batch_size=args.batch_size,
        augment=not args.no_augment, snapshot_minutes=args.snapshot_minutes,
    )  # fmt: skip
    out = Path(args.out)
    torch.manual_seed(tcfg.seed)
    model = BEVFormer(cfg)
    state = {"epoch": 0, "position": 0, "step": 0, "history": [], "elapsed_s": 0.0, "samples": 0}
    # Rank 0 reads the checkpoint and hands it to the others: --out need not be on a shared disk.
    ckpt = read_checkpoint(out) if dist.is_main and out.exists() and not args.restart else None
    ckpt = dist.broadcast(ckpt)
    distill = distill_setup(args, cfg, tcfg, dist)
    if ckpt is not None:
        # parsed, so a checkpoint written before a config field existed compares by its default
        if from_dict(type(cfg), ckpt["model_config"]) != cfg:
            raise ConfigError(f"{out} was trained with another model config; use --restart or another --out")
        saved = (ckpt.get("distill") or {}).get("record")
        if saved != (distill.record if distill else None):
            raise ConfigError(
                f"{out} was trained with another distillation setup ({saved}); use --restart or another --out"
            )
        model.load_state_dict(ckpt["state_dict"])
    elif args.init:
        init = dist.broadcast(read_checkpoint(args.init) if dist.is_main else None)
        if not same_weights_layout(from_dict(type(cfg), init["model_config"]), cfg):
            raise ConfigError(f"--init {args.init} has another model config than --config")
        model.load_state_dict(init["state_dict"])
    model.to(dist.device)
    trained = model  # the module the optimizer and DDP see: the student, or student + generators
    if distill is not None:
        from qd_perception.distill.temporal import TemporalTrainee

        trained = TemporalTrainee(model, distill.teacher.to(dist.device), distill.config,
                                  distill.teacher_queue, tcfg.queue_length).to(dist.device)  # fmt: skip
        if ckpt is not None:
            trained.distiller.load_state_dict(ckpt["distill"]["state_dict"])
    optimizer = torch.optim.AdamW(trained.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        tcfg = from_dict(TrainConfig, {**ckpt["train_config"], "epochs": tcfg.epochs,
                                       "max_minutes": tcfg.max_minutes})  # fmt: skip
        state = {"samples": state["step"], **ckpt["state"]}
        dist.log(f"resuming {out}: epoch {state['epoch']} position {state['position']} step {state['step']}")
    if state["epoch"] >= tcfg.epochs:
        dist.log(f"{out} already trained for {state['epoch']} epochs")
        return model

    # Rank 0 builds the image cache first; the others then read it (one writer per cache).
    if dist.is_main:
        base = open_cached_dataset(args.data, args.version, args.split, cfg, args.cache_dir)
    dist.barrier()
    if not dist.is_main:
        base = open_cached_dataset(args.data, args.version, args.split, cfg, args.cache_dir)
    queue = max(tcfg.queue_length, distill.teacher_queue) if distill else tcfg.queue_length
    samples = TemporalSamples(base, queue, AugmentConfig() if tcfg.augment else NO_AUGMENT, tcfg.seed)
    n = len(samples)
    bs = tcfg.batch_size
    step_samples = bs * dist.world_size * runtime.grad_accum  # global samples per optimizer step
    per_epoch = math.ceil(n / step_samples)
    total = tcfg.epochs * per_epoch
    if ckpt is not None and ckpt.get("world_size", 1) != dist.world_size:
        dist.log(f"schedule: {per_epoch} steps per epoch now (total {total})")
    png = out.with_suffix(".loss.png")
    snap_dir = out.with_suffix(".snapshots")
    ddp = wrap(trained, dist, runtime.sync_bn, bs)
    stepper = Stepper(ddp, optimizer, dist, runtime.amp, tcfg.grad_clip)
    names = LOG_NAMES
    loss_fn = batch_loss
    if distill is not None:
        from qd_perception.distill.temporal import DISTILL_LOG_NAMES

        names = (*names, *DISTILL_LOG_NAMES)
        loss_fn = distill_batch_loss
    names = (*names, *LOG_NAMES_NEW)

    def write(path, **extra) -> Path:
        # the bare module's weights on the CPU: the same file whatever the world size or device
        return save_checkpoint(path, model, state_dict=cpu_state(model.state_dict()), **extra)

    def save() -> None:
        if not dist.is_main:
            return
        extra = {}
        if distill is not None:
            gen = cpu_state(trained.distiller.state_dict())
            extra["distill"] = {"record": distill.record, "state_dict": gen, "teacher": str(args.teacher)}
        write(
            out, optimizer=cpu_state(optimizer.state_dict()), train_config=to_dict(tcfg), state=state,
            data={"dataroot": str(args.data), "version": args.version, "split": args.split, "samples": n},
            world_size=dist.world_size, grad_accum=runtime.grad_accum, **extra,
        )  # fmt: skip
        title = f"BEVFormer-{cfg.name} training ({n} samples, batch {step_samples})"
        plot_loss_curve(state["history"], png, title, names)

    start = time.monotonic() - state["elapsed_s"]
    last_save = time.monotonic()
    next_snap = (
        (math.floor(state["elapsed_s"] / 60 / tcfg.snapshot_minutes) + 1) * tcfg.snapshot_minutes
        if tcfg.snapshot_minutes
        else math.inf
    )
    stop = False
    desc = f"train bev-{cfg.name}"
    bar = tqdm(total=total, initial=state["step"], unit="step", desc=desc, disable=not dist.is_main)
    while state["epoch"] < tcfg.epochs and not stop:
        samples.epoch = state["epoch"]
        loader = torch.utils.data.DataLoader(
            samples, batch_size=bs, collate_fn=collate_temporal,
            sampler=epoch_order(n, tcfg.seed, state["epoch"], state["position"], dist),
            num_workers=runtime.workers, persistent_workers=False,
            prefetch_factor=2 if runtime.workers else None,
        )  # fmt: skip
        # micro-batch j of step k on rank r holds global positions ((k * A + j) * bs + i) * N + r:
        # the step's micro-batches of all ranks together are the global samples of step k
        for micro in accumulate(loader, runtime.grad_accum):
            # The schedule's step from the samples done, not the step counter: the same number with
            # one process, and the same point of the training after a change of world size.
            at = state["epoch"] * per_epoch + math.ceil(state["position"] / step_samples)
            for g in optimizer.param_groups:
                frac = state["elapsed_s"] / (60 * tcfg.max_minutes) if tcfg.max_minutes else 0.0
                g["lr"] = tcfg.lr * lr_factor(at, total, tcfg.warmup_steps, frac)
            losses = stepper.step([batch_to(tb, dist.device) for tb in micro], loss_fn)
            terms = dist.mean_terms(losses, names)
            state["history"].append([state["step"], *(terms[k] for k in names)])
            taken = min(step_samples, n - state["position"])  # the padded tail counts once
            state["position"] += taken
            state["samples"] += taken
            state["step"] += 1
            bar.update(1)
            bar.set_postfix(epoch=state["epoch"], loss=f"{terms['total']:.3f}")
            now = time.monotonic()
            # rank 0's clock for all: the learning rate and the budget's stop must agree on every rank
            state["elapsed_s"] = dist.broadcast(now - start) if tcfg.max_minutes else now - start
            if state["elapsed_s"] / 60 >= next_snap:
                if dist.is_main:
                    snap_dir.mkdir(parents=True, exist_ok=True)
                    write(snap_dir / f"min{next_snap:06.1f}.pt", state={**state, "history": []})
                next_snap += tcfg.snapshot_minutes
            if tcfg.max_minutes and state["elapsed_s"] > 60 * tcfg.max_minutes:
                dist.log(f"\nwall-clock budget of {tcfg.max_minutes} min reached; saving")
                stop = True
                break
            if now - last_save > 60 * tcfg.checkpoint_minutes:
                save()
                last_save = now
        if state["position"] >= n:
            state["epoch"] += 1
            state["position"] = 0
        save()
        last_save = time.monotonic()
    bar.close()
    save()
    if args.release and dist.is_main:
        rel = write(args.release, state={**state, "history": []}, train_config=to_dict(tcfg))
        print(f"release weights: {rel} ({rel.stat().st_size / 1e6:.1f} MB)")
    dist.log(
        f"saved {out} (epoch {state['epoch']}, {state['step']} steps, {state['samples']} samples, "
        f"{state['elapsed_s'] / 60:.1f} min); {png}"
    )
    return model
