"""CenterPoint network: training reduces the loss, spconv voxel backward on CPU, checkpoint
round trip, and torch vs ONNX Runtime parity of the split export (pillar and voxel)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_centerpoint_targets import TINY, scene_boxes  # test/unit is on sys.path (pytest rootdir import)

from qd_perception.data.types import Detections, Frame
from qd_perception.geometry.boxes import box_corners
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

TINY_VOXEL = {
    **TINY,
    "name": "tiny_voxel",
    "variant": "voxel",
    "voxelization": {
        "point_range": [-12.8, -12.8, -3.0, 12.8, 12.8, 3.0],
        "voxel_size": [0.2, 0.2, 0.5],
        "max_points_per_voxel": 5,
        "max_voxels": 8000,
    },
    "sparse": {"channels": [8, 16], "blocks": 1, "out_channels": 16},
    "backbone": {
        "layer_nums": [1, 1],
        "layer_strides": [1, 2],
        "num_filters": [16, 32],
        "upsample_strides": [1, 2],
        "num_upsample_filters": [16, 16],
    },
}


def surface_points(boxes: np.ndarray, rng: np.random.Generator, per_box: int = 300) -> np.ndarray:
    """Points on the box faces (ego frame) plus a ground plane, as (P, 5) [x, y, z, i, lag]."""
    pts = []
    for b in boxes:
        c = box_corners(b[None])[0]
        u = rng.random((per_box, 3))
        # Random point in the box, then pushed onto one of the 4 side faces or the top.
        local = (u - 0.5) * b[3:6]
        face = rng.integers(0, 5, per_box)
        for axis, sign, f in ((0, 1, 0), (0, -1, 1), (1, 1, 2), (1, -1, 3), (2, 1, 4)):
            local[face == f, axis] = sign * b[3 + axis] / 2
        cy, sy = np.cos(b[6]), np.sin(b[6])
        xy = local[:, :2] @ np.array([[cy, sy], [-sy, cy]]) + b[:2]
        pts.append(np.column_stack([xy, local[:, 2] + b[2]]))
        assert np.isfinite(c).all()
    ground = np.column_stack([rng.uniform(-12.8, 12.8, (3000, 2)), rng.normal(0.0, 0.02, 3000)])
    xyz = np.concatenate([*pts, ground])
    extra = np.column_stack([rng.uniform(0, 255, len(xyz)), rng.choice([0.0, 0.05], len(xyz))])
    return np.column_stack([xyz, extra]).astype(np.float32)


def tiny_frame(seed: int = 0) -> Frame:
    boxes, labels = scene_boxes()
    pts = surface_points(boxes, np.random.default_rng(seed))
    gt = Detections(boxes, labels, np.ones(len(boxes), np.float32))
    return Frame(f"tok{seed}", "scene", 0, np.eye(4), points=pts, gt=gt)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The CI machine is small and shared: intra-op threads only add spin-waiting here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
