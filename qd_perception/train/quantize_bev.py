"""QD-BEV for the BEVFormer camera detector: quantized model, PTQ, standard / progressive QAT with
optional distillation from the float model, deployable ONNX Runtime artefact
(``qd-perception quantize bev``; docs/quantization.md).

**Stages.** Every top-level submodule of :class:`~qd_perception.models.bevformer.BEVFormer` is one
stage (:data:`STAGE_OF_MODULE`); a top-level module not in the table (e.g. an auxiliary head)
belongs to :data:`DEFAULT_STAGE`, the decoder/head stage, so progressive QAT quantizes it last.

**What is quantized.** Every ``nn.Conv2d`` and ``nn.Linear`` (backbone and FPN convs; encoder
value/output projections, sampling-offset and attention-weight linears and FFNs; decoder
attention, FFNs, classification and regression branches) except :data:`FLOAT_LAYERS`: weights per
output channel, symmetric; activations per tensor (unsigned asymmetric for ONNX Runtime, symmetric
for TensorRT, as :func:`~qd_perception.quant.config.preset`).

**What stays float, and why** (the anchors of QD-BEV / BEVFormer quantization):

* LayerNorm, softmax (attention weights), sigmoid / inverse sigmoid of the reference points:
  non-linear, sensitive to the range, no integer kernel in ONNX Runtime;
* the sampling-location arithmetic of deformable attention (reference point + offset /
  normaliser) and the bilinear ``grid_sample`` positions, and the BEV alignment of the previous
  frame: positions in normalised image / BEV coordinates, where a 6-bit grid over the image
  would move every sample by several pixels. The *outputs* of the sampling-offset and
  attention-weight linears therefore get no output quantizer (:data:`FLOAT_OUTPUT_PATTERNS`);
  their inputs and weights are quantized;
* the initial reference-point linear (:data:`FLOAT_LAYERS`): a function of the learned query
  embedding only, i.e. a constant of the deployed graph;
* the classification logits and box codes (the last linear of each branch has no output
  quantizer): they are the graph's outputs, decoded in float;
* embeddings (BEV queries, positional, camera / level embeddings, object queries): looked-up
  parameters, no matmul; their size is counted in float.

BatchNorms of the ResNet are folded into their convs before quantization (the runtime multiplies
the folded weights; per-channel ranges must see them), so QAT trains with frozen BN statistics.

**Data parallel** under ``torchrun`` (:func:`run_qat`, ``train/distributed.py``): rank 0
calibrates and sends every range to the other ranks, DDP wraps the student only, the float
teacher is a frozen plain module on every rank, rank 0 alone writes files.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn

from qd_perception.config import ConfigError, from_dict, to_dict
from qd_perception.distill.vgd import DistillConfig, distill_loss
from qd_perception.fileio import atomic_output, atomic_write_text
from qd_perception.models.bevformer.losses import detection_loss
from qd_perception.quant.config import QuantConfig, Target, preset
from qd_perception.quant.model import calibrate, fold_bn, fold_conv_bn, quant_modules, quantize_model
from qd_perception.quant.nn.modules import QuantModule
from qd_perception.quant.qat import ProgressiveQAT
from qd_perception.quant.size import model_size
from qd_perception.runtime.bev import ARTEFACT_ONNX
from qd_perception.train.distributed import (
    Dist,
    Runtime,
    Stepper,
    accumulate,
    amp_dtype,
    broadcast_state,
    cpu_state,
    unwrap,
    wrap,
)

#: top-level submodule of BEVFormer -> stage (progressive QAT order is :data:`STAGES`)
STAGE_OF_MODULE: dict[str, str] = {
    "backbone": "backbone",
    "neck": "neck",
    "encoder": "encoder",
    "decoder": "decoder",
}
#: stage of any other top-level module (auxiliary heads belong to the head stage)
DEFAULT_STAGE = "decoder"
STAGES: tuple[str, ...] = ("backbone", "neck", "encoder", "decoder")
BITS: tuple[str, ...] = ("w4a6", "w8a8", "w4a4")
Method = Literal["ptq", "qat", "progressive", "qd_bev"]
METHODS: tuple[str, ...] = ("ptq", "qat", "progressive", "qd_bev")
#: layers whose *output* stays float (positions / attention logits; see the module docstring)
FLOAT_OUTPUT_PATTERNS: tuple[str, ...] = ("*.sampling_offsets", "*.attention_weights")
#: layers left float entirely: the initial reference points are a linear of the learned query
#: embedding, a constant of the model the exporter folds (quantizing it gains nothing at run time;
#: measured: its folded Q/DQ made ORT's box codes 0.3 m off the fake-quant model's)
FLOAT_LAYERS: tuple[str, ...] = ("decoder.reference_points",)
#: training-only modules (not in the deployed graph, never run in eval mode): left float, since
#: calibration in eval mode would never reach their quantizers and nothing deploys them
TRAINING_ONLY_PATTERNS: tuple[str, ...] = ("perspective_head.*",)
#: ``nn.Sequential`` branches whose last layer produces a graph output (logits / box codes) or the
#: dense heatmap whose top-k picks the two-stage queries: on a 6-bit output grid many peaks tie
#: exactly, and torch and ONNX Runtime break ties differently (measured: other queries, box codes
#: 76 m apart), so these outputs stay float
OUTPUT_BRANCH_PATTERNS: tuple[str, ...] = (
    "decoder.cls_branches.*", "decoder.reg_branches.*", "dense_head.heatmap", "dense_head.reg",
)  # fmt: skip
QUANT_YAML = "quant.yaml"
STATE_NAME = "qat_state.pt"


def stage_table(model: nn.Module) -> dict[str, str]:
    """Module-name prefix -> stage for ``QuantConfig.stages``: one entry per top-level child."""
    return {name: STAGE_OF_MODULE.get(name, DEFAULT_STAGE) for name, _ in model.named_children()}


def parse_bits(bits: str) -> tuple[int, int]:
    """``"w4a6"`` -> (4, 6); only the presets of :data:`BITS`."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    w, a = bits.removeprefix("w").split("a")
    return int(w), int(a)


