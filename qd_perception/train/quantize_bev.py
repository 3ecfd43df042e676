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
"""

from __future__ import annotations

import copy
import fnmatch
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn

from qd_perception.config import ConfigError, to_dict
from qd_perception.distill.vgd import DistillConfig, distill_loss
from qd_perception.fileio import atomic_output, atomic_write_text
from qd_perception.models.bevformer.losses import detection_loss
from qd_perception.quant.config import QuantConfig, Target, preset
from qd_perception.quant.model import calibrate, fold_bn, fold_conv_bn, quant_modules, quantize_model
from qd_perception.quant.nn.modules import QuantModule
from qd_perception.quant.qat import ProgressiveQAT
from qd_perception.quant.size import model_size
from qd_perception.runtime.bev import ARTEFACT_ONNX

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
#: ``nn.Sequential`` branches whose last layer produces a graph output (logits / box codes)
OUTPUT_BRANCH_PATTERNS: tuple[str, ...] = ("decoder.cls_branches.*", "decoder.reg_branches.*")
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
    return replace(preset("minmax", bits, target), stages=stage_table(model), skip=FLOAT_LAYERS)


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
def forward_sample(model: nn.Module, dataset, index: int, queue_length: int):
    """``(BEVFormerOutputs, Batch)`` of sample ``index`` (batch of one) with its temporal input:
    the history's BEV computed as ``train bev`` computes it (``train.bev.encode_history``)."""
    from qd_perception.train.bev import encode_history
    from qd_perception.train.bev_data import NO_AUGMENT, TemporalSamples, collate_temporal

    tb = collate_temporal([TemporalSamples(dataset, queue_length, NO_AUGMENT)[index]])
    prev = encode_history(model, tb)
    batch = tb.current
    return model(batch.images, batch.intrinsics, batch.cam2ego, *prev), batch


def even_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all when ``k`` is 0 or >= n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def calibrate_bev(qmodel: nn.Module, dataset, indices: Sequence[int], queue_length: int = 2) -> None:
    """Min-max ranges of every quantizer from forward passes over ``indices``; afterwards every
    quantizer is in ``quantize`` mode."""
    from tqdm import tqdm

    qmodel.eval()

    def run() -> None:
        with torch.no_grad():
            for i in tqdm(indices, desc="calibrate", unit="sample", leave=False):
                forward_sample(qmodel, dataset, i, queue_length)

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
    in a seeded random order).
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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        parse_bits(self.bits)
        if self.epochs_per_stage < 1 or self.extra_epochs < 0 or self.epochs < 0 or self.queue_length < 1:
            raise ConfigError("epochs_per_stage and queue_length must be >= 1, epochs >= 0")

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
    position: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    #: rows [step, epoch, total, detection, distill (nan when off)]
    history: list[list[float]] = field(default_factory=list)
    #: rows [epoch (completed), NDS, mAP]
    val: list[list[float]] = field(default_factory=list)


