"""Data-parallel training with PyTorch's own engine (``torch.distributed`` + DDP), for every loop.

One process per device, started by ``torchrun`` (``torchrun --standalone --nproc_per_node N -m
qd_perception.cli train ...``; several machines with ``--nnodes/--rdzv-endpoint``). Without
torchrun's environment (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` unset) the loop runs in one process
with no process group and no wrapper: the one-process behaviour and results are those of a plain
loop. What changes with the world size:

* data: :class:`ShardedSampler` deals one seeded global permutation per epoch round-robin over the
  ranks (``DistributedSampler``'s layout); with one process it *is* the order of a shuffled
  ``DataLoader`` seeded the same way. ``batch_size`` is per process.
* gradients: DDP averages them over the ranks at every optimizer step (after gradient
  accumulation over ``grad_accum`` micro-batches, with ``no_sync`` in between).
* batch norm: converted to ``SyncBatchNorm`` on CUDA when each process sees few samples.
* side effects: only rank 0 writes checkpoints, plots and progress bars (:attr:`Dist.is_main`).
  Checkpoints hold the unwrapped module's ``state_dict`` on CPU, so they are the same whatever
  the world size or device, and a run resumes on another world size.

A loop adopts it in a few lines (see ``train/lidar.py``)::

    with distributed(runtime.device) as dist:
        model = build(...).to(dist.device)
        ddp = wrap(model, dist, runtime.sync_bn, batch_size)
        stepper = Stepper(ddp, optimizer, dist, runtime.amp, grad_clip)
        for epoch in range(start, epochs):
            loader = sharded_loader(dataset, batch_size, seed, epoch, dist, collate, runtime.workers)
            for micro in accumulate(loader, runtime.grad_accum):
                losses = stepper.step(micro, lambda m, b: loss_of(m, b))
            if dist.is_main:
                save(cpu_state(model.state_dict()))
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as tdist
from torch import nn

T = TypeVar("T")
B = TypeVar("B")

DEVICES: tuple[str, ...] = ("auto", "cuda", "cpu")
#: ``--amp`` name -> autocast dtype (None: full float32).
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SYNC_BN: tuple[str, ...] = ("auto", "on", "off")
#: Below this many samples per process, batch-norm statistics of one process are too noisy
#: (per-GPU batch 1-4 is usual for 3-D detectors): ``sync_bn="auto"`` synchronises them.
SMALL_BATCH = 8


@dataclass(frozen=True)
class Runtime:
    """How a training loop runs, not what it learns (the same for every loop and model).

    ``device``: auto (CUDA when available) | cuda | cpu. ``amp``: none | bf16 | fp16 autocast on
    CUDA (fp16 with a ``GradScaler``). ``grad_accum``: micro-batches per optimizer step (the
    global batch is ``batch_size * world_size * grad_accum``). ``sync_bn``: auto (on CUDA with
    more than one process and fewer than :data:`SMALL_BATCH` samples per process) | on | off.
    ``workers``: ``DataLoader`` worker processes per training process.
    """

    device: str = "auto"
    amp: str = "none"
    grad_accum: int = 1
    sync_bn: str = "auto"
    workers: int = 0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {tuple(AMP_DTYPES)}, got {self.amp!r}")
        if self.sync_bn not in SYNC_BN:
            raise ValueError(f"sync_bn must be one of {SYNC_BN}, got {self.sync_bn!r}")
        if self.grad_accum < 1 or self.workers < 0:
            raise ValueError(
                f"grad_accum must be >= 1 and workers >= 0 (got {self.grad_accum}, {self.workers})"
            )


def add_runtime_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device --amp --grad-accum --sync-bn --workers``: the one definition of these options."""
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto = CUDA when available")
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none", help="mixed precision (CUDA)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument(
        "--sync-bn",
        choices=SYNC_BN,
        default="auto",
        help=f"SyncBatchNorm (auto: on CUDA below {SMALL_BATCH} samples per process)",
    )
    parser.add_argument("--workers", type=int, default=0, help="data-loader processes per training process")


