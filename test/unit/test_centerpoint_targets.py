"""CenterPoint targets, decode round trip, voxelisation and augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import TINY, scene_boxes

from qd_perception.classes import CLASS_ID
from qd_perception.geometry.boxes import points_in_boxes
from qd_perception.models.build import config_from_dict
from qd_perception.models.centerpoint.decode import decode
from qd_perception.models.centerpoint.head import TaskOutput
from qd_perception.models.centerpoint.targets import build_targets, collate_targets, gaussian_radius
from qd_perception.models.centerpoint.voxelize import voxelize_one
from qd_perception.train.lidar_data import AugmentConfig, augment


def tiny_cfg(**decode):
    d = dict(TINY)
    if decode:
        d["decode"] = decode
    return config_from_dict("centerpoint", d)


def test_gaussian_radius_properties():
    # Larger boxes and a looser overlap give larger radii; the formula is CornerNet's minimum of 3.
    assert gaussian_radius(10, 10, 0.1) > gaussian_radius(5, 5, 0.1) > 0
    assert gaussian_radius(5, 5, 0.1) > gaussian_radius(5, 5, 0.7)
    h = w = 4.0
    o = 0.1
    r2 = (2 * (h + w) + math.sqrt(4 * (h + w) ** 2 - 16 * (1 - o) * w * h)) / 2
    assert gaussian_radius(h, w, o) <= r2 + 1e-12


def test_target_assignment():
    cfg = tiny_cfg()
    boxes, labels = scene_boxes()
    tg = build_targets(boxes, labels, cfg)
    h, w = cfg.feature_map_size
    assert (h, w) == (64, 64)
    tasks = cfg.head.tasks
    car_task = next(i for i, t in enumerate(tasks) if "car" in t)
    t = tg[car_task]
    assert t.mask.sum() == 1 and t.heatmap.shape == (1, 64, 64)
    cell = 0.4
    fx, fy = (5.13 + 12.8) / cell, (2.27 + 12.8) / cell
    cx, cy = math.floor(fx), math.floor(fy)
    assert t.ind[0] == cy * w + cx
    assert t.heatmap[0, cy, cx] == 1.0 and (t.heatmap == 1.0).sum() == 1
    # Radius >= min_radius: the cells min_radius away still carry Gaussian mass.
    assert t.heatmap[0, cy, cx + cfg.target.min_radius] > 0
    np.testing.assert_allclose(t.box[0, :2], [fx - cx, fy - cy], atol=1e-5)
    np.testing.assert_allclose(t.box[0, 2:6], [0.8, *np.log([4.6, 1.9, 1.6])], atol=1e-6)
    np.testing.assert_allclose(t.box[0, 6:], [math.sin(0.4), math.cos(0.4), 3.0, -1.0], atol=1e-6)
    # Pedestrian and cone share a task group: two peaks, class channels 0 and 1.
    ped_task = next(i for i, t in enumerate(tasks) if "pedestrian" in t)
    t = tg[ped_task]
    assert t.mask.sum() == 2
    assert (t.heatmap[0] == 1.0).sum() == 1 and (t.heatmap[1] == 1.0).sum() == 1
    # Empty tasks stay empty; boxes outside the grid are ignored.
    truck_task = next(i for i, t in enumerate(tasks) if "truck" in t)
    assert tg[truck_task].mask.sum() == 0 and tg[truck_task].heatmap.max() == 0
    out = build_targets(np.array([[40.0, 0, 0, 4, 2, 1.5, 0, 0, 0]]), np.array([0]), cfg)
    assert sum(float(x.mask.sum()) for x in out) == 0


def targets_as_outputs(cfg, boxes, labels) -> list[TaskOutput]:
    """Head maps that a perfect network would output for these boxes."""
    batch = collate_targets([build_targets(boxes, labels, cfg)])
    h, w = cfg.feature_map_size
    outs = []
    for t in batch:
        hm = t.heatmap.clamp(1e-6, 1 - 1e-6)
        code = torch.zeros(1, t.box.shape[-1], h * w)
        m = t.mask[0] > 0
        code[0][:, t.ind[0][m]] = t.box[0][m].T
        code = code.reshape(1, -1, h, w)
        outs.append(
            TaskOutput(
                torch.log(hm / (1 - hm)), code[:, :2], code[:, 2:3], code[:, 3:6], code[:, 6:8], code[:, 8:10]
            )
        )
    return outs


# Circle NMS removes the Gaussian's neighbour cells (above 0.5 within one cell of the peak);
# IoU NMS cannot (a perfect network regresses the box only at the peak), so it keeps the peaks only.
@pytest.mark.parametrize(("nms", "threshold"), [("circle", 0.5), ("rotated", 0.999), ("none", 0.999)])
def test_decode_round_trip(nms, threshold):
    cfg = tiny_cfg(score_threshold=threshold, nms=nms)
    boxes, labels = scene_boxes()
    det = decode(targets_as_outputs(cfg, boxes, labels), cfg)[0]
    assert len(det) == len(boxes)
    order = np.argsort(det.boxes[:, 0])
    ref = np.argsort(boxes[:, 0])
    np.testing.assert_array_equal(det.labels[order], labels[ref])
    np.testing.assert_allclose(det.boxes[order], boxes[ref], atol=1e-4)
    assert np.all(det.scores > 0.99)
    assert det.attributes[list(det.labels).index(CLASS_ID["car"])] == "vehicle.moving"


def test_voxelize_matches_brute_force():
    cfg = tiny_cfg().voxelization
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-14, 14, (3000, 2)), rng.uniform(-4, 4, 3000), rng.random((3000, 2))])
    pts[:500, :2] = rng.uniform(0, 0.2, (500, 2))  # one crowded pillar
    vox, num, coords = voxelize_one(torch.from_numpy(pts).float(), cfg)
    lo, vs = np.array(cfg.point_range[:3]), np.array(cfg.voxel_size)
    cell = np.floor((pts[:, :3].astype(np.float32) - lo) / vs).astype(int)
    nx, ny, nz = cfg.grid_size
    ok = (cell >= 0).all(1) & (cell < [nx, ny, nz]).all(1)
    ref: dict[tuple, list] = {}
    for p, c in zip(pts[ok], cell[ok]):
        ref.setdefault((c[2], c[1], c[0]), []).append(p)
    assert len(coords) == len(ref)
    for v, n, c in zip(vox.numpy(), num.numpy(), coords.numpy()):
        exp = ref[tuple(c)][: cfg.max_points_per_voxel]
        assert n == len(exp)
        np.testing.assert_allclose(v[:n], np.array(exp), rtol=1e-6)
        assert not v[n:].any()
    assert num.max() == cfg.max_points_per_voxel


def test_augment_keeps_points_in_their_boxes():
    boxes, _ = scene_boxes()
    rng = np.random.default_rng(3)
    pts = np.column_stack([rng.uniform(-12, 12, (4000, 3)), np.zeros((4000, 2))]).astype(np.float32)
    inside = points_in_boxes(pts, boxes)
    for seed in range(5):
        p2, b2 = augment(pts, boxes, AugmentConfig(translate_std=0.3), np.random.default_rng(seed))
        np.testing.assert_array_equal(points_in_boxes(p2, b2, margin=1e-4) & inside, inside)
        speed = np.hypot(boxes[:, 7], boxes[:, 8])
        ratio = np.hypot(b2[:, 7], b2[:, 8])[speed > 0] / speed[speed > 0]
        assert np.allclose(ratio, ratio[0])  # velocities follow the same rotation and scale
