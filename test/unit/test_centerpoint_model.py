"""CenterPoint network: training reduces the loss, spconv voxel backward on CPU, checkpoint
round trip, and torch vs ONNX Runtime parity of the split export (pillar and voxel)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import TINY, TINY_VOXEL, scene_boxes, tiny_frame

from qd_perception.models.build import build_model, config_from_dict
from qd_perception.models.centerpoint.loss import centerpoint_loss
from qd_perception.runtime.centerpoint import (
    OrtCenterPointDetector,
    TorchCenterPointDetector,
    load_checkpoint,
)
from qd_perception.runtime.factory import DetectorConfig, build_detector
from qd_perception.train.export_lidar import export
from qd_perception.train.lidar import TrainState, recalibrate_batchnorm, save_checkpoint, train_step
from qd_perception.train.lidar_data import LidarDataset, collate


@pytest.fixture(scope="module")
def trained_pillar(one_torch_thread):
    """A tiny pillar model trained for a few steps on one scene (shared by the tests below)."""
    torch.manual_seed(0)
    cfg = config_from_dict("centerpoint", TINY)
    model = build_model("centerpoint", cfg)
    batch = collate([LidarDataset([tiny_frame()], cfg)[0]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = [float(train_step(model, batch, opt).total) for _ in range(25)]
    recalibrate_batchnorm(model, [batch])
    return model.eval(), losses, batch


def test_training_steps_reduce_the_loss(trained_pillar):
    model, losses, batch = trained_pillar
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
    with torch.no_grad():
        after = centerpoint_loss(model.train()(model.preprocess(batch.points)), batch.targets, model.cfg.loss)
    model.eval()
    assert float(after.total) < losses[0]


def test_voxel_forward_backward_on_cpu():
    torch.manual_seed(0)
    cfg = config_from_dict("centerpoint", TINY_VOXEL)
    model = build_model("centerpoint", cfg)
    batch = collate([LidarDataset([tiny_frame()], cfg)[0]])
    vox = model.preprocess(batch.points)
    outs = model(vox)
    assert outs[0].heatmap.shape == (1, 1, *cfg.feature_map_size)
    loss = centerpoint_loss(outs, batch.targets, cfg.loss)
    loss.total.backward()
    sparse_grads = [p.grad for n, p in model.named_parameters() if n.startswith("sparse.") and p.dim() == 5]
    assert sparse_grads and all(g is not None and g.abs().sum() > 0 for g in sparse_grads)


def test_checkpoint_round_trip_and_factory(trained_pillar, tmp_path):
    model, _, _ = trained_pillar
    path = tmp_path / "cp.pt"
    save_checkpoint(path, model, None, None, TrainState(epoch=1), {})
    cfg, _loaded, ckpt = load_checkpoint(path)
    assert cfg == model.cfg and ckpt["epoch"] == 1
    frame = tiny_frame(1)
    a = TorchCenterPointDetector(model).outputs(frame)
    det = build_detector(DetectorConfig(name="centerpoint", model_path=str(path), score_threshold=0.2))
    b = det.outputs(frame)
    assert torch.equal(a[0].heatmap, b[0].heatmap)
    assert det.cfg.decode.score_threshold == 0.2


def _max_diff(a, b) -> float:
    return max(
        float((x - y).abs().max())
        for ta, tb in zip(a, b)
        for x, y in zip(ta.__dict__.values(), tb.__dict__.values())
        if x is not None
    )


@pytest.mark.parametrize("variant", ["pillar", "voxel"])
def test_export_parity_torch_vs_onnxruntime(variant, trained_pillar, tmp_path):
    if variant == "pillar":
        model = copy.deepcopy(trained_pillar[0])
    else:
        torch.manual_seed(1)
        model = build_model("centerpoint", config_from_dict("centerpoint", TINY_VOXEL)).eval()
    frame = tiny_frame(2)
    report = export(model, tmp_path, parity_frame=frame)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.yaml", "dense.onnx", "export.json"} <= names
    assert ("pfn.onnx" in names) == (variant == "pillar")
    torch_det = TorchCenterPointDetector(model, score_threshold=0.05)
    ort_det = OrtCenterPointDetector(tmp_path, score_threshold=0.05)
    diff = _max_diff(torch_det.outputs(frame), ort_det.outputs(frame))
    # FP32 both sides: only summation-order differences.
    assert diff < 1e-4 and report["parity_max_abs_diff"] < 1e-4, diff
    if variant == "voxel":
        return  # untrained: near-tied scores (~0.1 everywhere) make box lists order-fragile
    da, db = torch_det.detect(frame), ort_det.detect(frame)
    assert len(da) == len(db) > 0
    np.testing.assert_allclose(da.boxes, db.boxes, atol=1e-3)
    np.testing.assert_array_equal(da.labels, db.labels)


def test_factory_gives_the_detector_its_thread_share(trained_pillar, tmp_path):
    """``detector.threads`` reaches torch and both ORT sessions (spinning off), same outputs."""
    export(copy.deepcopy(trained_pillar[0]), tmp_path)
    before = torch.get_num_threads()
    try:
        det = build_detector(
            DetectorConfig(name="centerpoint", model_path=str(tmp_path), backend="onnxruntime", threads=1)
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for sess in (det.dense, det.pfn):
        opts = sess.get_session_options()
        assert opts.intra_op_num_threads == 1
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    frame = tiny_frame(3)
    ref = OrtCenterPointDetector(tmp_path).outputs(frame)
    assert _max_diff(ref, det.outputs(frame)) < 1e-5
    with pytest.raises(ValueError, match="threads must be >= 0"):
        DetectorConfig(threads=-1)


def test_trained_model_finds_the_scene_objects(trained_pillar):
    """After a few steps on one scene, the car and the bus are among the top detections."""
    model, _, _ = trained_pillar
    det = TorchCenterPointDetector(model, score_threshold=0.05).detect(tiny_frame(0))
    boxes, labels = scene_boxes()
    for k in (0, 1):
        d = np.hypot(*(det.boxes[:, :2] - boxes[k, :2]).T)
        hit = (d < 1.5) & (det.labels == labels[k])
        assert hit.any(), (k, det.boxes[:5], det.labels[:5])


def test_voxel_backbone_is_deterministic_with_several_threads():
    """spconv's CPU kernels race with > 1 torch thread; the backbone must guard against it."""
    torch.manual_seed(0)
    model = build_model("centerpoint", config_from_dict("centerpoint", TINY_VOXEL)).eval()
    vox = model.preprocess([torch.from_numpy(tiny_frame(3).points)])
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            a, b = model.encode(vox), model.encode(vox)
        assert torch.get_num_threads() == 2  # restored after the sparse part
    finally:
        torch.set_num_threads(1)
    assert torch.equal(a, b)
