"""Model-level operations: swap in quantized modules, set modes per stage, calibrate, fold BN.

Typical PTQ::

    qmodel = quantize_model(fold_bn(model), cfg)
    calibrate(qmodel, lambda: [qmodel(x) for x in batches])   # collect, compute ranges
    # qmodel now runs fake-quant; export with quant.export

Progressive QAT (QD-BEV) enables one more stage at a time::

    qmodel = quantize_model(model, QuantConfig(stages={"img_backbone": "backbone", "img_neck": "neck"}))
    set_quant_state(qmodel, {"backbone": True, "neck": False})
"""

from __future__ import annotations

import fnmatch
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from qd_perception.quant.config import QuantConfig
from qd_perception.quant.nn.modules import SPCONV_WRAPPERS, WRAPPERS, QuantModule
from qd_perception.quant.quantizer import Mode, TensorQuantizer


def stage_of(name: str, stages: Mapping[str, str]) -> str | None:
    """Stage of module ``name``: the stage of the longest prefix (on ``.`` boundaries) that matches."""
    best, best_len = None, -1
    for prefix, stage in stages.items():
        if (name == prefix or name.startswith(prefix + ".") or prefix == "") and len(prefix) > best_len:
            best, best_len = stage, len(prefix)
    return best


def quantize_model(model: nn.Module, cfg: QuantConfig | None = None) -> nn.Module:
    """Replace (in place) every module whose exact type is in :data:`WRAPPERS` by its quantized
    wrapper, except names matching ``cfg.skip``. Quantizers start ``disabled``; returns ``model``."""
    cfg = cfg or QuantConfig()
    if isinstance(model, QuantModule):
        raise ValueError("quantize_model needs a container module, got a single layer")
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            wrapper = WRAPPERS.get(type(child))
            if wrapper is None or any(fnmatch.fnmatchcase(full, p) for p in cfg.skip):
                continue
            # sparse convs run in torch only (no ONNX export): an output quantizer there would
            # cost accuracy for no deployment benefit
            out_q = cfg.quantize_outputs and wrapper not in SPCONV_WRAPPERS.values()
            q = wrapper.adopt(child, cfg.weight, cfg.act, out_q, stage_of(full, cfg.stages))
            # ORT fuses plain convs into QLinearConv (int32 bias), and a linear with an output
            # quantizer into QGemm (int32 bias); ConvTranspose runs in float there
            fused = isinstance(q, (nn.Conv1d, nn.Conv2d)) or (isinstance(q, nn.Linear) and out_q)
            q.quantize_bias = cfg.quantize_bias and fused
            setattr(module, child_name, q)
    if cfg.quantize_outputs:
        _move_output_quantizers_after_relu(model, cfg)
    return model


_RELUS = (nn.ReLU, nn.ReLU6)


def _move_output_quantizers_after_relu(model: nn.Module, cfg: QuantConfig) -> None:
    """In ``nn.Sequential`` blocks ``QuantConv -> [Identity | BN]* -> ReLU``, quantize after the ReLU
    instead of after the conv: wrap the ReLU in :class:`QuantAct` and drop the conv's output
    quantizer. With an unsigned (asymmetric) activation range the Q after a ReLU has zero point
    ``qmin``, so ONNX Runtime deletes the ReLU and fuses ``DQ -> Conv -> Q`` into QLinearConv.
    """
    from qd_perception.quant.nn.modules import QuantAct

    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for i, a in enumerate(names):
            conv = seq._modules[a]
            if not isinstance(conv, QuantModule) or conv.output_quantizer is None:
                continue
            j = i + 1
            while j < len(names) and isinstance(seq._modules[names[j]], (nn.Identity, nn.BatchNorm2d)):
                j += 1
            if j < len(names) and isinstance(seq._modules[names[j]], _RELUS):
                if any(isinstance(seq._modules[names[k]], nn.BatchNorm2d) for k in range(i + 1, j)):
                    continue  # unfolded BN in between: keep the output quantizer on the conv
                seq._modules[names[j]] = QuantAct(seq._modules[names[j]], cfg.act, conv.quant_stage)
                conv.output_quantizer = None


