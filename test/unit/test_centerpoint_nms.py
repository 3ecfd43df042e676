"""NMS and rotated BEV IoU against brute-force references (shapely polygons, plain loops)."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Polygon

from qd_perception.models.centerpoint.nms import bev_corners, bev_iou, circle_nms, rotated_nms


def _random_boxes(rng: np.random.Generator, n: int, spread: float = 6.0) -> np.ndarray:
    xy = rng.uniform(-spread, spread, (n, 2))
    size = rng.uniform(0.5, 5.0, (n, 2))
    yaw = rng.uniform(-np.pi, np.pi, (n, 1))
    return np.hstack([xy, size, yaw])


def _shapely_iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = Polygon(bev_corners(a)[0]), Polygon(bev_corners(b)[0])
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


def test_bev_iou_matches_shapely():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 30), _random_boxes(rng, 25)
    ours = bev_iou(a, b)
    ref = np.array([[_shapely_iou(x, y) for y in b] for x in a])
    assert (ref > 0).sum() > 20  # enough overlapping pairs to mean something
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_bev_iou_special_cases():
    box = np.array([[1.0, 2.0, 4.0, 2.0, 0.3]])
    assert bev_iou(box, box)[0, 0] == pytest.approx(1.0)
    turned = box.copy()
    turned[0, 4] += np.pi  # same footprint
    assert bev_iou(box, turned)[0, 0] == pytest.approx(1.0)
    far = box + np.array([[20.0, 0, 0, 0, 0]])
    assert bev_iou(box, far)[0, 0] == 0.0
    # Two axis-aligned 2x2 squares shifted by 1 m: intersection 2, union 6.
    sq = np.array([[0.0, 0.0, 2.0, 2.0, 0.0], [1.0, 0.0, 2.0, 2.0, 0.0]])
    assert bev_iou(sq[:1], sq[1:])[0, 0] == pytest.approx(2 / 6)


def _greedy_reference(n: int, scores: np.ndarray, suppresses) -> list[int]:
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(not suppresses(k, i) for k in keep):
            keep.append(i)
    return keep


def test_circle_nms_matches_brute_force():
    rng = np.random.default_rng(1)
    centers = rng.uniform(-5, 5, (80, 2))
    scores = rng.random(80)
    radius = 1.3
    ref = _greedy_reference(80, scores, lambda k, i: np.hypot(*(centers[k] - centers[i])) <= radius)
    assert list(circle_nms(centers, scores, radius)) == ref
    assert list(circle_nms(centers, scores, radius, max_keep=5)) == ref[:5]


def test_rotated_nms_matches_brute_force():
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 60, spread=5.0)
    scores = rng.random(60)
    thr = 0.2
    ref = _greedy_reference(60, scores, lambda k, i: _shapely_iou(boxes[k], boxes[i]) > thr)
    got = list(rotated_nms(boxes, scores, thr))
    assert got == ref
    assert len(ref) < 60  # something was suppressed
