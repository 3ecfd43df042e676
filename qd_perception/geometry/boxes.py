"""3-D boxes as arrays.

Convention used everywhere in the project (models, sim, eval, messages)::

    boxes: (N, 9) float  [x, y, z, dx, dy, dz, yaw, vx, vy]

* ``x, y, z``: box **centre** (geometric centre, like nuScenes), metres, in the frame named by
  the caller (the detection frame is the ego frame ``base_link``: x forward, y left, z up).
* ``dx``: length along the heading, ``dy``: width, ``dz``: height, metres.
  (nuScenes ``wlh`` is ``(dy, dx, dz)``.)
* ``yaw``: heading, radians, counter-clockwise about +z from +x, wrapped to [-pi, pi).
* ``vx, vy``: velocity over ground, m/s, in the same frame.

Corner order of :func:`box_corners` (indices; bottom face 0-3, top face 4-7)::

          front (+x)
        4 -------- 5          top face (z + dz/2)
        |          |
        |          |           0 = front-left, 1 = front-right,
        7 -------- 6           2 = rear-right, 3 = rear-left   (bottom, z - dz/2)
                               4..7 the same corners on the top face
        left (+y) is on the side of corners 0, 3, 4, 7
"""

from __future__ import annotations

import numpy as np

BOX_DIM = 9
_CORNER_SIGNS = np.array(
    [
        [1, 1, -1],
        [1, -1, -1],
        [-1, -1, -1],
        [-1, 1, -1],
        [1, 1, 1],
        [1, -1, 1],
        [-1, -1, 1],
        [-1, 1, 1],
    ],
    dtype=np.float64,
)
#: Pairs of corner indices forming the 12 box edges (for line drawing and RViz markers).
BOX_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0),
    (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7),
)  # fmt: skip


def wrap_angle(a: np.ndarray | float) -> np.ndarray | float:
    """Wrap radians to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def rot_z(yaw: np.ndarray) -> np.ndarray:
    """(N,) yaw -> (N, 3, 3) rotation matrices about +z."""
    yaw = np.asarray(yaw, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    z, o = np.zeros_like(yaw), np.ones_like(yaw)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, >=7) boxes -> (N, 8, 3) corners in the boxes' frame (order in the module docstring)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, boxes.shape[-1])
    local = _CORNER_SIGNS[None] * (boxes[:, None, 3:6] / 2.0)
    return np.einsum("nij,nkj->nki", rot_z(boxes[:, 6]), local) + boxes[:, None, 0:3]


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(P, >=3) points, (N, >=7) boxes -> (N, P) bool: point inside box (optionally grown by margin m)."""
    pts = np.asarray(points, dtype=np.float64)[:, :3]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, boxes.shape[-1])
    if len(boxes) == 0 or len(pts) == 0:
        return np.zeros((len(boxes), len(pts)), dtype=bool)
    d = pts[None, :, :] - boxes[:, None, 0:3]
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    lx = c * d[..., 0] + s * d[..., 1]
    ly = -s * d[..., 0] + c * d[..., 1]
    half = boxes[:, None, 3:6] / 2.0 + margin
    return (np.abs(lx) <= half[..., 0]) & (np.abs(ly) <= half[..., 1]) & (np.abs(d[..., 2]) <= half[..., 2])


def transform_boxes(boxes: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Apply the rigid 4x4 transform ``T`` (target <- source) to (N, 9) boxes.

    Only the yaw part of the rotation is applied to the heading, which is exact when ``T``
    rotates about z (ego <-> global, lidar <-> ego on a level rig). Velocities are rotated.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_DIM).copy()
    R, t = T[:3, :3], T[:3, 3]
    boxes[:, 0:3] = boxes[:, 0:3] @ R.T + t
    dyaw = np.arctan2(R[1, 0], R[0, 0])
    boxes[:, 6] = wrap_angle(boxes[:, 6] + dyaw)
    v = np.concatenate([boxes[:, 7:9], np.zeros((len(boxes), 1))], 1) @ R.T
    boxes[:, 7:9] = v[:, :2]
    return boxes
