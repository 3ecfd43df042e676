"""Q/DQ ONNX export of a calibrated fake-quant model, in two flavours.

* ``trt`` — TensorRT explicit quantization: QuantizeLinear/DequantizeLinear on the inputs and
  weights of every quantized conv / linear; TensorRT itself decides where outputs are requantized.
  Every ``output_quantizer`` (conv outputs and :class:`~qd_perception.quant.nn.QuantAct`) is off.
* ``ort`` — ONNX Runtime: Q/DQ also on the layer outputs, so ORT's QDQ transformer fuses
  ``DQ -> Conv -> Q`` into QLinearConv (a graph with Q/DQ only on inputs runs *slower* than FP32 on
  ORT CPU: the int8 tensors are dequantized and convolved in float). Use unsigned activations
  (``symmetric: false``) after ReLUs: then the Q after the ReLU has zero point ``qmin`` and ORT
  removes the ReLU, leaving a chain of QLinearConv.

**Saturation on x86 without VNNI.** ORT runs u8 activations x s8 weights with VPMADDUBSW, which
adds pairs of products in int16 and saturates when the weights use the full int8 range: measured
on this AVX2 machine, a w8a8 3-conv net came out up to 28 output steps off, w7a8 at most 1. So the
ORT artefacts use 7-bit weights ("reduce range", as ``onnxruntime.quantization`` does), stored as
int8 in [-64, 63]; TensorRT artefacts keep 8-bit weights.

Sub-8-bit quantizers export as int8 Q/DQ preceded by a clamp to the narrower range (see
``tensor_quant``): the exported graph computes the same values; no runtime here executes int4.
"""

from __future__ import annotations

import collections
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from qd_perception.fileio import atomic_output
from qd_perception.quant.model import quantizers

Flavour = Literal["ort", "trt"]
FLAVOURS: tuple[str, ...] = ("ort", "trt")


def _check_exportable(model: nn.Module) -> None:
    for name, q in quantizers(model):
        if q.rounding is not None:
            raise RuntimeError(f"{name}: AdaRound still attached; call AdaRound.finalize() before export")
        if q.mode == "calibrate":
            raise RuntimeError(f"{name}: still in calibrate mode; compute ranges first")


def export_onnx(
    model: nn.Module,
    args: tuple,
    path: str | Path,
    flavour: Flavour = "ort",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: dict | None = None,
    opset: int = 17,
) -> Path:
    """Export ``model(*args)`` to ``path`` (written atomically). Returns the path.

    Output quantizers are switched per flavour for the export and restored afterwards; learned
    (LSQ) step sizes are frozen into the ranges for good.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    _check_exportable(model)
    path = Path(path)
    saved = {n: q.mode for n, q in quantizers(model)}
    was_training = model.training
    model.eval()
    try:
        for _, q in quantizers(model):
            q.freeze_lsq()  # learned step sizes become plain ranges (Q/DQ needs constants)
        if flavour == "trt":
            for n, q in quantizers(model):
                if n.endswith("output_quantizer"):
                    q.set_mode("disabled")
        with atomic_output(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                args,
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    finally:
        for n, q in quantizers(model):
            q.mode = saved[n]
        model.train(was_training)
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def int32_bias_overflows(model: nn.Module) -> list[str]:
    """Layers whose bias does not fit the int32 accumulator of an integer conv.

    ORT's QLinearConv (and TensorRT) quantize a conv's float bias with scale ``s_in * s_w[c]``; a
    tiny input range (e.g. an untrained encoder whose features are ~1e-4) makes
    ``|b| / (s_in * s_w)`` exceed 2^31 and the bias wraps silently. Returns "name: ratio" for each
    offending layer (empty = safe).
    """
    from qd_perception.quant.nn.modules import QuantModule

    bad = []
    for name, m in model.named_modules():
        if not isinstance(m, QuantModule) or getattr(m, "bias", None) is None:
            continue
        step = m.bias_scale()
        if step is None:
            continue
        ratio = float((m.bias.detach().abs() / step).max())
        if ratio >= 2**31 - 1:
            bad.append(f"{name}: |bias| / (s_in * s_w) = {ratio:.3g}")
    return bad


def onnx_op_counts(path: str | Path) -> collections.Counter:
    """Op types in an ONNX file."""
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def ort_optimized_op_counts(path: str | Path, threads: int = 1) -> collections.Counter:
    """Op types of the graph ONNX Runtime actually runs after its graph optimisations
    (dumped with ``SessionOptions.optimized_model_filepath``)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        # EXTENDED (not ALL) so the dump holds no machine-specific NCHWc layout ops
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx_op_counts(so.optimized_model_filepath)


def fold_weight_quantization(
    path: str | Path, threads: int = 1, seed: int = 0, feeds: dict | None = None
) -> dict[str, float]:
    """Rewrite an ORT-flavour Q/DQ graph in place with its weights stored as int8 initializers.

    ``torch.onnx.export`` writes each quantized weight as its float tensor followed by the
    fake-quant arithmetic (Div, Round, Clip, Cast, ... ~4000 nodes for the pillar backbone),
    which ONNX Runtime folds at every session start. Its *basic* optimisation level (constant
    folding and other hardware-independent rewrites, standard ONNX ops only) leaves exactly
    ``int8 weight -> DequantizeLinear``, the standard QDQ form: the file shrinks ~4.5x and
    computes the same. Checked here: both graphs on ``feeds`` (input name -> array; default one
    random input: seeded, non-negative, the input's shape with dynamic axes at 1, or 64 for the
    spatial ones — give real inputs where random ones are meaningless, e.g. camera intrinsics)
    must agree to 1e-5, else the
    file is left as it was and ``ValueError`` is raised. Written atomically. Returns
    ``{"from_mib", "to_mib", "max_abs_diff"}``.
    """
    import numpy as np
    import onnxruntime as ort

    path = Path(path)
    # the folded graph is checked before it replaces the file: an error leaves the file as it was
    with atomic_output(path) as tmp_path:
        tmp = str(tmp_path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = tmp
        so.log_severity_level = 3
        before = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        if feeds is None:
            rng = np.random.default_rng(seed)
            feeds = {}
            for i in before.get_inputs():
                shape = [d if isinstance(d, int) else (1 if k == 0 else 64) for k, d in enumerate(i.shape)]
                feeds[i.name] = rng.uniform(0, 2, shape).astype(np.float32)
        plain = ort.SessionOptions()
        plain.intra_op_num_threads = threads
        plain.log_severity_level = 3
        ref = ort.InferenceSession(str(path), plain, providers=["CPUExecutionProvider"]).run(None, feeds)
        got = ort.InferenceSession(tmp, plain, providers=["CPUExecutionProvider"]).run(None, feeds)
        diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(ref, got))
        if not diff <= 1e-5:
            raise ValueError(f"{path}: folded graph differs from the exported one (max |diff| {diff:.3g})")
        sizes = (path.stat().st_size / 2**20, tmp_path.stat().st_size / 2**20)
    return {"from_mib": round(sizes[0], 3), "to_mib": round(sizes[1], 3), "max_abs_diff": diff}