def runtime_from_args(args: argparse.Namespace) -> Runtime:
    return Runtime(args.device, args.amp, args.grad_accum, args.sync_bn, args.workers)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. ``backend`` is None for a single process (no group)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and draws progress."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.backend is not None

    def log(self, message: str) -> None:
        """Print on rank 0 only (one line per job, not per process)."""
        if self.is_main:
            print(message, flush=True)

    def barrier(self) -> None:
        if self.parallel:
            tdist.barrier()

    def mean(self, values: Sequence[float]) -> list[float]:
        """Mean over the ranks of a few numbers (logged losses); the values themselves in one process."""
        if not self.parallel:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return (t / self.world_size).tolist()

    def mean_terms(self, losses: Sequence[object], names: Sequence[str]) -> dict[str, float]:
        """Named scalar terms (e.g. ``total``) of a step's micro-batch losses, averaged over the
        micro-batches and the ranks: what a loop logs."""
        local = [sum(_scalar(getattr(x, k)) for x in losses) / len(losses) for k in names]
        return dict(zip(names, self.mean(local), strict=True))

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (e.g. a checkpoint only rank 0 can read)."""
        if not self.parallel:
            return obj
        box = [obj if self.is_main else None]
        tdist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]  # type: ignore[return-value]


def broadcast_state(module: nn.Module, dist: Dist) -> None:
    """Rank 0's parameters and buffers in ``module`` on every rank, in place (e.g. quantizer ranges
    only rank 0 calibrated). The keys, shapes and dtypes go first, as one object, so that a tensor
    whose shape only rank 0 knows yet (a per-channel range before calibration) is created on the
    others; then each tensor by ``broadcast`` on the process device. ``module`` is on
    ``dist.device`` on every rank. A no-op in one process."""
    if not dist.parallel:
        return
    state = module.state_dict()
    meta = dist.broadcast([(k, tuple(v.shape), v.dtype) for k, v in state.items()] if dist.is_main else None)
    received = {}
    for key, shape, dtype in meta:
        if dist.is_main:
            t = state[key].detach().to(dist.device).contiguous()
        else:
            t = torch.empty(shape, dtype=dtype, device=dist.device)
        tdist.broadcast(t, src=0)
        received[key] = t
    if not dist.is_main:
        module.load_state_dict(received)


def _scalar(v: torch.Tensor | float) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"{name}={value!r} is not an integer (set by torchrun)") from e


def select_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto|cuda|cpu`` -> the device of the process with ``local_rank`` on its machine."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch build or machine has no CUDA device")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices: "
            "--nproc_per_node must not exceed the GPUs of a machine"
        )
    return torch.device("cuda", local_rank)


def setup(device: str = "auto", env: Mapping[str, str] | None = None, verbose: bool = True) -> Dist:
    """Join the job torchrun started (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*``), or
    run alone when they are unset. Backend nccl on CUDA, gloo on CPU. Rank 0 prints
    ``distributed: world_size=N backend=B device=D``."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK {rank} / WORLD_SIZE {world} out of range")
    dev = select_device(device, local_rank)
    backend: str | None = None
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not tdist.is_initialized():
            tdist.init_process_group(
                backend,
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(minutes=30),
                device_id=dev if dev.type == "cuda" else None,
            )
    dist = Dist(rank, local_rank, world, dev, backend)
    if verbose and dist.is_main:
        print(f"distributed: world_size={world} backend={backend or 'none'} device={dev.type}", flush=True)
    return dist


def teardown(dist: Dist) -> None:
    """Leave the process group (after every rank arrived, so rank 0's last writes are done)."""
    if dist.parallel and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto", verbose: bool = True) -> Iterator[Dist]:
    """:func:`setup` ... :func:`teardown`. On an exception the group is destroyed without the
    barrier (the other ranks are stopped by torchrun when this one exits non-zero)."""
    dist = setup(device, verbose=verbose)
    try:
        yield dist
    except BaseException:
        if dist.parallel and tdist.is_initialized():
            tdist.destroy_process_group()
        raise
    teardown(dist)


# -- data ----------------------------------------------------------------------------------------


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of an epoch's shuffle (a resumed run, or another world size, sees the same)."""
    return torch.Generator().manual_seed(seed * 1000 + epoch)


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The global order of an epoch: exactly what ``DataLoader(shuffle=True,
    generator=epoch_generator(seed, epoch))`` yields (it draws its workers' base seed from the
    generator before the sampler's ``randperm``; the draw is repeated here so orders match)."""
    g = epoch_generator(seed, epoch)
    torch.empty((), dtype=torch.int64).random_(generator=g)
    return torch.randperm(n, generator=g).tolist()


def shard_indices(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """This rank's share of the epoch's permutation: padded with its head to a multiple of the
    world size (every rank takes the same number of steps), then every ``world_size``-th from
    ``rank``. Step k of rank r sees global position ``k * world_size + r``: the ranks' batches of a
    step together are the one-process batch of ``batch_size * world_size`` at that step."""
    return deal(epoch_permutation(n, seed, epoch), rank, world_size)


def deal(order: Sequence[int], rank: int = 0, world_size: int = 1) -> list[int]:
    """This rank's share of a global ``order``: padded with its head to a multiple of the world
    size (every rank takes the same number of steps), then every ``world_size``-th from ``rank``.
    With one process, ``order`` itself."""
    order = [int(i) for i in order]
    if not order:
        return []
    per_rank = math.ceil(len(order) / world_size)
    padded = (order * math.ceil(per_rank * world_size / len(order)))[: per_rank * world_size]
    return padded[rank::world_size]


class ShardedSampler(torch.utils.data.Sampler[int]):
    """``DistributedSampler``'s layout with the shuffle of :func:`epoch_permutation` (call
    :meth:`set_epoch` before each epoch, as with ``DistributedSampler``)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(shard_indices(self.n, self.seed, self.epoch, self.rank, self.world_size))

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)


def sharded_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    dist: Dist,
    collate_fn: Callable[[list[Any]], Any],
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    """This rank's batches of one epoch (``batch_size`` per process; pinned memory on CUDA, the
    batch type needs a ``pin_memory()`` method for that). The loader's own generator is seeded
    as the sampler's so that it draws nothing from the global torch RNG."""
    sampler = ShardedSampler(len(dataset), seed, dist.rank, dist.world_size)  # type: ignore[arg-type]
    sampler.set_epoch(epoch)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        pin_memory=dist.device.type == "cuda",
        persistent_workers=False,
        generator=epoch_generator(seed, epoch),
        drop_last=False,
    )


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int = 1, grad_accum: int = 1) -> int:
    """Optimizer steps in one epoch of :func:`sharded_loader` batches grouped by :func:`accumulate`."""
    per_rank = math.ceil(num_samples / world_size)
    return math.ceil(math.ceil(per_rank / batch_size) / grad_accum)