def qat_step(
    qmodel: nn.Module,
    teacher: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    dataset,
    index: int,
    cfg: BEVQATConfig,
    distill: bool,
) -> tuple[float, float, float]:
    """One optimisation step of the fake-quant student on sample ``index``; returns
    (total, detection, distillation or nan). The task loss is ``detection_loss`` (the one entry
    point); ``teacher`` (frozen float model) runs on the same inputs with its own history."""
    qmodel.train()
    out, batch = forward_sample(qmodel, dataset, index, cfg.queue_length)
    det = detection_loss(out, batch.targets, qmodel.cfg, extra=batch)
    total = det.total
    d_val = float("nan")
    if distill and teacher is not None:
        with torch.no_grad():
            t_out, _ = forward_sample(teacher, dataset, index, cfg.queue_length)
        d = distill_loss(t_out, out, cfg.distill)
        if d is not None:
            total = total + cfg.distill.weight * d
            d_val = float(d.detach())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(qmodel.parameters(), cfg.grad_clip)
    optimizer.step()
    return float(total.detach()), float(det.total.detach()), d_val


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def run_qat(
    fp_model: nn.Module,
    dataset,
    cfg: BEVQATConfig,
    out_dir: str | Path,
    validate: Callable[[nn.Module, int], tuple[float, float]] | None = None,
    max_steps: int = 0,
    progress: bool = True,
) -> tuple[nn.Module, QATState]:
    """Quantize ``fp_model`` (not modified) by ``cfg.method`` on ``dataset`` (a ``BEVDataset``).

    Resumable: ``out_dir/qat_state.pt`` (written atomically every ``checkpoint_minutes`` and at
    each epoch end) holds the student, optimizer and :class:`QATState`; calling again with the
    same config continues. ``validate(model, epoch)`` -> (NDS, mAP) runs after each epoch (the
    val-NDS curve). ``max_steps`` stops after that many steps in this call (tests; 0 = none).
    Returns the calibrated / trained fake-quant model (every stage quantized) and the state.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_NAME
    qmodel = quantize_bevformer(fp_model, cfg.bits, cfg.target)
    state = QATState()
    saved = None
    if state_path.exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        if saved.get("qat_config") != to_dict(cfg) or saved.get("model_config") != to_dict(fp_model.cfg):
            raise ConfigError(
                f"{state_path} was written with another config or model; use another --out or delete it"
            )
        qmodel.load_state_dict(saved["state_dict"])
        from qd_perception.quant.model import set_mode

        set_mode(qmodel, "quantize")  # ranges come from the checkpoint
        state = QATState(**saved["state"])
        print(f"resuming {state_path}: epoch {state.epoch} position {state.position} step {state.step}")
    else:
        calibrate_bev(qmodel, dataset, even_indices(len(dataset), cfg.calib_samples), cfg.queue_length)
    if cfg.total_epochs == 0:
        return qmodel, state
    teacher = None
    if cfg.distill.kind != "none":
        teacher = copy.deepcopy(fp_model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(qmodel.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
    n = len(dataset)
    per_epoch = min(cfg.max_samples, n) if cfg.max_samples else n
    total_steps = cfg.total_epochs * per_epoch

    def save() -> None:
        payload = {
            "qat_config": to_dict(cfg),
            "model_config": to_dict(fp_model.cfg),
            "state_dict": qmodel.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": state.__dict__,
        }
        _save_atomic(payload, state_path)
        plot_curves(state, cfg, out / "qat_curves.png")

    start = time.monotonic() - state.elapsed_s
    last_save = time.monotonic()
    steps_here = 0
    bar = tqdm(total=total_steps, initial=state.step, unit="step", desc=f"{cfg.method} {cfg.bits}",
               disable=not progress)  # fmt: skip
    stop = False
    while state.epoch < cfg.total_epochs and not stop:
        set_stages(qmodel, cfg.stages_at(state.epoch))
        distill = cfg.distill_at(state.epoch)
        order = np.random.default_rng(cfg.seed + state.epoch).permutation(n)[:per_epoch]
        while state.position < per_epoch:
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * state.step / max(1, total_steps)))
            for g in optimizer.param_groups:
                g["lr"] = lr
            tot, det, dis = qat_step(
                qmodel, teacher, optimizer, dataset, int(order[state.position]), cfg, distill
            )
            state.history.append([state.step, state.epoch, tot, det, dis])
            state.position += 1
            state.step += 1
            steps_here += 1
            state.elapsed_s = time.monotonic() - start
            bar.update(1)
            bar.set_postfix(epoch=state.epoch, loss=f"{tot:.3f}")
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
                nds, map_ = validate(qmodel, state.epoch)
                state.val.append([state.epoch, nds, map_])
        save()
        last_save = time.monotonic()
    bar.close()
    set_stages(qmodel, {s: True for s in STAGES})
    qmodel.eval()
    return qmodel, state


def validator(
    dataroot: str | Path, version: str, split: str, out_dir: str | Path
) -> Callable[[nn.Module, int], tuple[float, float]]:
    """``validate(model, epoch) -> (NDS, mAP)`` for :func:`run_qat`: runs the (fake-quant) model
    through the torch runtime over ``split`` in scene/time order (temporal state as online) and
    scores it with the devkit into ``out_dir/epoch_<k>``. No prediction at all scores 0 / 0 (the
    devkit cannot score an empty submission)."""
    from qd_perception.data.nuscenes import NuScenesReader
    from qd_perception.eval.bev import CAMERA_ONLY_META
    from qd_perception.eval.nuscenes_eval import evaluate
    from qd_perception.runtime.bev import TorchBEVDetector

    reader = NuScenesReader(dataroot, version, split, nsweeps=0, load_images=True)

    def validate(model: nn.Module, epoch: int) -> tuple[float, float]:
        det = TorchBEVDetector(model)
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
def export_quantized_onnx(qmodel: nn.Module, path: str | Path, flavour: Target = "ort") -> Path:
    """The fake-quant model as a Q/DQ ONNX graph with the ``export bev`` contract (inputs, outputs,
    config in the metadata), via :func:`qd_perception.quant.export.export_onnx` (``ort``: Q/DQ on
    layer outputs too; ``trt``: inputs and weights only). Sub-8-bit grids are int8 Q/DQ preceded by
    a clamp (see ``quant/tensor_quant.py``)."""
    import json

    import onnx

    from qd_perception.models.bevformer.model import BEVFormerExportWrapper
    from qd_perception.quant.export import export_onnx
    from qd_perception.runtime.bev import ONNX_CONFIG_KEY, ONNX_INPUTS, ONNX_OUTPUTS, BEVDetectorBase
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
    entry = m.metadata_props.add()
    entry.key, entry.value = ONNX_CONFIG_KEY, json.dumps(to_dict(cfg))
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
) -> dict[str, Any]:
    """Write ``bevformer.onnx`` (Q/DQ), ``model.yaml`` and ``quant.yaml`` into ``out_dir``; returns
    the ``quant.yaml`` content. ORT flavour: the torch fake-quant vs ONNX Runtime parity on two
    consecutive synthetic frames is measured and recorded."""
    from qd_perception.models.bevformer.checkpoint import ARCH
    from qd_perception.quant.export import int32_bias_overflows
    from qd_perception.train.export_bev import parity

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_quantized_onnx(qmodel, out / ARTEFACT_ONNX, cfg.target)
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
        info["parity_max_abs_diff"] = parity(qmodel, onnx_path)
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