def bev_quant_config(model: nn.Module, bits: str = "w4a6", target: Target = "ort") -> QuantConfig:
    """The quantization config of ``model``: min-max ranges, the ``bits`` preset for ``target``
    (ORT: 8-bit weights stored 7-bit, see ``quant/export.py``), stages from :func:`stage_table`."""
    parse_bits(bits)
    return replace(
        preset("minmax", bits, target),
        stages=stage_table(model),
        skip=(*FLOAT_LAYERS, *TRAINING_ONLY_PATTERNS),
    )


@torch.no_grad()
def fold_attribute_bn(model: nn.Module) -> nn.Module:
    """Fold ``bnK`` into ``convK`` for every module holding such attribute pairs (the ResNet stem and
    blocks, whose BNs are attributes, not ``nn.Sequential`` members), then the ``Sequential``
    conv-BN pairs (shortcuts) with :func:`~qd_perception.quant.model.fold_bn`. In place."""
    model.eval()
    for m in model.modules():
        for k in range(1, 4):
            conv, bn = getattr(m, f"conv{k}", None), getattr(m, f"bn{k}", None)
            if (
                type(conv) is nn.Conv2d
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and conv.groups == 1
            ):
                fold_conv_bn(conv, bn)
                setattr(m, f"bn{k}", nn.Identity())
    return fold_bn(model)


def _float_output_layers(model: nn.Module) -> list[str]:
    names = [
        n for n, _ in quant_modules(model) if any(fnmatch.fnmatchcase(n, p) for p in FLOAT_OUTPUT_PATTERNS)
    ]
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential) and any(fnmatch.fnmatchcase(name, p) for p in OUTPUT_BRANCH_PATTERNS):
            last = list(m._modules)[-1]
            if isinstance(m._modules[last], QuantModule):
                names.append(f"{name}.{last}")
    return names


def quantize_bevformer(fp_model: nn.Module, bits: str = "w4a6", target: Target = "ort") -> nn.Module:
    """A fake-quant copy of ``fp_model`` (not modified): BN folded, every Conv2d / Linear wrapped,
    the float outputs of :data:`FLOAT_OUTPUT_PATTERNS` and the output branches. Quantizers start
    ``disabled``; calibrate with :func:`calibrate_bev`."""
    q = fold_attribute_bn(copy.deepcopy(fp_model).eval())
    quantize_model(q, bev_quant_config(q, bits, target))
    modules = dict(q.named_modules())
    for name in _float_output_layers(q):
        modules[name].output_quantizer = None
        modules[name].quantize_bias = False  # ORT runs DQ -> Gemm in float: the bias stays float
    return q


