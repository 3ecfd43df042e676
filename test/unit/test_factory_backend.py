"""``detector.backend: auto`` and the shipped lidar default: the INT8 ONNX Runtime artefact, with
the FP32 checkpoint it was quantized from one parameter (``model_path``) away."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qd_perception.config import ConfigError
from qd_perception.runtime.factory import DetectorConfig, build_detector, infer_backend

ROOT = Path(__file__).resolve().parents[2]
INT8 = ROOT / "weights" / "centerpoint_pillar_int8_ort"


def test_infer_backend(tmp_path):
    assert infer_backend(Path("weights/centerpoint_pillar_cpu.pt")) == "torch"
    assert infer_backend(Path("m.onnx")) == "onnxruntime" and infer_backend(Path("m.engine")) == "tensorrt"
    ort_dir, trt_dir = tmp_path / "ort", tmp_path / "trt"
    for d, target in ((ort_dir, "ort"), (trt_dir, "trt")):
        d.mkdir()
        (d / "dense.onnx").write_bytes(b"")
        (d / "quant.yaml").write_text(yaml.safe_dump({"target": target}))
    assert infer_backend(ort_dir) == "onnxruntime" and infer_backend(trt_dir) == "tensorrt"
    assert infer_backend(Path("")) == "torch"  # no model: the classical baseline
    with pytest.raises(ConfigError, match=r"set detector\.backend"):
        infer_backend(tmp_path)  # an empty directory


def test_shipped_lidar_default_is_the_int8_artefact():
    params = yaml.safe_load((ROOT / "config" / "lidar_detector.param.yaml").read_text())
    p = params["lidar_detector"]["ros__parameters"]
    assert (p["detector.name"], p["detector.backend"]) == ("centerpoint", "auto")
    assert ROOT / p["detector.model_path"] == INT8
    quant = yaml.safe_load((INT8 / "quant.yaml").read_text())
    # w8a8 on the 7-bit weight grid: exact on every x86 CPU, with or without VNNI
    assert (quant["method"], quant["bits"], quant["target"], quant["ort_weight_bits"]) == (
        "lidar_ptq", "w8a8", "ort", 7,
    )  # fmt: skip
    assert sum(f.stat().st_size for f in INT8.iterdir()) < 1.5 * 2**20  # int8 initializers, folded
    assert yaml.safe_load((INT8 / "model.yaml").read_text())["model"]["nsweeps"] == p["sweeps.max_sweeps"]


def test_auto_backend_builds_int8_and_fp32():
    pytest.importorskip("onnxruntime")
    from qd_perception.runtime.centerpoint import OrtCenterPointDetector, TorchCenterPointDetector

    base = DetectorConfig(name="centerpoint", backend="auto", threads=1)
    int8 = build_detector(
        DetectorConfig(**{**base.__dict__, "model_path": "weights/centerpoint_pillar_int8_ort"})
    )
    fp32 = build_detector(
        DetectorConfig(**{**base.__dict__, "model_path": "weights/centerpoint_pillar_cpu.pt"})
    )
    assert isinstance(int8, OrtCenterPointDetector) and isinstance(fp32, TorchCenterPointDetector)