def accumulate(batches: Iterable[B], k: int) -> Iterator[list[B]]:
    """Micro-batches of one optimizer step, ``k`` at a time (the last group of an epoch may be shorter)."""
    group: list[B] = []
    for b in batches:
        group.append(b)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


# -- model -----------------------------------------------------------------------------------------


def use_sync_bn(mode: str, dist: Dist, batch_size: int) -> bool:
    """Whether :func:`wrap` converts batch norm (``mode``: auto | on | off)."""
    if mode == "off" or not dist.parallel:
        return False
    if dist.device.type != "cuda":
        if mode == "on":
            raise ValueError("--sync-bn on needs CUDA (torch's SyncBatchNorm has no CPU kernels)")
        return False
    return mode == "on" or batch_size < SMALL_BATCH


def wrap(model: nn.Module, dist: Dist, sync_bn: str = "auto", batch_size: int = 1) -> nn.Module:
    """``model`` (already on ``dist.device``) for training: the module itself in one process,
    else DDP around it (SyncBatchNorm first, see :func:`use_sync_bn`). Keep a reference to the
    unwrapped ``model`` for checkpoints and methods other than ``forward``; after a SyncBatchNorm
    conversion that is :func:`unwrap` of the result."""
    if not dist.parallel:
        return model
    if use_sync_bn(sync_bn, dist, batch_size):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The trained module inside a DDP wrapper (itself when not wrapped)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def cpu_state(obj: T) -> T:
    """Tensors of a (nested) state dict moved to CPU: checkpoints read the same on any device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()  # type: ignore[return-value]
    if isinstance(obj, dict):
        return type(obj)((k, cpu_state(v)) for k, v in obj.items())  # type: ignore[return-value]
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_state(v) for v in obj)  # type: ignore[return-value]
    return obj


class HasTotal(Protocol):
    """What a loss function returns: the scalar to minimise in ``total`` (other fields are logs)."""

    @property
    def total(self) -> torch.Tensor: ...


L = TypeVar("L", bound=HasTotal)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device`` (None: float32); a clear error off CUDA.
    :class:`Stepper` checks it; a loop with slow work before its first step checks it first."""
    dtype = AMP_DTYPES[amp]
    if dtype is not None and device.type != "cuda":
        raise ValueError(f"--amp {amp} needs --device cuda (mixed precision is for GPUs here)")
    return dtype


class Stepper:
    """One optimizer step over the micro-batches of :func:`accumulate`: autocast forward (``amp``),
    backward of ``total / len(micro)`` (DDP syncs only at the last micro-batch), fp16 loss
    scaling, gradient-norm clipping (``grad_clip`` > 0), optimizer step. With one micro-batch,
    no AMP and one process this is exactly ``zero_grad; total.backward(); clip; step``."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        dist: Dist | None = None,
        amp: str = "none",
        grad_clip: float = 0.0,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.dist = dist or Dist()
        self.grad_clip = grad_clip
        self.dtype = amp_dtype(amp, self.dist.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's precision context (a no-op without AMP)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.dtype)

    def step(self, micro: Sequence[B], loss_fn: Callable[[nn.Module, B], L]) -> list[L]:
        """``loss_fn(model, batch)`` runs under :meth:`autocast` (compute the loss itself in
        float32 inside); returns the loss of each micro-batch."""
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or not ddp else self.model.no_sync()  # type: ignore[operator]
            with sync:
                with self.autocast():
                    loss = loss_fn(self.model, batch)
                total = loss.total / len(micro) if len(micro) > 1 else loss.total
                (self.scaler.scale(total) if self.scaler is not None else total).backward()
            losses.append(loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return losses