def stage_layer_counts(qmodel: nn.Module) -> dict[str, int]:
    """Quantized layers per stage, :class:`QuantAct` wrappers (quantized ReLU outputs) included
    (a stage with 0 layers is a table error)."""
    counts = {s: 0 for s in STAGES}
    for _, m in quant_modules(qmodel):
        st = getattr(m, "quant_stage", None)
        if st is not None:
            counts[st] = counts.get(st, 0) + 1
    return counts


# ---- data ---------------------------------------------------------------------------------------
def forward_sample(
    model: nn.Module, dataset, index: int, queue_length: int, device: torch.device | None = None
):
    """``(BEVFormerOutputs, Batch)`` of sample ``index`` (batch of one, on ``device``; default the
    CPU) with its temporal input, through ``model`` in its current mode: the history's BEV computed
    as ``train bev`` computes it (``train.bev.encode_history``)."""
    from qd_perception.train.bev import batch_to, encode_history
    from qd_perception.train.bev_data import NO_AUGMENT, TemporalSamples, collate_temporal

    tb = collate_temporal([TemporalSamples(dataset, queue_length, NO_AUGMENT)[index]])
    tb = batch_to(tb, device or torch.device("cpu"))
    prev = encode_history(model, tb)
    batch = tb.current
    return model(batch.images, batch.intrinsics, batch.cam2ego, *prev), batch


def even_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all when ``k`` is 0 or >= n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def calibrate_bev(
    qmodel: nn.Module, dataset, indices: Sequence[int], queue_length: int = 2, progress: bool = True
) -> None:
    """Min-max ranges of every quantizer from forward passes over ``indices`` (on the device of
    ``qmodel``); afterwards every quantizer is in ``quantize`` mode."""
    from tqdm import tqdm

    qmodel.eval()
    device = next(qmodel.parameters()).device

    def run() -> None:
        with torch.no_grad():
            for i in tqdm(indices, desc="calibrate", unit="sample", leave=False, disable=not progress):
                forward_sample(qmodel, dataset, i, queue_length, device)

    calibrate(qmodel, run)


