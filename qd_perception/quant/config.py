"""Quantization configuration (frozen dataclasses; YAML presets in ``config/quant/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qd_perception.config import load_yaml
from qd_perception.quant.calib import ACT_PRESETS, CALIBRATORS
from qd_perception.quant.quantizer import CalibSpec, QuantSpec


@dataclass(frozen=True)
class QuantConfig:
    """How :func:`~qd_perception.quant.model.quantize_model` quantizes a model.

    ``weight``/``act``: the weight and activation quantizers of every wrapped layer.
    ``quantize_outputs``: also quantize each layer's output (ORT flavour: lets ONNX Runtime fuse
    QLinearConv; TensorRT does its own output placement).
    ``quantize_bias``: convs add their bias on the int32 grid ``s_in * s_w`` (what ONNX Runtime's
    QLinearConv computes; the TensorRT preset leaves the bias float), so fake-quant matches the ORT
    artefact.
    ``skip``: ``fnmatch`` patterns of module names left in float (e.g. the heatmap output conv).
    ``stages``: module-name prefix -> stage name; the longest matching prefix wins. Used to
    enable quantization stage by stage (QD-BEV progressive QAT) with ``set_quant_state``.
    """

    weight: QuantSpec = field(default_factory=lambda: QuantSpec(bits=8, per_channel=True))
    act: QuantSpec = field(default_factory=QuantSpec)
    quantize_outputs: bool = False
    quantize_bias: bool = False
    skip: tuple[str, ...] = ()
    stages: dict[str, str] = field(default_factory=dict)


def load_quant_config(path: str | Path, key: str | None = None) -> QuantConfig:
    return load_yaml(QuantConfig, path, key)


Target = Literal["ort", "trt"]
#: 8-bit weights of ONNX Runtime artefacts: ``7bit`` (reduce range: exact on every x86 CPU),
#: ``8bit`` (full grid: exact only with VNNI), ``auto`` (8-bit where this CPU has VNNI).
OrtWeights = Literal["auto", "7bit", "8bit"]
ORT_WEIGHTS: tuple[str, ...] = ("auto", "7bit", "8bit")
VNNI_FLAGS: tuple[str, ...] = ("avx512_vnni", "avx_vnni")


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has 8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI, from the
    Linux ``/proc/cpuinfo`` flags or the given text). With them ONNX Runtime's U8S8 kernels
    accumulate u8 x s8 products in int32 (VPDPBUSD); without them pairs of products are added in
    int16 (VPMADDUBSW) and saturate on full-range 8-bit weights (``quant/export.py``).
    False where the flags cannot be read (the safe answer: 7-bit weights)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return any(f in line.split(":", 1)[-1].split() for f in VNNI_FLAGS)
    return False


def ort_reduce_range(weights: OrtWeights) -> bool:
    """``--ort-weights`` -> whether 8-bit ORT weights are stored on the 7-bit grid."""
    if weights not in ORT_WEIGHTS:
        raise ValueError(f"ort weights must be one of {ORT_WEIGHTS}, got {weights!r}")
    return {"7bit": True, "8bit": False}.get(weights, not cpu_has_vnni())


def preset(method: str, bits: str = "w8a8", target: Target = "ort", reduce_range: bool = True) -> QuantConfig:
    """The CLI's presets: ``method`` picks the activation calibrator, ``bits`` is ``wXaY``.

    ``target="ort"`` (ONNX Runtime CPU): unsigned asymmetric activations (ReLU outputs use all
    256 levels and ORT drops the ReLU), output quantizers on (QLinearConv fusion), and with
    ``reduce_range`` 8-bit weights become 7-bit (no int16 saturation in ORT's x86 U8S8 kernels
    without VNNI, see ``quant/export.py``). ``target="trt"``: symmetric int8 everywhere, Q/DQ on
    inputs and weights only (TensorRT explicit quantization).
    ``method``: an activation preset of :data:`~qd_perception.quant.calib.ACT_PRESETS` (``minmax``,
    ``percentile``, ...), ``lidar_ptq`` (starts from max-min) or a calibrator name; calibrators
    of |x| give symmetric activations, asymmetric-only ones (``uh``) are ORT only.
    """
    try:
        wb, ab = bits.lower().removeprefix("w").split("a")
        wbits, abits = int(wb), int(ab)
    except ValueError as e:
        raise ValueError(f"bits must look like w8a8 / w4a8, got {bits!r}") from e
    if target not in ("ort", "trt"):
        raise ValueError(f"target must be ort or trt, got {target!r}")
    act_method = {"lidar_ptq": "max", **ACT_PRESETS}.get(method, method)
    kind = CALIBRATORS.get(act_method)
    if kind is None:
        raise ValueError(f"unknown method {method!r}")
    if target == "trt" and kind.ranges == "asymmetric":
        raise ValueError(
            f"{method} gives asymmetric ranges; TensorRT needs symmetric int8 (use --target ort)"
        )
    symmetric = target == "trt" or kind.ranges == "symmetric"
    act = QuantSpec(bits=abits, symmetric=symmetric, calib=CalibSpec(method=act_method))
    if target == "ort" and reduce_range and wbits == 8:
        wbits = 7
    weight = QuantSpec(bits=wbits, per_channel=True, calib=CalibSpec(method="max"))
    ort = target == "ort"
    return QuantConfig(weight=weight, act=act, quantize_outputs=ort, quantize_bias=ort)
