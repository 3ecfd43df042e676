"""Camera BEV runtime: a missing camera (``Frame.missing_cameras``) and the temporal-state guards.

A missing camera's image and K are zeros; the zero K empties its ``bev_mask`` rows inside the
network, so the result equals a run with every camera whose mask rows for that camera were
emptied by hand, for torch and ONNX Runtime alike. A non-finite BEV is never kept as history;
an ego jump drops it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_models import TINY_BEV

from qd_perception.config import from_dict
from qd_perception.models.bevformer import BEVFormer, BEVFormerConfig
from qd_perception.models.bevformer import model as model_module
from qd_perception.models.bevformer.inputs import MissingCameraError
from qd_perception.runtime.bev import MAX_EGO_SPEED_MPS, OrtBEVDetector, TorchBEVDetector
from qd_perception.train.export_bev import example_frames, export_onnx

MISSING = "CAM_BACK"


def _cfg(**kw) -> BEVFormerConfig:
    return from_dict(BEVFormerConfig, {**TINY_BEV, "name": "test", **kw})


def _without(frame, cam: str = MISSING):
    return dataclasses.replace(
        frame, cameras=tuple(c for c in frame.cameras if c.name != cam), missing_cameras=(cam,)
    )


def _forward(model: BEVFormer, x):
    t = {k: torch.from_numpy(getattr(x, k)) for k in ("images", "intrinsics", "cam2ego")}
    with torch.inference_mode():
        return model(**t)


def test_missing_camera_equals_a_run_with_its_mask_rows_emptied(monkeypatch):
    torch.manual_seed(0)
    cfg = _cfg()
    model = BEVFormer(cfg).eval()
    det = TorchBEVDetector(model)
    (frame,) = example_frames(cfg, 1)
    k = cfg.camera_names.index(MISSING)
    full_x = det.prepare(frame)
    full = _forward(model, full_x)
    assert full.bev_mask[k].any()  # the camera sees part of the grid: removing it matters

    x = det.prepare(_without(frame))
    assert not x.images[0, k].any() and not x.intrinsics[0, k].any()
    degraded = _forward(model, x)
    assert not degraded.bev_mask[k].any()
    others = [j for j in range(cfg.num_cams) if j != k]
    assert torch.equal(degraded.bev_mask[others], full.bev_mask[others])

    # reference: the full frame (the camera's real image and K) with its mask rows emptied
    project = model_module.project_to_cameras

    def empty_rows(*args, **kw):
        uv, mask = project(*args, **kw)
        mask = mask.clone()
        mask[k] = False
        return uv, mask

    monkeypatch.setattr(model_module, "project_to_cameras", empty_rows)
    ref = _forward(model, full_x)
    for name in ("bev", "cls_logits", "box_codes"):
        a, b = getattr(degraded, name), getattr(ref, name)
        assert torch.allclose(a, b, atol=1e-5), (name, float((a - b).abs().max()))
    assert not torch.allclose(degraded.bev, full.bev, atol=1e-3)  # the camera did contribute


def test_missing_cameras_must_be_declared():
    cfg = _cfg()
    det = TorchBEVDetector(BEVFormer(cfg))
    (frame,) = example_frames(cfg, 1)
    undeclared = dataclasses.replace(frame, cameras=frame.cameras[:5])
    with pytest.raises(MissingCameraError, match="missing camera"):
        det.detect(undeclared)
    none_left = dataclasses.replace(frame, cameras=(), missing_cameras=cfg.camera_names)
    with pytest.raises(MissingCameraError, match="every camera"):
        det.detect(none_left)
    # a declared missing camera wins over an image the frame still carries
    x = det.prepare(dataclasses.replace(frame, missing_cameras=(MISSING,)))
    assert not x.intrinsics[0, cfg.camera_names.index(MISSING)].any()


def test_missing_camera_torch_vs_onnxruntime(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(score_threshold=0.0)
    model = BEVFormer(cfg).eval()
    path = export_onnx(model, tmp_path / "bevformer.onnx")
    tdet, odet = TorchBEVDetector(model), OrtBEVDetector(path)
    frames = example_frames(cfg, 2)
    # the first frame with all cameras, the second without one: the history crosses the change
    for f in (frames[0], _without(frames[1])):
        a, b = tdet.detect(f), odet.detect(f)
        assert len(a) == len(b) > 0
        assert np.allclose(a.scores, b.scores, atol=1e-5)
        assert np.allclose(a.boxes, b.boxes, atol=1e-3)
        assert np.allclose(tdet.state.bev, odet.state.bev, atol=1e-4)
    full = TorchBEVDetector(model)
    full.detect(frames[0])
    assert not np.allclose(full.detect(frames[1]).scores, a.scores, atol=1e-4)


def test_nonfinite_bev_is_not_kept_as_history():
    cfg = _cfg()
    det = TorchBEVDetector(BEVFormer(cfg))
    f0, f1 = example_frames(cfg, 2)
    det.detect(f0)
    assert det.prepare(f1).prev_valid[0] == 1
    infer = det._infer

    def overflowing(x):
        cls, box, bev = infer(x)
        bev = bev.copy()
        bev[0, 3, 1] = np.inf
        return cls, box, bev

    det._infer = overflowing
    det.detect(f0)
    assert det.state is None and det.nonfinite_resets == 1
    det._infer = infer
    assert det.prepare(f1).prev_valid[0] == 0  # the next frame starts without history
    det.detect(f0)
    assert np.isfinite(det.state.bev).all() and det.nonfinite_resets == 1


def test_ego_jump_drops_the_history():
    cfg = _cfg()
    det = TorchBEVDetector(BEVFormer(cfg))
    f0, f1 = example_frames(cfg, 2)  # 0.5 s apart, 2.5 m: driving
    det.detect(f0)
    assert det.prepare(f1).prev_valid[0] == 1 and det.resets == 0
    pose = f1.ego2global.copy()
    pose[0, 3] += MAX_EGO_SPEED_MPS * 0.5  # a localisation reset: 35 m more in 0.5 s
    assert det.prepare(dataclasses.replace(f1, ego2global=pose)).prev_valid[0] == 0
    assert det.resets == 1 and det.state is None


def test_missing_camera_in_the_quantized_graph(tmp_path):
    """The W8A8 ORT artefact (integer kernels, Q/DQ) also drops a camera whose K is zero: its image
    changes nothing, and the artefact follows the torch fake-quant model on a degraded frame as
    closely as on full ones."""
    from qd_perception.train.bev_data import BEVDataset
    from qd_perception.train.quantize_bev import (
        BEVQATConfig,
        calibrate_bev,
        quantize_bevformer,
        write_bev_artefact,
    )

    torch.manual_seed(0)
    cfg = _cfg(score_threshold=0.0)
    fp = BEVFormer(cfg).eval()
    q = quantize_bevformer(fp, "w8a8")
    calibrate_bev(q, BEVDataset(example_frames(cfg, 2), cfg), [0, 1])
    info = write_bev_artefact(q, fp, tmp_path, BEVQATConfig(method="ptq", bits="w8a8"), tmp_path / "fp.pt")
    odet = OrtBEVDetector(tmp_path)
    (frame,) = example_frames(cfg, 1)
    x = odet.prepare(_without(frame))
    k = cfg.camera_names.index(MISSING)
    noisy = x.images.copy()
    noisy[0, k] = np.random.default_rng(1).integers(0, 256, noisy[0, k].shape)
    a = odet._infer(x)
    b = odet._infer(dataclasses.replace(x, images=noisy))
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    tq = TorchBEVDetector(q)
    # as close as the artefact is to its fake-quant model on full frames (quantization rounding)
    full = info["parity_max_abs_diff"]["bev"]
    assert np.abs(tq._infer(x)[2] - a[2]).max() <= max(2 * full, 1e-3)