def quant_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every quantized layer (anything with ``quantizers()``)."""
    for name, m in model.named_modules():
        if isinstance(m, QuantModule) or (hasattr(m, "quantizers") and callable(m.quantizers)):
            yield name, m


def quantizers(model: nn.Module) -> Iterator[tuple[str, TensorQuantizer]]:
    for name, m in model.named_modules():
        if isinstance(m, TensorQuantizer):
            yield name, m


def chained_quantizers(model: nn.Module, run: Callable[[], object]) -> dict[int, TensorQuantizer]:
    """Activation quantizers fed *directly* by another quantizer's output, found by running
    ``run()`` once (no gradient): ``id(consumer) -> producer``. In the ORT graph such a pair (a
    layer's output Q/DQ, then the next layer's input Q/DQ) quantizes one tensor twice; with equal
    ranges the second is an identity ORT removes, with different ranges a second rounding."""
    acts = [q for n, q in quantizers(model) if not n.endswith("weight_quantizer") and q.mode == "quantize"]
    produced: dict[int, TensorQuantizer] = {}
    keep: list[torch.Tensor] = []  # keep outputs alive so their ids are not reused in the pass
    links: dict[int, TensorQuantizer] = {}

    def hook(q: TensorQuantizer):
        def f(_m, args, y):
            src = produced.get(id(args[0])) if args else None
            if src is not None and src is not q:
                links[id(q)] = src
            if isinstance(y, torch.Tensor):
                produced[id(y)] = q
                keep.append(y)

        return f

    handles = [q.register_forward_hook(hook(q)) for q in acts]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return links


def learnable_activation_steps(model: nn.Module, run: Callable[[], object]) -> list[nn.Parameter]:
    """Make the step of every quantizing activation quantizer learnable (LSQ) and return the
    parameters. A quantizer fed directly by another one with the same grid (see
    :func:`chained_quantizers`) *shares* its producer's step, so optimising the steps (TGPL,
    joint rounding) cannot split one deployed tensor into two roundings."""
    links = chained_quantizers(model, run)
    acts = [q for n, q in quantizers(model) if not n.endswith("weight_quantizer") and q.mode == "quantize"]
    params: list[nn.Parameter] = []
    tied: list[tuple[TensorQuantizer, TensorQuantizer]] = []
    for q in acts:
        src = links.get(id(q))
        same_grid = (
            src is not None
            and (src.bits, src.symmetric, src.axis) == (q.bits, q.symmetric, q.axis)
            and torch.allclose(src.amax, q.amax, rtol=1e-6)
            and (q.symmetric or torch.allclose(src.amin, q.amin, rtol=1e-6, atol=1e-12))
        )
        if same_grid:
            tied.append((q, src))
        else:
            params.append(q.enable_lsq())
    for q, src in tied:
        while id(src) in links and src.scale is None:  # a chain: share the root's step
            src = links[id(src)]
        if src.scale is None:
            params.append(q.enable_lsq())
            continue
        q.scale, q._lsq_zp, q.lsq_active = src.scale, src._lsq_zp, True
    return params


def set_mode(model: nn.Module, mode: Mode, weights: bool = True, activations: bool = True) -> None:
    """Set the mode of all weight and/or activation quantizers."""
    for name, q in quantizers(model):
        is_weight = name.endswith("weight_quantizer")
        if (is_weight and weights) or (not is_weight and activations):
            q.set_mode(mode)


def set_quant_state(
    model: nn.Module, stages: Mapping[str, bool], default: bool | None = None
) -> dict[str, int]:
    """Enable (``quantize``) or disable the quantizers of each named stage.

    Layers whose ``quant_stage`` is not in ``stages`` get ``default`` (``None`` = left as they are).
    Returns the number of layers switched per stage (so a typo in a stage name shows up as 0).
    Enabling a layer that has never been calibrated raises.
    """
    counts = {s: 0 for s in stages}
    for name, m in quant_modules(model):
        stage = getattr(m, "quant_stage", None)
        on = stages.get(stage, default) if stage is not None else default
        if on is None:
            continue
        for q in m.quantizers():
            if on and not q.calibrated:
                raise RuntimeError(f"{name}: enabling an uncalibrated quantizer (calibrate first)")
            q.set_mode("quantize" if on else "disabled")
        if stage in counts:
            counts[stage] += 1
    return counts


@torch.no_grad()
def calibrate_weights(model: nn.Module) -> None:
    """Weight ranges straight from the weights (one collect each)."""
    for _, m in quant_modules(model):
        wq = getattr(m, "weight_quantizer", None)
        if wq is None:
            continue
        wq.set_mode("calibrate")
        wq(m.weight)
        wq.load_calib_amax()
        wq.set_mode("quantize")


@contextmanager
def collecting(model: nn.Module) -> Iterator[None]:
    """Inside: activation quantizers collect (identity), weight quantizers off; after: ranges computed
    and every quantizer in ``quantize`` mode."""
    set_mode(model, "calibrate", weights=False)
    set_mode(model, "disabled", activations=False)
    yield
    compute_ranges(model)


def compute_ranges(model: nn.Module) -> dict[str, float]:
    """Compute every activation range from its calibrator, then the weight ranges; switch to
    ``quantize``. Returns seconds spent per quantizer (histogram searches are not free)."""
    timing: dict[str, float] = {}
    for name, q in quantizers(model):
        if name.endswith("weight_quantizer") or q.calibrator is None:
            continue
        if q.calibrator.empty:
            raise RuntimeError(f"{name}: no calibration data reached this quantizer")
        t0 = time.perf_counter()
        q.load_calib_amax()
        timing[name] = time.perf_counter() - t0
        q.set_mode("quantize")
    calibrate_weights(model)
    return timing


def calibrate(model: nn.Module, run: Callable[[], object]) -> dict[str, float]:
    """Run ``run()`` (forward passes over the calibration data) collecting statistics, then compute
    all ranges. Returns per-quantizer compute times."""
    model.eval()
    set_mode(model, "calibrate", weights=False)
    set_mode(model, "disabled", activations=False)
    run()
    return compute_ranges(model)


# ---- batch-norm folding ---------------------------------------------------------------------------
_FOLDABLE: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear, *SPCONV_WRAPPERS)


def _out_axis(conv: nn.Module) -> int:
    return 1 if isinstance(conv, nn.ConvTranspose2d) else 0


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold an eval-mode BatchNorm into the preceding conv / linear (in place; conv gets a bias)."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    w = conv.weight
    shape = [1] * w.dim()
    shape[_out_axis(conv)] = -1
    conv.weight.copy_(w * factor.reshape(shape))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_b = (b - bn.running_mean) * factor + beta
    if conv.bias is None:
        conv.bias = nn.Parameter(new_b)
    else:
        conv.bias.copy_(new_b)


def _sequentials(model: nn.Module) -> list[nn.Module]:
    seqs: list[type] = [nn.Sequential]
    try:
        import spconv.pytorch as spconv

        seqs.append(spconv.SparseSequential)
    except ImportError:
        pass
    return [m for m in model.modules() if isinstance(m, tuple(seqs))]


def fold_bn(model: nn.Module, include_sparse: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a Conv / ConvTranspose / Linear / spconv conv
    inside an ``nn.Sequential`` or spconv ``SparseSequential`` (CenterPoint's conv-bn-relu blocks);
    the BN becomes ``nn.Identity``. Call it on the float model, before :func:`quantize_model`.

    Deployment graphs need it (ORT only fuses QLinearConv when no BN sits between conv and Q), and
    per-channel weight ranges must see the weights the runtime multiplies. In place; returns
    ``model``. Other BNs (e.g. the PFN's, applied on a permuted tensor) stay.

    spconv convs are folded only with ``include_sparse=True``: spconv 2.3.8's CPU kernels reject a
    bias in eval mode, so a folded *float* spconv layer no longer runs on CPU (the quantized
    wrappers add the bias themselves and are fine).
    """
    model.eval()
    for seq in _sequentials(model):
        names = list(seq._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = seq._modules[a], seq._modules[b]
            sparse = type(conv).__name__ in ("SubMConv3d", "SparseConv3d", "SparseInverseConv3d")
            sparse = sparse or type(conv) in SPCONV_WRAPPERS.values()
            foldable = (type(conv) in _FOLDABLE and not sparse) or (sparse and include_sparse)
            if (
                foldable
                and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                and bn.track_running_stats
                and bn.num_features == conv.weight.shape[_out_axis(conv)]
                and getattr(conv, "groups", 1) == 1
            ):
                fold_conv_bn(conv, bn)
                seq._modules[b] = nn.Identity()
    return model