# ---- QAT ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BEVQATConfig:
    """One QAT loop for all methods.

    ``method``: ``ptq`` (calibration only), ``qat`` (standard: every stage quantized from the
    first step), ``progressive`` (one more stage every ``epochs_per_stage`` epochs, in
    :data:`STAGES` order, earlier stages stay quantized), ``qd_bev`` (progressive + distillation,
    ``distill.kind`` defaults to VGD). All QAT methods train ``epochs`` epochs in total
    (0 = ``len(STAGES) * epochs_per_stage + extra_epochs``), so standard and progressive QAT get
    the same budget. Distillation (any method but ptq, ``distill.kind != "none"``) is on from
    epoch ``distill_start_epoch``. ``max_samples``: samples per epoch (0 = the whole split, drawn
    in a seeded random order). ``batch_size``: samples per process and micro-batch (an optimizer
    step sees ``batch_size x processes x grad_accum`` samples; the schedule counts those steps).
    """

    method: Method = "qd_bev"
    bits: str = "w4a6"
    target: Target = "ort"
    epochs_per_stage: int = 1
    extra_epochs: int = 0
    epochs: int = 0
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    queue_length: int = 2
    calib_samples: int = 16
    max_samples: int = 0
    distill_start_epoch: int = 0
    checkpoint_minutes: float = 5.0
    seed: int = 0
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(kind="none"))
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        parse_bits(self.bits)
        if self.epochs_per_stage < 1 or self.extra_epochs < 0 or self.epochs < 0 or self.queue_length < 1:
            raise ConfigError("epochs_per_stage and queue_length must be >= 1, epochs >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def total_epochs(self) -> int:
        if self.method == "ptq":
            return 0
        return self.epochs or len(STAGES) * self.epochs_per_stage + self.extra_epochs

    def stages_at(self, epoch: int) -> dict[str, bool]:
        """Stage -> quantized during ``epoch``."""
        if self.method in ("progressive", "qd_bev"):
            return ProgressiveQAT(STAGES, self.epochs_per_stage).enabled(epoch)
        return {s: True for s in STAGES}

    def distill_at(self, epoch: int) -> bool:
        return self.method != "ptq" and self.distill.kind != "none" and epoch >= self.distill_start_epoch


def method_config(method: Method, bits: str = "w4a6", **kw: Any) -> BEVQATConfig:
    """The config of ``method`` with its defaults: ``qd_bev`` distils with VGD unless
    ``distill=`` says otherwise."""
    if method == "qd_bev" and "distill" not in kw:
        kw["distill"] = DistillConfig(kind="vgd")
    return BEVQATConfig(method=method, bits=bits, **kw)


def set_stages(qmodel: nn.Module, enabled: dict[str, bool]) -> None:
    """Quantize the enabled stages, run the others in float (stages named in :data:`STAGES`; other
    top-level modules carry :data:`DEFAULT_STAGE`, so they follow it)."""
    from qd_perception.quant.model import set_quant_state

    counts = set_quant_state(qmodel, enabled)
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise RuntimeError(f"stages without quantized layers: {empty} (stage table out of date?)")


@dataclass
class QATState:
    epoch: int = 0
    #: global samples of the epoch done (all processes), so a resume on another world size continues
    position: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    #: rows [step, epoch, total, detection, distill (nan when off)], means over the processes
    history: list[list[float]] = field(default_factory=list)
    #: rows [epoch (completed), NDS, mAP]
    val: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class QATLoss:
    """One micro-batch's loss: ``total`` (minimised) = ``detection`` + weight * ``distill``
    (the last two detached, for the logs; ``distill`` is nan when off)."""

    total: torch.Tensor
    detection: torch.Tensor
    distill: torch.Tensor | float


def qat_loss(
    student: nn.Module,
    teacher: nn.Module | None,
    tb,
    cfg: BEVQATConfig,
    distill: bool,
    extra_loss: nn.Module | None = None,
) -> QATLoss:
    """Loss of the fake-quant ``student`` (the model or its DDP wrapper, train mode) on a
    ``TemporalBatch``: ``train bev``'s forward (``train.bev.batch_forward``: the history encoded
    by the bare module without gradients) and detection loss, plus, when ``distill``, the
    distillation from the frozen float ``teacher`` on the same inputs with its own history. The
    losses are computed in float32 whatever the autocast precision of the forwards.

    ``extra_loss(student, outputs, tb)`` (e.g. TempDistiller's
    ``distill.temporal.TemporalDistillLoss``), when given, is added at every step and counted in
    the distillation value; ``tb`` then carries its longer queue (``extra_loss.queue_length``)
    and the student sees the newest ``cfg.queue_length`` frames of it."""
    from qd_perception.distill.temporal import last_frames
    from qd_perception.train.bev import as_float32, batch_forward

    long_tb, tb = tb, (last_frames(tb, cfg.queue_length) if extra_loss is not None else tb)
    out = batch_forward(student, tb)
    b = tb.current
    with torch.autocast(b.images.device.type, enabled=False):
        out = as_float32(out)
        det = detection_loss(out, b.targets, unwrap(student).cfg, extra=b).total
        total, d_val = det, float("nan")
        if distill and teacher is not None:
            with torch.no_grad():
                t_out = as_float32(batch_forward(teacher, tb, train=False))
            d = distill_loss(t_out, out, cfg.distill)
            if d is not None:
                total = total + cfg.distill.weight * d
                d_val = d.detach()
        if extra_loss is not None:
            e = extra_loss(unwrap(student), out, long_tb)
            total = total + e
            d_val = e.detach() + (0.0 if isinstance(d_val, float) else d_val)
    return QATLoss(total, det.detach(), d_val)


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _same_config(saved: Any, cfg: BEVQATConfig) -> bool:
    """Whether a checkpoint's ``qat_config`` is ``cfg`` (keys added since it was written take
    their defaults)."""
    try:
        return from_dict(BEVQATConfig, saved) == cfg
    except ConfigError:
        return False


def default_optimizer(cfg: BEVQATConfig) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    """AdamW with ``cfg.lr`` and ``cfg.weight_decay`` (the learning rate is set per step)."""
    return lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def run_qat(
    fp_model: nn.Module,
    dataset,
    cfg: BEVQATConfig,
    out_dir: str | Path,
    validate: Callable[[nn.Module, int], tuple[float, float]] | None = None,
    max_steps: int = 0,
    progress: bool = True,
    runtime: Runtime | None = None,
    dist: Dist | None = None,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
    extra_loss: nn.Module | None = None,
) -> tuple[nn.Module, QATState]:
    """Quantize ``fp_model`` (on the CPU, not modified) by ``cfg.method`` on ``dataset`` (a
    ``BEVDataset``).

    Resumable: ``out_dir/qat_state.pt`` (written atomically every ``checkpoint_minutes`` and at
    each epoch end) holds the student, optimizer and :class:`QATState`; calling again with the
    same config continues, on any number of processes. ``validate(model, epoch)`` -> (NDS, mAP)
    runs after each epoch (the val-NDS curve; rank 0 only, the others receive its result: pass
    one on every rank or on none). ``max_steps`` stops after that many optimizer steps in this
    call (tests; 0 = none). ``make_optimizer(params)`` replaces :func:`default_optimizer`.

    Data parallel with ``runtime``/``dist`` (``train/distributed.py``; default one process on the
    CPU): rank 0 alone calibrates (or reads the checkpoint) and sends the ranges and weights to
    the others, so every rank starts from the same quantizer ranges; DDP wraps the student only
    (the float teacher is frozen, a plain module on every rank); each rank trains on its share of
    the epoch's seeded order (one process: the order of a plain run), ``cfg.batch_size`` samples
    per micro-batch, ``runtime.grad_accum`` micro-batches per step, DDP averages the gradients;
    rank 0 alone writes the checkpoint, the curves and the progress bar. Returns the calibrated /
    trained fake-quant model (every stage quantized, eval mode, on the CPU) and the state.
    ``extra_loss``: an extra loss term (see :func:`qat_loss`) whose parameters (e.g.
    TempDistiller's generators) are optimized with the student's and checkpointed with them; it
    is on at every step, whatever ``distill`` says (which may be ``none`` or VGD besides). One
    process only: its parameters are outside the DDP wrapper.
    """
    from tqdm import tqdm

    from qd_perception.quant.model import set_mode
    from qd_perception.train.bev import batch_to, epoch_order
    from qd_perception.train.bev_data import NO_AUGMENT, TemporalSamples, collate_temporal

    runtime = runtime or Runtime(device="cpu")
    dist = dist or Dist()
    if extra_loss is not None and dist.world_size > 1:
        raise ConfigError("an extra loss term (TempDistiller in QD-BEV) runs in one process only for now")
    amp_dtype(runtime.amp, dist.device)  # a bad choice fails now, not after the calibration
    out = Path(out_dir)
    state_path = out / STATE_NAME
    qmodel = quantize_bevformer(fp_model, cfg.bits, cfg.target).to(dist.device)
    state = QATState()
    saved = None
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if state_path.exists():
            saved = torch.load(state_path, map_location="cpu", weights_only=False)
    saved = dist.broadcast(saved)  # --out need not be on a disk every machine sees
    if saved is not None:
        same = _same_config(saved.get("qat_config"), cfg)
        if not same or saved.get("model_config") != to_dict(fp_model.cfg):
            raise ConfigError(
                f"{state_path} was written with another config or model; use another --out or delete it"
            )
        qmodel.load_state_dict(saved["state_dict"])
        if (saved.get("extra_loss") is None) != (extra_loss is None):
            had = "without" if extra_loss is not None else "with"
            raise ConfigError(f"{state_path} was written {had} an extra loss term; use another --out")
        if extra_loss is not None:
            extra_loss.load_state_dict(saved["extra_loss"])
        set_mode(qmodel, "quantize")  # ranges come from the checkpoint
        state = QATState(**saved["state"])
        dist.log(f"resuming {state_path}: epoch {state.epoch} position {state.position} step {state.step}")
    else:
        # One calibration, sent to all: quantization ranges are identical on every rank by
        # construction, not because every rank happened to compute the same numbers.
        if dist.is_main:
            indices = even_indices(len(dataset), cfg.calib_samples)
            calibrate_bev(qmodel, dataset, indices, cfg.queue_length, progress=progress)
        broadcast_state(qmodel, dist)
        set_mode(qmodel, "quantize")
    if cfg.total_epochs == 0:
        return qmodel.cpu().eval(), state
    teacher = None
    if cfg.distill.kind != "none":
        teacher = copy.deepcopy(fp_model).to(dist.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    params = [*qmodel.parameters(), *(extra_loss.parameters() if extra_loss is not None else ())]
    optimizer = (make_optimizer or default_optimizer(cfg))(params)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
    n = len(dataset)
    per_epoch = min(cfg.max_samples, n) if cfg.max_samples else n
    step_samples = cfg.batch_size * dist.world_size * runtime.grad_accum  # global samples per step
    steps_per_epoch = math.ceil(per_epoch / step_samples)
    total_steps = cfg.total_epochs * steps_per_epoch
    queue = max(cfg.queue_length, extra_loss.queue_length) if extra_loss is not None else cfg.queue_length
    samples = TemporalSamples(dataset, queue, NO_AUGMENT)
    # BatchNorm is folded into the convs: nothing to synchronise, no SyncBatchNorm.
    ddp = wrap(qmodel, dist, sync_bn="off")
    stepper = Stepper(ddp, optimizer, dist, runtime.amp, cfg.grad_clip)

    def save() -> None:
        if not dist.is_main:
            return
        payload = {
            "qat_config": to_dict(cfg),
            "model_config": to_dict(fp_model.cfg),
            "state_dict": cpu_state(qmodel.state_dict()),
            "optimizer": cpu_state(optimizer.state_dict()),
            "state": state.__dict__,
            "world_size": dist.world_size,
            "grad_accum": runtime.grad_accum,
            "extra_loss": extra_loss.state_dict() if extra_loss is not None else None,
        }
        _save_atomic(payload, state_path)
        plot_curves(state, cfg, out / "qat_curves.png")

    start = time.monotonic() - state.elapsed_s
    last_save = time.monotonic()
    steps_here = 0
    bar = tqdm(total=total_steps, initial=min(state.step, total_steps), unit="step",
               desc=f"{cfg.method} {cfg.bits}", disable=not progress or not dist.is_main)  # fmt: skip
    stop = False
    while state.epoch < cfg.total_epochs and not stop:
        set_stages(qmodel, cfg.stages_at(state.epoch))
        distill = cfg.distill_at(state.epoch)
        loader = torch.utils.data.DataLoader(
            samples, batch_size=cfg.batch_size, collate_fn=collate_temporal,
            sampler=epoch_order(n, cfg.seed, state.epoch, state.position, dist, limit=per_epoch),
            num_workers=runtime.workers, persistent_workers=False,
            prefetch_factor=2 if runtime.workers else None,
        )  # fmt: skip

        def loss_fn(model: nn.Module, tb, distill: bool = distill) -> QATLoss:
            return qat_loss(model, teacher, tb, cfg, distill, extra_loss)

        for micro in accumulate(loader, runtime.grad_accum):
            # the schedule's step from the samples done: the same point of the run on any world size
            at = state.epoch * steps_per_epoch + math.ceil(state.position / step_samples)
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * at / max(1, total_steps)))
            for g in optimizer.param_groups:
                g["lr"] = lr
            losses = stepper.step([batch_to(tb, dist.device) for tb in micro], loss_fn)
            terms = dist.mean_terms(losses, ("total", "detection", "distill"))
            state.history.append(
                [state.step, state.epoch, terms["total"], terms["detection"], terms["distill"]]
            )
            state.position += min(step_samples, per_epoch - state.position)  # the padded tail counts once
            state.step += 1
            steps_here += 1
            state.elapsed_s = time.monotonic() - start
            bar.update(1)
            bar.set_postfix(epoch=state.epoch, loss=f"{terms['total']:.3f}")
            if max_steps and steps_here >= max_steps:
                stop = True
                break
            if time.monotonic() - last_save > 60 * cfg.checkpoint_minutes:
                save()
                last_save = time.monotonic()
        if state.position >= per_epoch:
            state.epoch += 1
            state.position = 0
            if validate is not None:
                scores = validate(qmodel, state.epoch) if dist.is_main else None
                nds, map_ = dist.broadcast(scores)
                state.val.append([state.epoch, nds, map_])
        save()
        last_save = time.monotonic()
    bar.close()
    set_stages(qmodel, {s: True for s in STAGES})
    return qmodel.cpu().eval(), state


