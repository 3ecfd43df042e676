"""Classical lidar baseline and the multi-sweep accumulator on small hand-made scenes."""

from __future__ import annotations

import numpy as np
import pytest

from qd_perception.classes import CLASS_ID, CLASS_NAMES, MEAN_SIZE_LWH
from qd_perception.data.types import Frame
from qd_perception.geometry.transforms import make_transform
from qd_perception.models.classical import ClassicalConfig, ClassicalDetector, min_area_rectangle, size_costs
from qd_perception.runtime.factory import DetectorConfig, build_detector, detector_names
from qd_perception.runtime.sweeps import SweepAccumulator, SweepConfig


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _scan(objects, rng, sensor=(0.94, 0.0, 1.84), spacing=0.12):
    """Points on the faces of boxes (x, y, yaw, class) that face the sensor, plus a ground plane."""
    pts = []
    for x, y, yaw, cls in objects:
        L, W, H = MEAN_SIZE_LWH[cls]
        R = _rz(yaw)
        for axis, half in ((0, L / 2), (1, W / 2)):
            for sign in (1, -1):
                n = np.zeros(3)
                n[axis] = sign
                face_c = np.array([x, y, H / 2]) + R @ (n * half)
                if (R @ n) @ (np.array(sensor) - face_c) <= 0:
                    continue  # faces away from the sensor: occluded
                other = W if axis == 0 else L
                a = np.arange(-other / 2, other / 2, spacing)
                h = np.arange(0.05, H, spacing)
                A, Hh = np.meshgrid(a, h)
                local = np.zeros((A.size, 3))
                local[:, axis] = sign * half
                local[:, 1 - axis] = A.ravel()
                local[:, 2] = Hh.ravel() - H / 2
                pts.append(local @ R.T + [x, y, H / 2])
        # the roof
        a = np.arange(-L / 2, L / 2, spacing * 2)
        b = np.arange(-W / 2, W / 2, spacing * 2)
        A, B = np.meshgrid(a, b)
        roof = np.stack([A.ravel(), B.ravel(), np.full(A.size, H / 2)], 1)
        pts.append(roof @ R.T + [x, y, H / 2])
    g = rng.uniform(-40, 40, size=(8000, 2))
    pts.append(np.concatenate([g, rng.normal(0, 0.03, (len(g), 1))], 1))
    xyz = np.concatenate(pts)
    out = np.zeros((len(xyz), 5), np.float32)
    out[:, :3] = xyz
    out[:, 3] = 50
    return out


def _frame(points, t_us=1_000_000, pose=None):
    return Frame("t", "s", t_us, np.eye(4) if pose is None else pose, points=points)


OBJECTS = [
    (12.0, 3.0, 0.2, "car"),
    (-15.0, -4.0, 1.4, "car"),
    (6.0, -6.0, 0.0, "pedestrian"),
    (20.0, -8.0, 0.0, "bus"),
    (8.0, 8.0, 0.0, "traffic_cone"),
]


def test_detects_classes_and_centres():
    rng = np.random.default_rng(0)
    det = ClassicalDetector()
    out = det.detect(_frame(_scan(OBJECTS, rng)))
    assert len(out) >= len(OBJECTS)
    for x, y, _yaw, cls in OBJECTS:
        d = np.hypot(out.boxes[:, 0] - x, out.boxes[:, 1] - y)
        k = int(d.argmin())
        assert d[k] < 1.0, (cls, out.boxes[k])  # within nuScenes' 1 m matching threshold
        assert CLASS_NAMES[out.labels[k]] == cls
        assert 0 < out.scores[k] <= 1
    # cars: heading axis recovered (mod pi), size grown to the prior
    k = int(np.hypot(out.boxes[:, 0] - 12, out.boxes[:, 1] - 3).argmin())
    assert abs(np.sin(out.boxes[k, 6] - 0.2)) < 0.15
    assert out.boxes[k, 3] == pytest.approx(MEAN_SIZE_LWH["car"][0], abs=0.5)
    assert len(out.attributes) == len(out)


def test_velocity_from_previous_frame_with_ego_motion():
    rng = np.random.default_rng(1)
    det = ClassicalDetector()
    # The ego drives +0.5 m in x in 0.1 s; the car drives +1 m in global x (10 m/s).
    pose0, pose1 = make_transform(np.eye(3), [100, 50, 0]), make_transform(np.eye(3), [100.5, 50, 0])
    det.detect(_frame(_scan([(12.5, 4.0, 0.0, "car")], rng), 0, pose0))
    out = det.detect(_frame(_scan([(13.0, 4.0, 0.0, "car")], rng), 100_000, pose1))
    k = int(np.hypot(out.boxes[:, 0] - 13, out.boxes[:, 1] - 4).argmin())
    assert out.boxes[k, 7] == pytest.approx(10.0, abs=1.0)
    assert abs(out.boxes[k, 8]) < 1.0
    assert abs(out.boxes[k, 6]) < 0.2  # heading follows the motion, not the reverse
    assert out.attributes[k] == "vehicle.moving"
    det.reset()
    out = det.detect(_frame(_scan([(13.0, 4.0, 0.0, "car")], rng), 200_000, pose1))
    assert np.abs(out.boxes[:, 7:9]).max() == 0  # no history after reset


def test_empty_and_degenerate_inputs():
    det = ClassicalDetector()
    assert len(det.detect(_frame(np.zeros((0, 5), np.float32)))) == 0
    pts = np.full((10, 5), np.nan, np.float32)
    assert len(det.detect(_frame(pts))) == 0
    with pytest.raises(ValueError, match="needs lidar"):
        det.detect(Frame("t", "s", 0, np.eye(4)))


