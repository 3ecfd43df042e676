"""LiDAR-PTQ for CenterPoint: calibration frames -> quantized model -> deployable artefact.

The artefact is an ``export lidar`` directory (``model.yaml``, ``pfn.onnx`` / ``dense.onnx`` with
Q/DQ, ``sparse_encoder.pt`` for the voxel variant, ``export.json`` with the torch-vs-ORT parity)
plus ``quant.yaml`` describing how it was made. ``OrtCenterPointDetector`` loads it unchanged, so
the lidar node runs it through config alone (``detector.backend: onnxruntime``,
``detector.model_path: <artefact dir>``).

Voxel variant: the spconv encoder has no ONNX export and no INT8 CPU kernels; the artefact keeps
it in torch with its weights on the quantized grid (AdaRound / per-channel int8 values stored as
float) and float activations. The dense part (2-D backbone, neck, head) is INT8 in ONNX Runtime.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn
from tqdm import tqdm

from qd_perception.config import to_dict
from qd_perception.data.types import Frame
from qd_perception.fileio import atomic_write_text
from qd_perception.quant.calib import ACT_PRESETS
from qd_perception.quant.config import Target, cpu_has_vnni, preset
from qd_perception.quant.export import fold_weight_quantization, int32_bias_overflows
from qd_perception.quant.model import calibrate, fold_bn, quantize_model, quantizers
from qd_perception.quant.nn.modules import QuantModule
from qd_perception.quant.ptq.lidar_ptq import LidarPTQConfig, PTQReport, run_lidar_ptq
from qd_perception.quant.size import model_size

#: ``quantize lidar --method``: the LiDAR-PTQ pipeline, then the activation presets of the
#: calibrator table (``minmax``, ``percentile``, ``mse``, ``entropy``, ``uh``).
METHODS: tuple[str, ...] = ("lidar_ptq", *ACT_PRESETS)
Method = Literal[METHODS]  # type: ignore[valid-type]
QUANT_YAML = "quant.yaml"


def calibration_frames(
    path: str | Path, nsweeps: int, max_frames: int = 0, version: str = "v1.0-synthetic", split: str = "train"
) -> list[Frame]:
    """Frames from a calibration set (``calibrate`` / calibration node) or a nuScenes dataroot.

    From a data set, ``max_frames`` samples are taken evenly over the split.
    """
    from qd_perception.data.calib_store import INDEX_NAME, CalibrationSet

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"calibration data not found: {path}")
    if (path / INDEX_NAME).exists():
        check_recorded_sweeps(path, nsweeps)
        cs = CalibrationSet(path)
        n = len(cs) if not max_frames else min(max_frames, len(cs))
        frames = [cs[i] for i in range(n)]
    else:
        from qd_perception.data.nuscenes import NuScenesReader

        reader = NuScenesReader(path, version, split, nsweeps=nsweeps, load_images=False)
        n = len(reader) if not max_frames else min(max_frames, len(reader))
        idx = sorted({round(i * (len(reader) - 1) / max(n - 1, 1)) for i in range(n)})
        frames = [reader[i] for i in idx]
    frames = [f for f in frames if f.points is not None and len(f.points)]
    if not frames:
        raise ValueError(f"{path}: no frame with lidar points to calibrate on")
    return frames


def check_recorded_sweeps(path: Path, nsweeps: int) -> None:
    """Refuse a calibration node's set whose frames merge another number of sweeps than the
    model reads: calibrating on the wrong point density gives ranges that do not fit the model's
    real input (sets without the node's ``recorder.json`` are not checked)."""
    import json

    from qd_perception.data.calib_store import LAYOUT_NAME

    layout = path / LAYOUT_NAME
    if not layout.exists():
        return
    try:
        recorded = json.loads(layout.read_text()).get("max_sweeps")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{layout}: unreadable ({e})") from e
    if recorded is not None and int(recorded) != nsweeps:
        raise ValueError(
            f"{path} was recorded with {recorded} merged sweeps per frame but the model reads {nsweeps}: "
            f"record it again with the calibration node's sweeps.max_sweeps: {nsweeps}"
        )


def run_centerpoint(model: nn.Module, vox: Any) -> list[Any]:
    """One forward: voxels -> list of TaskOutput (the TGPL / AdaRound interface)."""
    return model(vox)


@dataclass
class QuantizeResult:
    model: nn.Module
    method: str
    bits: str
    target: str
    seconds: float
    report: PTQReport | None


def quantize_centerpoint(
    model: nn.Module,
    frames: Sequence[Frame],
    method: Method = "lidar_ptq",
    bits: str = "w8a8",
    target: Target = "ort",
    ptq_cfg: LidarPTQConfig | None = None,
    on_stage: Callable[[str, nn.Module], None] | None = None,
    reduce_range: bool = True,
) -> QuantizeResult:
    """Quantize a float CenterPoint (not modified) with ``method`` on ``frames``.

    ``reduce_range`` (ORT, 8-bit weights): store them on the 7-bit grid, exact on every x86 CPU;
    ``False`` uses all 8 bits, exact only on CPUs with VNNI (``quant.config.cpu_has_vnni``).
    """
    from qd_perception.runtime.centerpoint import frame_points

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    t0 = time.perf_counter()
    with torch.no_grad():
        samples = [model.preprocess([frame_points(f)]) for f in tqdm(frames, desc="voxelize", leave=False)]
    qcfg = preset(method, bits, target, reduce_range=reduce_range)
    if target == "ort":
        # The pillar PFN is a K=10 matmul over every point of every pillar: measured on ORT CPU,
        # its INT8 graph (QLinearMatMul + Q/DQ of the big point tensor) ran 2x slower than FP32
        # (338 vs 169 ms, 15k pillars), so the ORT artefact keeps it in float.
        qcfg = dataclasses.replace(qcfg, skip=(*qcfg.skip, "pfn.*"))
    if method == "lidar_ptq":
        qmodel, report = run_lidar_ptq(model, samples, run_centerpoint, qcfg, ptq_cfg, on_stage)
    else:
        qmodel = quantize_model(fold_bn(copy.deepcopy(model).eval()), qcfg)
        calibrate(
            qmodel, lambda: [run_centerpoint(qmodel, s) for s in tqdm(samples, desc=method, leave=False)]
        )
        report = None
        if on_stage:
            on_stage(method, qmodel)
    return QuantizeResult(qmodel, method, bits, target, time.perf_counter() - t0, report)


@torch.no_grad()
def bake_weights(module: nn.Module) -> nn.Module:
    """Copy of ``module`` with every quantized layer back to its float class, weights replaced by
    their fake-quantized values and activation quantization dropped (the voxel encoder's torch
    part in an ORT artefact)."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantModule):
                w = (
                    child.weight_quantizer(child.weight)
                    if child.weight_quantizer.mode == "quantize"
                    else None
                )
                base = next(c for c in type(child).__mro__[1:] if not issubclass(c, QuantModule))
                plain = base.__new__(base)
                plain.__dict__.update(child.__dict__)
                plain.__dict__["_modules"] = {
                    k: v for k, v in child._modules.items() if not k.endswith("quantizer")
                }
                for k in ("input_quantizer", "weight_quantizer", "output_quantizer", "quant_stage"):
                    plain.__dict__.pop(k, None)
                if w is not None:
                    plain.weight.copy_(w)
                setattr(parent, name, plain)
    return module


def write_artefact(
    result: QuantizeResult,
    out_dir: str | Path,
    parity_frame: Frame | None = None,
    extra: dict[str, Any] | None = None,
) -> dict:
    """Export the quantized model as an ``export lidar`` directory + ``quant.yaml``; returns the
    export report (includes the torch fake-quant vs ONNX Runtime parity). ``extra``: more
    ``quant.yaml`` entries (e.g. the QAT schedule)."""
    from qd_perception.train.export_lidar import export

    out = Path(out_dir)
    model = result.model
    if getattr(model, "sparse", None) is not None:
        model = copy.copy(model)
        model._modules = dict(model._modules)
        model._modules["sparse"] = bake_weights(result.model.sparse)
    report = export(model, out, parity_frame)
    size = model_size(result.model)
    info: dict[str, Any] = {
        "method": result.method,
        "bits": result.bits,
        "target": result.target,
        "flavour": "ORT (Q/DQ on layer outputs too: QLinearConv)"
        if result.target == "ort"
        else "TensorRT (Q/DQ on inputs and weights)",
        "quantize_seconds": round(result.seconds, 2),
        "size_mib": round(size.total_bytes / 2**20, 4),  # weights packed at their bit width
        "onnx_mib": round(sum(p.stat().st_size for p in out.glob("*.onnx")) / 2**20, 4),  # as stored
        "fp32_size_mib": round(size.fp32_bytes / 2**20, 4),
        "parity_max_abs_diff": report.get("parity_max_abs_diff"),
        "notes": ["weights per output channel, activations per tensor"],
    }
    if result.target == "ort":
        weights = [q for name, q in quantizers(result.model) if name.endswith("weight_quantizer")]
        wbits = max((q.bits for q in weights if q.mode == "quantize"), default=0)
        info["ort_weight_bits"] = wbits
        info["cpu_vnni_at_quantize"] = cpu_has_vnni()
        # int8 initializers instead of float weights + their fake-quant arithmetic (~4.5x smaller)
        dense = out / "dense.onnx"
        if dense.exists():
            info["dense_onnx_folded"] = fold_weight_quantization(dense)
            info["onnx_mib"] = round(sum(p.stat().st_size for p in out.glob("*.onnx")) / 2**20, 4)
        if wbits == 8:
            info["notes"].append(
                "8-bit weights (full grid): exact on CPUs with VNNI; without VNNI ONNX Runtime's "
                "x86 U8S8 kernels saturate in int16 (re-quantize with --ort-weights 7bit there)"
            )
        elif wbits == 7 and result.bits.lower().startswith("w8"):
            info["notes"].append(
                "8-bit weights stored as 7-bit (reduce range): no int16 saturation in ONNX Runtime's "
                "x86 U8S8 kernels on CPUs without VNNI"
            )
    overflows = int32_bias_overflows(result.model)
    if overflows:
        info["warnings"] = [
            "bias overflows the int32 accumulator of an integer conv (input range too small; "
            "the runtime's outputs will be wrong for these layers): " + "; ".join(overflows)
        ]
        print("WARNING: " + info["warnings"][0])
    if result.report is not None:
        info["stage_seconds"] = {k: round(v, 2) for k, v in result.report.stage_seconds.items()}
    if extra:
        info.update(extra)
    atomic_write_text(out / QUANT_YAML, yaml.safe_dump(info, sort_keys=False))
    return {**report, "quant": info}


def load_ptq_config(path: str | Path | None) -> LidarPTQConfig:
    from qd_perception.config import load_yaml

    return LidarPTQConfig() if path is None else load_yaml(LidarPTQConfig, path)


def ptq_config_dict(cfg: LidarPTQConfig) -> dict:
    return to_dict(cfg)
