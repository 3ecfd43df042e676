"""`quantize lidar` end to end on a tiny CenterPoint, and the TensorRT backend's guard."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from qd_perception.classes import CLASS_NAMES
from qd_perception.cli import main
from qd_perception.models.build import build_model, config_from_dict, load_model_file
from qd_perception.train.export_lidar import example_frame


def _tiny_checkpoint(tmp_path):
    _, cfg = load_model_file("config/models/centerpoint_pillar_cpu.model.yaml")
    d = dataclasses.asdict(cfg)
    d["voxelization"].update(point_range=[-25.6, -25.6, -5.0, 25.6, 25.6, 3.0], max_voxels=4000)
    d["backbone"].update(layer_nums=[1, 1, 1], num_filters=[16, 16, 16], num_upsample_filters=[16, 16, 16])
    d["head"].update(share_conv_channels=16, head_conv_channels=8)
    d["head"]["tasks"] = [list(CLASS_NAMES)]  # one task group: 6 branches instead of 36 (export time)
    d["decode"]["circle_radius_m"] = [1.0]
    d["pillar_channels"] = [16]
    cfg = config_from_dict("centerpoint", yaml.safe_load(yaml.safe_dump(_plain(d))))
    torch.manual_seed(0)
    model = build_model("centerpoint", cfg).eval()
    path = tmp_path / "cp.pt"
    torch.save({"arch": "centerpoint", "config": _plain(d), "model": model.state_dict()}, path)
    return cfg, model, path


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def test_quantize_lidar_cli_writes_an_artefact_the_ort_detector_loads(tmp_path):
    from qd_perception.data.calib_store import CalibrationStore, CalibStoreConfig
    from qd_perception.runtime.centerpoint import OrtCenterPointDetector

    cfg, model, ckpt = _tiny_checkpoint(tmp_path)
    store = CalibrationStore(tmp_path / "calib", CalibStoreConfig(capacity=3, store_images=False))
    for i in range(3):
        f = example_frame(cfg, 3000, seed=i)
        store.offer(dataclasses.replace(f, token=f"t{i}", timestamp_us=i * 100_000))
    out = tmp_path / "int8"
    args = ["--model", str(ckpt), "--calib", str(tmp_path / "calib"), "--method", "minmax"]
    rc = main(["quantize", "lidar", *args, "--out", str(out)])
    assert rc == 0
    info = yaml.safe_load((out / "quant.yaml").read_text())
    assert info["method"] == "minmax" and info["target"] == "ort"
    assert info["size_mib"] < 0.5 * info["fp32_size_mib"]
    det = OrtCenterPointDetector(out)  # what the lidar node builds from config
    frame = example_frame(cfg, 3000, seed=7)
    outs = det.outputs(frame)
    with torch.no_grad():
        ref = model(model.preprocess([torch.from_numpy(frame.points)]))
    # INT8 vs float heatmap logits of an untrained net: close, not equal
    err = (outs[0].heatmap - ref[0].heatmap).abs().max()
    assert 0 < float(err) < 0.5
    # The detector's boxes are the decode of those INT8 maps, well-formed and above its threshold.
    from qd_perception.models.centerpoint.decode import decode

    got, want = det.detect(frame), decode(outs, det.cfg)[0]
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert np.isfinite(got.boxes).all() and ((got.labels >= 0) & (got.labels < len(CLASS_NAMES))).all()
    assert (got.scores >= det.cfg.decode.score_threshold).all() and (got.scores <= 1).all()
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "dense.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_calibration_set_with_another_sweep_count_is_refused(tmp_path):
    import json

    from qd_perception.data.calib_store import LAYOUT_NAME, CalibrationStore, CalibStoreConfig
    from qd_perception.train.quantize_lidar import calibration_frames

    cfg, _, _ = _tiny_checkpoint(tmp_path)
    store = CalibrationStore(tmp_path / "calib", CalibStoreConfig(capacity=2, store_images=False))
    f = example_frame(cfg, 2000, seed=0)
    store.offer(dataclasses.replace(f, token="t0", timestamp_us=0))
    assert len(calibration_frames(tmp_path / "calib", cfg.nsweeps)) == 1  # no layout file: not checked
    (tmp_path / "calib" / LAYOUT_NAME).write_text(json.dumps({"max_sweeps": 1}))
    with pytest.raises(ValueError, match=r"recorded with 1 merged sweeps per frame but the model reads 5"):
        calibration_frames(tmp_path / "calib", 5)
    assert len(calibration_frames(tmp_path / "calib", 1)) == 1


def test_tensorrt_backend_reports_why_it_cannot_run(tmp_path):
    from qd_perception.runtime import trt

    try:
        import tensorrt  # noqa: F401

        have = torch.cuda.is_available()
    except ImportError:
        have = False
    if have:
        pytest.skip("TensorRT and CUDA present: the guard does not trigger (engine tests need a GPU run)")
    with pytest.raises(trt.TensorRTUnavailable, match=r"TensorRT|CUDA"):
        trt.build_engine(tmp_path / "missing.onnx")
    with pytest.raises(trt.TensorRTUnavailable):
        trt.TrtCenterPointDetector(tmp_path)


def test_tensorrt_engine_from_trt_flavour_onnx(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not pip-installable here")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device")
    from qd_perception.quant.config import preset
    from qd_perception.quant.export import export_onnx
    from qd_perception.quant.model import calibrate, quantize_model
    from qd_perception.runtime.trt import TrtEngine, build_engine

    m = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    q = quantize_model(m.eval(), preset("minmax", "w8a8", target="trt"))
    x = torch.randn(1, 4, 16, 16)
    calibrate(q, lambda: q(x))
    path = export_onnx(q, (x,), tmp_path / "t.onnx", "trt", input_names=["x"], output_names=["y"])
    eng = TrtEngine(build_engine(path))
    y = eng({"x": x})["y"].cpu()
    with torch.no_grad():
        torch.testing.assert_close(y, q(x), atol=0.05, rtol=0.05)