def test_rectangle_and_size_costs():
    rng = np.random.default_rng(2)
    xy = rng.uniform([-2, -1], [2, 1], size=(400, 2)) @ _rz(0.5)[:2, :2].T
    yaw, lo, hi = min_area_rectangle(xy, steps=90)
    assert min(abs(yaw - 0.5), abs(yaw - 0.5 + np.pi / 2)) < 0.05
    assert sorted(hi - lo) == pytest.approx([2, 4], abs=0.1)
    assert int(np.argmin(size_costs(4.5, 1.9, 1.7))) == CLASS_ID["car"]
    assert int(np.argmin(size_costs(0.6, 0.6, 1.75))) == CLASS_ID["pedestrian"]
    assert int(np.argmin(size_costs(10.5, 2.9, 3.4))) == CLASS_ID["bus"]


def test_all_clusters_at_once_equals_one_at_a_time():
    """The batched fit (per-cluster reductions over points sorted by cluster) must not mix
    clusters: fitting all clusters together gives the boxes of fitting each cluster alone, whose
    rectangle is also what :func:`min_area_rectangle` finds for it."""
    det = ClassicalDetector()
    cfg = det.config
    many = [*OBJECTS, (-6.0, 9.0, 0.7, "truck"), (3.0, -12.0, 0.0, "barrier"), (25.0, 6.0, 0.0, "pedestrian")]
    pts = _scan(many, np.random.default_rng(4))[:, :3].astype(np.float32)
    ground = det._ground_height(pts)
    above = pts[:, 2] - ground > cfg.ground_clearance_m
    order, starts = det._clusters(pts[above])
    assert len(starts) >= len(many)
    xyz, g = pts[above][order].astype(np.float64), ground[above][order]
    boxes, labels, scores = det._fit_all(xyz, g, starts)
    ends = np.append(starts[1:], len(xyz))
    singles = [det._fit_all(xyz[a:b], g[a:b], np.zeros(1, np.int64)) for a, b in zip(starts, ends)]
    kept = [s for s in singles if len(s[1])]
    assert len(kept) == len(boxes) >= len(many)
    np.testing.assert_allclose(np.concatenate([s[0] for s in kept]), boxes, atol=1e-9)
    assert np.concatenate([s[1] for s in kept]).tolist() == labels.tolist()
    np.testing.assert_allclose(np.concatenate([s[2] for s in kept]), scores, atol=1e-12)
    for a, b in zip(starts, ends):  # the same heading search as the public helper
        xy = xyz[a:b, :2] - xyz[a:b, :2].mean(0)
        yaw, lo, hi = min_area_rectangle(xy, cfg.heading_steps)
        s = det._fit_all(xyz[a:b], g[a:b], np.zeros(1, np.int64))
        if len(s[1]):  # same axes (mod 90 deg); grown to the prior, never shrunk
            d = (s[0][0, 6] - yaw) % (np.pi / 2)
            assert min(d, np.pi / 2 - d) < 1e-9
            assert all(np.sort(s[0][0, 3:5]) >= np.sort(hi - lo) - 1e-9)


def test_sweep_accumulator_motion_compensation():
    acc = SweepAccumulator(SweepConfig(max_sweeps=3, max_age_s=0.25))
    static = np.array([[10.0, 0.0, 1.0, 7.0]])  # a static point, global x = 110
    for k, t in enumerate([0, 100_000, 200_000, 300_000]):
        pose = make_transform(np.eye(3), [100 + k, 0, 0])  # ego moves +1 m per sweep
        merged = acc.add(static - [k, 0, 0, 0], t, pose)
    assert merged.shape == (3, 5)  # the 0 s sweep is older than max_age_s
    np.testing.assert_allclose(merged[:, 0], 7.0, atol=1e-5)  # all land on the same spot
    np.testing.assert_allclose(sorted(merged[:, 4]), [0, 0.1, 0.2], atol=1e-6)
    np.testing.assert_allclose(merged[:, 3], 7.0)
    # without a pose only the current sweep is used
    assert acc.add(static, 400_000, None).shape == (1, 5) and acc.no_pose == 1
    # time going backwards clears the history
    acc.add(static, 50_000, make_transform(np.eye(3), [0, 0, 0]))
    assert acc.out_of_order == 1
    with pytest.raises(ValueError, match="points must be"):
        acc.add(np.zeros((3, 2)), 1, None)
    # a sweep that was only remembered (frame skipped while busy) is still merged later
    acc = SweepAccumulator(SweepConfig(max_sweeps=3, max_age_s=1.0))
    eye = make_transform(np.eye(3), [0, 0, 0])
    acc.add(static, 0, eye)
    acc.remember(static, 100_000, eye)
    np.testing.assert_allclose(sorted(acc.add(static, 200_000, eye)[:, 4]), [0, 0.1, 0.2], atol=1e-6)


def test_factory_table_and_config():
    assert "classical" in detector_names()
    det = build_detector(DetectorConfig(name="classical"))
    assert det.modalities == ("lidar",)
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector(DetectorConfig(name="nope"))
    cfg = DetectorConfig(name="classical", score_threshold=0.99)
    rng = np.random.default_rng(3)
    out = build_detector(cfg).detect(_frame(_scan(OBJECTS, rng)))
    assert (out.scores >= 0.99).all()
    assert isinstance(ClassicalDetector(ClassicalConfig(min_points=3)).config.min_points, int)