def validator(
    dataroot: str | Path, version: str, split: str, out_dir: str | Path, history: bool = True
) -> Callable[[nn.Module, int], tuple[float, float]]:
    """``validate(model, epoch) -> (NDS, mAP)`` for :func:`run_qat`: runs the (fake-quant) model
    through the torch runtime over ``split`` in scene/time order (temporal state as online;
    ``history=False``: none, as the runtime runs a queue-1 model) and
    scores it with the devkit into ``out_dir/epoch_<k>``. No prediction at all scores 0 / 0 (the
    devkit cannot score an empty submission)."""
    from qd_perception.data.nuscenes import NuScenesReader
    from qd_perception.eval.bev import CAMERA_ONLY_META
    from qd_perception.eval.nuscenes_eval import evaluate
    from qd_perception.runtime.bev import TorchBEVDetector

    reader = NuScenesReader(dataroot, version, split, nsweeps=0, load_images=True)

    def validate(model: nn.Module, epoch: int) -> tuple[float, float]:
        # on the model's own device: the detector moves the module, which may be training on a GPU
        det = TorchBEVDetector(model, device=str(next(model.parameters()).device), history=history)
        preds = {}
        for i in range(len(reader)):
            f = reader[i]
            preds[f.token] = det.detect(f)
        if sum(len(d) for d in preds.values()) == 0:
            return 0.0, 0.0
        m = evaluate(dataroot, version, split, preds, Path(out_dir) / f"epoch_{epoch}", meta=CAMERA_ONLY_META)
        return float(m.nds), float(m.map)

    return validate


