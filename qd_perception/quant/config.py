"""Quantization configuration (frozen dataclasses; YAML presets in ``config/quant/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qd_perception.config import load_yaml
from qd_perception.quant.quantizer import CalibSpec, QuantSpec


@dataclass(frozen=True)
class QuantConfig:
    """How :func:`~qd_perception.quant.model.quantize_model` quantizes a model.

    ``weight``/``act``: the weight and activation quantizers of every wrapped layer.
    ``quantize_outputs``: also quantize each layer's output (ORT flavour: lets ONNX Runtime fuse
    QLinearConv; TensorRT does its own output placement).
    ``skip``: ``fnmatch`` patterns of module names left in float (e.g. the heatmap output conv).
    ``stages``: module-name prefix -> stage name; the longest matching prefix wins. Used to
    enable quantization stage by stage (QD-BEV progressive QAT) with ``set_quant_state``.
    """

    weight: QuantSpec = field(default_factory=lambda: QuantSpec(bits=8, per_channel=True))
    act: QuantSpec = field(default_factory=QuantSpec)
    quantize_outputs: bool = False
    skip: tuple[str, ...] = ()
    stages: dict[str, str] = field(default_factory=dict)


def load_quant_config(path: str | Path, key: str | None = None) -> QuantConfig:
    return load_yaml(QuantConfig, path, key)


def preset(method: str, bits: str = "w8a8", quantize_outputs: bool = True) -> QuantConfig:
    """The CLI's presets: ``method`` picks the activation calibrator, ``bits`` is ``wXaY``.

    ``lidar_ptq`` starts from max-min (its grid search and TGPL/AdaRound are pipeline stages);
    ``uh`` makes activations asymmetric (UH's range is ``[min, u]``).
    """
    try:
        wb, ab = bits.lower().removeprefix("w").split("a")
        wbits, abits = int(wb), int(ab)
    except ValueError as e:
        raise ValueError(f"bits must look like w8a8 / w4a8, got {bits!r}") from e
    act_method = {"lidar_ptq": "max", "minmax": "max"}.get(method, method)
    if act_method not in ("max", "percentile", "mse", "entropy", "uh", "sparsity_grid"):
        raise ValueError(f"unknown method {method!r}")
    act = QuantSpec(bits=abits, symmetric=act_method != "uh", calib=CalibSpec(method=act_method))
    weight = QuantSpec(bits=wbits, per_channel=True, calib=CalibSpec(method="max"))
    return QuantConfig(weight=weight, act=act, quantize_outputs=quantize_outputs)
