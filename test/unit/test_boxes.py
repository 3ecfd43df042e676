"""Box geometry: corners, rotation, points in boxes, frame transforms."""

import numpy as np
import pytest

from qd_perception.geometry.boxes import box_corners, points_in_boxes, transform_boxes
from qd_perception.geometry.transforms import (
    invert,
    make_transform,
    matrix_to_quat,
    quat_to_matrix,
    yaw_to_quat,
)


def test_corner_order_matches_docstring():
    box = np.array([[0, 0, 1, 4, 2, 2, 0, 0, 0]], float)
    c = box_corners(box)[0]
    assert c[0] == pytest.approx([2, 1, 0])  # front-left bottom
    assert c[1] == pytest.approx([2, -1, 0])  # front-right bottom
    assert c[6] == pytest.approx([-2, -1, 2])  # rear-right top


def test_points_in_rotated_box():
    box = np.array([[10, 5, 0, 4, 1, 2, np.pi / 2, 0, 0]], float)
    pts = np.array([[10, 6.9, 0], [11, 5, 0], [10, 5, 1.1]])
    assert points_in_boxes(pts, box)[0].tolist() == [True, False, False]


def test_transform_boxes_inverse_and_quaternions():
    rng = np.random.default_rng(0)
    boxes = np.concatenate(
        [rng.normal(size=(5, 3)), rng.uniform(1, 3, (5, 3)), rng.uniform(-3, 3, (5, 3))], 1
    )
    T = make_transform(quat_to_matrix(yaw_to_quat(0.7)), np.array([3.0, -2.0, 0.5]))
    back = transform_boxes(transform_boxes(boxes, T), invert(T))
    assert np.allclose(back[:, :6], boxes[:, :6]) and np.allclose(back[:, 7:], boxes[:, 7:])
    assert np.allclose(np.cos(back[:, 6] - boxes[:, 6]), 1)
    q = matrix_to_quat(T[:3, :3])
    assert np.allclose(quat_to_matrix(q), T[:3, :3])
    # corners transform like points
    assert np.allclose(box_corners(transform_boxes(boxes, T)), box_corners(boxes) @ T[:3, :3].T + T[:3, 3])