def plot_curves(state: QATState, cfg: BEVQATConfig, path: Path) -> None:
    """Loss per step (total, detection, distillation) and, when validated, NDS per epoch; dashed
    lines where a new stage is switched on (progressive methods). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = np.asarray(state.history, dtype=np.float64).reshape(-1, 5)
    ncols = 2 if state.val else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4), squeeze=False)
    ax = axes[0, 0]
    if len(h):
        k = max(1, len(h) // 50)
        kernel = np.ones(k) / k
        for col, name in ((2, "total"), (3, "detection"), (4, "distillation")):
            y = h[:, col]
            if np.all(np.isnan(y)):
                continue
            ax.plot(h[k - 1 :, 0], np.convolve(np.nan_to_num(y), kernel, mode="valid"), label=name)
        if cfg.method in ("progressive", "qd_bev"):
            for e in range(1, len(STAGES)):
                first = h[h[:, 1] == e * cfg.epochs_per_stage]
                if len(first):
                    ax.axvline(first[0, 0], color="grey", ls="--", lw=0.8)
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving mean)")
    ax.set_title(f"{cfg.method} {cfg.bits}")
    ax.grid(alpha=0.3)
    if state.val:
        v = np.asarray(state.val, dtype=np.float64)
        axes[0, 1].plot(v[:, 0], v[:, 1], "o-", label="NDS")
        axes[0, 1].plot(v[:, 0], v[:, 2], "s--", label="mAP")
        axes[0, 1].set_xlabel("epoch")
        axes[0, 1].set_title("validation")
        axes[0, 1].legend()
        axes[0, 1].grid(alpha=0.3)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


# ---- artefact -----------------------------------------------------------------------------------
def export_quantized_onnx(
    qmodel: nn.Module, path: str | Path, flavour: Target = "ort", history: bool = True
) -> Path:
    """The fake-quant model as a Q/DQ ONNX graph with the ``export bev`` contract (inputs, outputs,
    config in the metadata), via :func:`qd_perception.quant.export.export_onnx` (``ort``: Q/DQ on
    layer outputs too; ``trt``: inputs and weights only). Sub-8-bit grids are int8 Q/DQ preceded by
    a clamp (see ``quant/tensor_quant.py``). ``history``: see ``train.export_bev.export_onnx``."""
    import onnx

    from qd_perception.models.bevformer.model import BEVFormerExportWrapper
    from qd_perception.quant.export import export_onnx
    from qd_perception.runtime.bev import ONNX_INPUTS, ONNX_OUTPUTS, BEVDetectorBase, onnx_metadata
    from qd_perception.train.export_bev import OPSET, example_frames

    cfg = qmodel.cfg
    x = BEVDetectorBase(cfg).prepare(example_frames(cfg, 1)[0])
    args = tuple(torch.from_numpy(getattr(x, k)) for k in ONNX_INPUTS)
    path = Path(path)
    with torch.no_grad():
        export_onnx(
            BEVFormerExportWrapper(qmodel), args, path, flavour, ONNX_INPUTS, ONNX_OUTPUTS, opset=OPSET
        )
    m = onnx.load(str(path))
    for key, value in onnx_metadata(cfg, history).items():
        entry = m.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_output(path) as tmp:
        onnx.save(m, str(tmp))
    return path


def package_relative(path: str | Path) -> str:
    """``path`` relative to the package root (``share_dir()``: the checkout or the installed share
    directory) when inside it, else absolute."""
    from qd_perception.paths import share_dir

    p = Path(path).resolve()
    try:
        return str(p.relative_to(share_dir().resolve()))
    except (ValueError, FileNotFoundError):
        return str(p)


def write_bev_artefact(
    qmodel: nn.Module,
    fp_model: nn.Module,
    out_dir: str | Path,
    cfg: BEVQATConfig,
    fp32_model: str | Path,
    extra: dict[str, Any] | None = None,
    parity_frames=None,
) -> dict[str, Any]:
    """Write ``bevformer.onnx`` (Q/DQ), ``model.yaml`` and ``quant.yaml`` into ``out_dir``; returns
    the ``quant.yaml`` content. ORT flavour: the torch fake-quant vs ONNX Runtime parity
    (:func:`~qd_perception.train.export_bev.compare_backends`) on ``parity_frames`` (consecutive Frames of
    one scene; default two synthetic frames) is measured and recorded."""
    from qd_perception.models.bevformer.checkpoint import ARCH
    from qd_perception.quant.export import fold_weight_quantization, int32_bias_overflows
    from qd_perception.runtime.bev import TorchBEVDetector
    from qd_perception.train.export_bev import compare_backends, example_frames

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from qd_perception.runtime.bev import uses_history

    onnx_path = export_quantized_onnx(qmodel, out / ARTEFACT_ONNX, cfg.target, uses_history(cfg.queue_length))
    _write_yaml(out / "model.yaml", {"arch": ARCH, "model": to_dict(qmodel.cfg)})
    size, fp = model_size(qmodel), model_size(fp_model)
    wbits, abits = parse_bits(cfg.bits)
    info: dict[str, Any] = {
        "bits": cfg.bits,
        "method": cfg.method,
        "target": cfg.target,
        "fp32_model": package_relative(fp32_model),
        "fp32_mib": round(fp.fp32_bytes / 2**20, 4),
        "packed_mib": round(size.total_bytes / 2**20, 4),
        "compression": round(fp.fp32_bytes / max(size.total_bytes, 1), 2),
        "onnx": ARTEFACT_ONNX,
        "onnx_mib": round(onnx_path.stat().st_size / 2**20, 4),
        "stage_layers": stage_layer_counts(qmodel),
        "weights": f"{wbits}-bit per output channel symmetric"
        + (
            " (8-bit stored as 7-bit for ORT's x86 U8S8 kernels)"
            if cfg.target == "ort" and wbits == 8
            else ""
        ),
        "activations": f"{abits}-bit per tensor "
        + ("unsigned asymmetric" if cfg.target == "ort" else "symmetric"),
        "float": "LayerNorm, softmax, sigmoid, sampling locations / grid_sample, embeddings, "
        "outputs of sampling-offset / attention-weight linears, reference-point linear, logits and box codes",
        "schedule": to_dict(cfg),
    }
    if cfg.target == "ort":
        frames = parity_frames if parity_frames is not None else example_frames(qmodel.cfg, 2)
        x = TorchBEVDetector(qmodel).prepare(frames[0])
        feeds = {f.name: getattr(x, f.name) for f in fields(x)}
        info["onnx_folded"] = fold_weight_quantization(onnx_path, feeds=feeds)
        info["onnx_mib"] = round(onnx_path.stat().st_size / 2**20, 4)
        info["parity_max_abs_diff"], info["parity_detections"] = compare_backends(qmodel, onnx_path, frames)
    # only layers the runtime fuses add their bias on the int32 grid (float-output ones stay float)
    fused = {n for n, m in qmodel.named_modules() if getattr(m, "quantize_bias", False)}
    overflows = [o for o in int32_bias_overflows(qmodel) if o.split(":")[0] in fused]
    if overflows:
        info["warnings"] = ["bias overflows the int32 accumulator: " + "; ".join(overflows)]
    if extra:
        info.update(extra)
    _write_yaml(out / QUANT_YAML, info)
    return info


def _write_yaml(path: Path, data: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def read_quant_yaml(artefact: str | Path) -> dict[str, Any]:
    """``quant.yaml`` of an artefact directory (clear error when missing)."""
    p = Path(artefact) / QUANT_YAML
    if not p.is_file():
        raise ConfigError(f"{artefact} is not a `quantize bev` artefact (no {QUANT_YAML})")
    return yaml.safe_load(p.read_text())
