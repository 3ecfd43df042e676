"""NMS for BEV detections, own numpy implementations (no torchvision).

* :func:`circle_nms`: CenterPoint's greedy NMS on centre distance (per task group radius).
* :func:`rotated_nms`: greedy NMS on rotated bird's-eye-view IoU (:func:`bev_iou`).
"""

from __future__ import annotations

import numpy as np

#: Rectangle corner signs, counter-clockwise seen from above (+z).
_CCW = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64) / 2.0


def circle_nms(
    centers: np.ndarray, scores: np.ndarray, radius: float, max_keep: int | None = None
) -> np.ndarray:
    """Greedy: keep the best box, drop every box whose centre lies within ``radius`` m of a kept one.

    centers (N, 2) m, scores (N,) -> indices kept, by decreasing score.
    """
    order = np.argsort(-scores, kind="stable")
    c = np.asarray(centers, np.float64).reshape(-1, 2)[order]
    r2 = radius * radius
    alive = np.ones(len(order), bool)
    keep = []
    # Distances only from each kept box to the boxes after it: O(kept * N), not O(N^2) memory.
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(order[i])
        if max_keep is not None and len(keep) >= max_keep:
            break
        d = c[i + 1 :] - c[i]
        alive[i + 1 :] &= d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] > r2
    return np.asarray(keep, np.int64)


def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 5) [x, y, dx, dy, yaw] -> (N, 4, 2) counter-clockwise footprint corners."""
    b = np.asarray(boxes, np.float64).reshape(-1, 5)
    local = _CCW[None] * b[:, None, 2:4]
    c, s = np.cos(b[:, 4])[:, None], np.sin(b[:, 4])[:, None]
    x = c * local[..., 0] - s * local[..., 1] + b[:, None, 0]
    y = s * local[..., 0] + c * local[..., 1] + b[:, None, 1]
    return np.stack([x, y], -1)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """points (..., K, 2) inside convex CCW poly (..., 4, 2) (same leading dims) -> (..., K) bool."""
    edges = np.roll(poly, -1, axis=-2) - poly  # (..., 4, 2)
    rel = points[..., :, None, :] - poly[..., None, :, :]  # (..., K, 4, 2)
    return (_cross(edges[..., None, :, :], rel) >= -1e-9).all(-1)


def bev_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection area of footprints (N, 5) and (M, 5) -> (N, M), m^2.

    The intersection polygon's vertices are the corners of each rectangle inside the other plus
    the edge-edge crossings (24 candidates); they are sorted by angle about their mean and the
    invalid ones replaced by the first valid vertex, so the shoelace formula sees a closed polygon.
    """
    ca, cb = bev_corners(a), bev_corners(b)
    n, m = len(ca), len(cb)
    pa = np.broadcast_to(ca[:, None], (n, m, 4, 2))
    pb = np.broadcast_to(cb[None, :], (n, m, 4, 2))
    a_in_b = _inside(pa, pb)
    b_in_a = _inside(pb, pa)
    # Edge crossings: p + t r = q + u s.
    p, r = pa[:, :, :, None, :], (np.roll(pa, -1, axis=2) - pa)[:, :, :, None, :]
    q, s = pb[:, :, None, :, :], (np.roll(pb, -1, axis=2) - pb)[:, :, None, :, :]
    denom = _cross(r, s)
    qp = q - p
    ok = np.abs(denom) > 1e-12
    safe = np.where(ok, denom, 1.0)
    t = _cross(qp, s) / safe
    u = _cross(qp, r) / safe
    hit = ok & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    xpts = (p + t[..., None] * r).reshape(n, m, 16, 2)
    pts = np.concatenate([pa, pb, xpts], axis=2)  # (n, m, 24, 2)
    valid = np.concatenate([a_in_b, b_in_a, hit.reshape(n, m, 16)], axis=2)
    cnt = valid.sum(-1)
    centre = (pts * valid[..., None]).sum(2) / np.maximum(cnt, 1)[..., None]
    ang = np.arctan2(pts[..., 1] - centre[..., None, 1], pts[..., 0] - centre[..., None, 0])
    ang = np.where(valid, ang, np.inf)
    order = np.argsort(ang, axis=-1)
    pts = np.take_along_axis(pts, order[..., None], axis=2)
    valid = np.take_along_axis(valid, order, axis=-1)
    pts = np.where(valid[..., None], pts, pts[:, :, :1, :])
    area = 0.5 * np.abs(_cross(pts, np.roll(pts, -1, axis=2)).sum(-1))
    return np.where(cnt >= 3, area, 0.0)


def bev_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotated BEV IoU of (N, 5) and (M, 5) [x, y, dx, dy, yaw] -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 5)
    b = np.asarray(b, np.float64).reshape(-1, 5)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter = bev_intersection(a, b)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return inter / np.maximum(union, 1e-9)


def rotated_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None
) -> np.ndarray:
    """Greedy NMS on rotated BEV IoU. boxes (N, 5) [x, y, dx, dy, yaw] -> kept indices by score."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    # Only boxes whose circumscribed circles meet can overlap: skip the polygon work elsewhere.
    rad = 0.5 * np.hypot(b[:, 2], b[:, 3])
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        if max_keep is not None and len(keep) >= max_keep:
            break
        rest = np.nonzero(~suppressed)[0]
        rest = rest[rest > i]
        near = rest[np.hypot(*(b[rest, :2] - b[i, :2]).T) < rad[rest] + rad[i]]
        if len(near):
            iou = bev_iou(b[i : i + 1], b[near])[0]
            suppressed[near[iou > iou_threshold]] = True
    return np.asarray(keep, np.int64)
