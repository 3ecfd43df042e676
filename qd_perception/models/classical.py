"""A classical (learning-free) lidar detector: the baseline the node graph runs before CenterPoint.

Pipeline on the current sweep (ego frame, ``Frame.points`` rows with ``time_lag == 0``):

1. **Crop** to the detection range and a height band.
2. **Ground removal**: per ``ground_cell_m`` BEV cell the lowest point is the local ground
   (clipped so a cell covered by a roof cannot claim the roof as ground); points less than
   ``ground_clearance_m`` above it are removed.
3. **Clustering**: BEV occupancy at ``cluster_cell_m``, dilated once so sparse far objects stay
   connected, then 8-connected components (``scipy.ndimage.label``).
4. **Oriented box**: minimum-area rectangle over a sweep of headings (0..90 deg), height from
   the points' z extent down to the local ground.

Steps 4-6 run for all clusters at once (points sorted by cluster, per-cluster reductions with
``ufunc.reduceat``): a sweep has 30-60 clusters and a per-cluster Python loop cost ~1 ms each.
5. **Class by size**: every class's mean size (:data:`MEAN_SIZE_LWH`) is scored in log-size space;
   observed dimensions are lower bounds (the far side of an object is occluded), so being
   smaller than the prior costs less than being larger. The box is then grown to the class's
   prior size *away from the sensor*, keeping the visible edges in place (an L-shaped car
   return gives the correct centre, not the centre of its visible corner).
6. **Score**: size likelihood times a point-count term.
7. **Velocity**: greedy one-to-one association (same class, gated) with the previous frame's
   detections in the global frame (``Frame.ego2global``), smoothed; heading of moving vehicles
   follows velocity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from qd_perception.classes import CLASS_NAMES, MEAN_SIZE_LWH, attribute_for
from qd_perception.data.types import Detections, Frame
from qd_perception.geometry.boxes import wrap_angle


@dataclass(frozen=True)
class ClassicalConfig:
    """Settings of :class:`ClassicalDetector` (metres, seconds)."""

    range_m: float = 50.0  # |x|, |y| limit in the ego frame
    z_min_m: float = -1.0
    z_max_m: float = 4.5
    ground_cell_m: float = 2.0
    ground_clearance_m: float = 0.25
    cluster_cell_m: float = 0.3
    min_points: int = 5
    max_extent_m: float = 14.0  # clusters longer than this are walls / buildings
    heading_steps: int = 30  # rectangle headings tried over 90 deg
    max_size_cost: float = 2.5  # clusters matching no class better than this are dropped
    assoc_distance_m: float = 2.5
    max_speed_mps: float = 15.0  # widens the gate for objects without a velocity yet
    velocity_smoothing: float = 0.5  # weight of the new velocity estimate
    min_speed_for_heading: float = 1.0
    score_threshold: float = 0.05
    sensor_xy: tuple[float, float] = (0.94, 0.0)  # lidar position in ego (occlusion direction)

    def __post_init__(self) -> None:
        if self.cluster_cell_m <= 0 or self.ground_cell_m <= 0:
            raise ValueError("cell sizes must be > 0")
        if self.min_points < 1 or self.heading_steps < 1:
            raise ValueError("min_points and heading_steps must be >= 1")


_PRIOR_LWH = np.array([MEAN_SIZE_LWH[c] for c in CLASS_NAMES])  # (C, 3)
_PRIORS = np.log(_PRIOR_LWH)
_VEHICLES = {"car", "truck", "construction_vehicle", "bus", "trailer", "motorcycle", "bicycle"}
_IS_VEHICLE = np.array([c in _VEHICLES for c in CLASS_NAMES])


def min_area_rectangle(xy: np.ndarray, steps: int = 30) -> tuple[float, np.ndarray, np.ndarray]:
    """Minimum-area oriented rectangle of (P, 2) points over ``steps`` headings in [0, pi/2).

    Returns (yaw, lo (2,), hi (2,)): extents of the points along the rectangle's axes
    u = (cos yaw, sin yaw) and v = (-sin yaw, cos yaw).
    """
    ang = np.arange(steps) * (np.pi / 2 / steps)
    c, s = np.cos(ang), np.sin(ang)
    u = xy[:, 0:1] * c + xy[:, 1:2] * s  # (P, steps)
    v = -xy[:, 0:1] * s + xy[:, 1:2] * c
    area = (u.max(0) - u.min(0)) * (v.max(0) - v.min(0))
    k = int(np.argmin(area))
    return float(ang[k]), np.array([u[:, k].min(), v[:, k].min()]), np.array([u[:, k].max(), v[:, k].max()])


_W_OVER = np.array([4.0, 4.0, 3.0])
_W_UNDER = np.array([0.6, 0.8, 2.0])


def size_costs(
    length: float | np.ndarray, width: float | np.ndarray, height: float | np.ndarray
) -> np.ndarray:
    """(C,) cost of each class for an observed footprint/height (lower is better); (K, C) for
    (K,) arrays of observations.

    Log-ratio to the class mean; exceeding the prior weighs 4x more than falling short of it in
    length/width (occlusion), height is seen whole from a roof-mounted lidar so both directions count.
    """
    obs = np.log(np.maximum(np.stack(np.broadcast_arrays(length, width, height), -1), 0.05))  # (..., 3)
    d = obs[..., None, :] - _PRIORS  # (..., C, 3), > 0: larger than the prior
    return (np.where(d > 0, _W_OVER, _W_UNDER) * d**2).sum(-1)


class ClassicalDetector:
    """Ground removal + clustering + oriented boxes + size classes. See the module docstring."""

    modalities: tuple[str, ...] = ("lidar",)

    def __init__(self, config: ClassicalConfig | None = None) -> None:
        self.config = config or ClassicalConfig()
        # (t_us, centres (N, 2) global, velocities (N, 2) global, labels (N,)) of the last frame
        self._prev: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._buf = np.empty((3, self.config.heading_steps, 0))  # see _rect_buffers

    def reset(self) -> None:
        self._prev = None

    # -- pipeline --------------------------------------------------------------------------
    def detect(self, frame: Frame) -> Detections:
        cfg = self.config
        if frame.points is None:
            raise ValueError("ClassicalDetector needs lidar points (Frame.points is None)")
        pts = np.asarray(frame.points)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise ValueError(f"Frame.points must be (P, >=3), got {pts.shape}")
        # One mask, one copy. Comparisons with NaN are False and |inf| is out of range, so the
        # range test also removes non-finite points.
        keep = (
            (np.abs(pts[:, 0]) < cfg.range_m)
            & (np.abs(pts[:, 1]) < cfg.range_m)
            & (pts[:, 2] > cfg.z_min_m)
            & (pts[:, 2] < cfg.z_max_m)
        )
        if pts.shape[1] >= 5:
            keep &= pts[:, 4] == 0  # current sweep only: older sweeps smear moving objects
        pts = pts[keep, :3]
        if len(pts) < cfg.min_points:
            return self._finish(frame, np.zeros((0, 9)), np.zeros(0, np.int64), np.zeros(0))
        ground = self._ground_height(pts)
        above = pts[:, 2] - ground > cfg.ground_clearance_m
        obj, obj_ground = pts[above], ground[above]
        order, starts = self._clusters(obj)
        boxes, labels, scores = self._fit_all(obj[order].astype(np.float64), obj_ground[order], starts)
        return self._finish(frame, boxes, labels, scores)

    def _ground_height(self, pts: np.ndarray) -> np.ndarray:
        cfg = self.config
        g = cfg.ground_cell_m
        ij = np.floor((pts[:, :2] + cfg.range_m) / g).astype(np.int64)
        n = math.ceil(2 * cfg.range_m / g) + 1
        flat = ij[:, 0] * n + ij[:, 1]
        z = np.ascontiguousarray(pts[:, 2])
        # ufunc.at has a fast path only when the target's dtype is the values' (40x here)
        cell_min = np.full(n * n, np.inf, z.dtype)
        np.minimum.at(cell_min, flat, z)
        cell_min = cell_min.astype(np.float64)
        ground = cell_min[flat]
        # A cell entirely covered by an object has no ground return: do not let its lowest
        # (object) point become the ground. Clip to the typical ground level plus a slope margin.
        ref = np.median(cell_min[np.isfinite(cell_min)])
        return np.minimum(ground, ref + 0.3)

    def _clusters(self, obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cluster the object points: (order (Q,), starts (K,)) such that ``obj[order]`` lists the
        K clusters of at least ``min_points`` points one after the other, cluster k starting at
        ``starts[k]`` (clusters by label, points in their original order within a cluster)."""
        cfg = self.config
        empty = np.zeros(0, np.int64)
        if len(obj) < cfg.min_points:
            return empty, empty
        c = cfg.cluster_cell_m
        ij = np.floor((obj[:, :2] + cfg.range_m) / c).astype(np.int64)
        n = math.ceil(2 * cfg.range_m / c) + 1
        occ = np.zeros((n + 2, n + 2), bool)  # one cell of border for the dilation
        occ[ij[:, 0] + 1, ij[:, 1] + 1] = True
        # 3x3 dilation as OR of shifted views (3x faster than ndimage.binary_dilation here)
        rows = occ[:-2] | occ[1:-1] | occ[2:]
        grown = rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]
        lab, num = ndimage.label(grown, structure=np.ones((3, 3), bool))
        pl = lab[ij[:, 0], ij[:, 1]]
        counts = np.bincount(pl, minlength=num + 1)
        big = counts >= cfg.min_points
        big[0] = False  # label 0 is background (never hit: every point's cell is occupied)
        sel = np.flatnonzero(big[pl])
        order = sel[np.argsort(pl[sel], kind="stable")]
        sizes = counts[big]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else empty
        return order, starts

    def _rect_buffers(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Three (heading_steps, n) float64 work arrays (views of a buffer grown on demand)."""
        steps = self.config.heading_steps
        if self._buf.shape[2] < n:
            self._buf = np.empty((3, steps, max(n, int(self._buf.shape[2] * 1.5))))
        return self._buf[0, :, :n], self._buf[1, :, :n], self._buf[2, :, :n]

    def _fit_all(
        self, xyz: np.ndarray, ground: np.ndarray, starts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Oriented boxes, classes and scores of all clusters at once.

        xyz: (Q, 3) float64 object points sorted by cluster; ground: (Q,) local ground height of
        each; starts: (K,) first row of each cluster. Returns boxes (M, 9), labels (M,), scores (M,)
        of the M <= K clusters that fit a class (cluster order kept).
        """
        cfg = self.config
        K = len(starts)
        if K == 0:
            return np.zeros((0, 9)), np.zeros(0, np.int64), np.zeros(0)
        counts = np.diff(np.append(starts, len(xyz)))
        seg = np.repeat(np.arange(K), counts)  # cluster of each point
        centre = np.add.reduceat(xyz[:, :2], starts, axis=0) / counts[:, None]  # (K, 2)
        rel = xyz[:, :2] - centre[seg]
        # minimum-area rectangle over heading_steps headings in [0, pi/2), all clusters at once
        ang = np.arange(cfg.heading_steps) * (np.pi / 2 / cfg.heading_steps)
        c, s = np.cos(ang), np.sin(ang)
        # (steps, Q) rows in buffers kept across frames: broadcasting a (Q, 1) column view was
        # ~50x slower, and fresh multi-MB temporaries cost page faults on every sweep
        x, y = np.ascontiguousarray(rel[:, 0]), np.ascontiguousarray(rel[:, 1])
        u, v, tmp = self._rect_buffers(len(x))
        np.multiply(c[:, None], x, out=u)
        np.multiply(s[:, None], y, out=tmp)
        u += tmp
        np.multiply(c[:, None], y, out=v)
        np.multiply(s[:, None], x, out=tmp)
        v -= tmp
        u_lo, u_hi = np.minimum.reduceat(u, starts, axis=1).T, np.maximum.reduceat(u, starts, axis=1).T
        v_lo, v_hi = np.minimum.reduceat(v, starts, axis=1).T, np.maximum.reduceat(v, starts, axis=1).T
        best = np.argmin((u_hi - u_lo) * (v_hi - v_lo), axis=1)  # (K,)
        k = np.arange(K)
        yaw = ang[best]
        lo = np.stack([u_lo[k, best], v_lo[k, best]], 1)  # (K, 2) extents along (u, v)
        hi = np.stack([u_hi[k, best], v_hi[k, best]], 1)
        ext = hi - lo
        ok = ext.max(1) <= cfg.max_extent_m  # longer: walls, buildings

        def turn(mask: np.ndarray) -> None:
            """Rotate the rectangle frame by +90 deg where ``mask``: u' = v, v' = -u."""
            nonlocal yaw, lo, hi, ext
            yaw = np.where(mask, yaw + np.pi / 2, yaw)
            lo, hi = (
                np.where(mask[:, None], np.stack([lo[:, 1], -hi[:, 0]], 1), lo),
                np.where(mask[:, None], np.stack([hi[:, 1], -lo[:, 0]], 1), hi),
            )
            ext = hi - lo

        turn(ext[:, 1] > ext[:, 0])  # length along the longer side
        # median of the local ground per cluster: sort within clusters, take the middle row(s)
        g_sorted = ground[np.lexsort((ground, seg))]
        z_bottom = (g_sorted[starts + (counts - 1) // 2] + g_sorted[starts + counts // 2]) / 2
        z_top = np.maximum.reduceat(xyz[:, 2], starts)
        height = z_top - z_bottom
        e0, e1 = np.maximum(ext[:, 0], 0.1), np.maximum(ext[:, 1], 0.1)
        costs = size_costs(e0, e1, height)  # (K, C)
        # Classes whose length is the short side (barrier: 0.5 m long, 2.5 m wide) match the
        # footprint turned by 90 degrees.
        costs_turned = size_costs(e1, e0, height)
        label = np.argmin(np.minimum(costs, costs_turned), axis=1)
        c_l, ct_l = costs[k, label], costs_turned[k, label]
        cost = np.minimum(c_l, ct_l)
        ok &= cost <= cfg.max_size_cost
        turn(ct_l < c_l)
        prior = _PRIOR_LWH[label]  # (K, 3)
        uu = np.stack([np.cos(yaw), np.sin(yaw)], 1)
        vv = np.stack([-np.sin(yaw), np.cos(yaw)], 1)
        # Grow each axis to the prior away from the sensor: the visible edge stays put.
        sensor = np.asarray(cfg.sensor_xy) - centre
        s_proj = np.stack([(sensor * uu).sum(1), (sensor * vv).sum(1)], 1)
        grow = ext < prior[:, :2]
        near_lo = s_proj <= (lo + hi) / 2  # sensor on the low side: the near edge is lo
        new_hi = np.where(grow & near_lo, lo + prior[:, :2], hi)
        new_lo = np.where(grow & ~near_lo, hi - prior[:, :2], lo)
        mid = (new_lo + new_hi) / 2
        cxy = centre + mid[:, 0:1] * uu + mid[:, 1:2] * vv
        dims = new_hi - new_lo
        dz = np.where(height < prior[:, 2], np.maximum(height, prior[:, 2] * 0.9), height)
        cz = z_bottom + dz / 2
        score = np.exp(-cost) * (1.0 - np.exp(-counts / 15.0))
        # The rectangle fixes the heading axis, not its direction: choose the one within 90 deg of
        # the ego's heading (traffic in the ego's direction; motion overrides it later).
        yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2
        zeros = np.zeros(K)
        boxes = np.stack([cxy[:, 0], cxy[:, 1], cz, dims[:, 0], dims[:, 1], dz, yaw, zeros, zeros], 1)
        return boxes[ok], label[ok].astype(np.int64), score[ok]

    def _finish(self, frame: Frame, B: np.ndarray, L: np.ndarray, S: np.ndarray) -> Detections:
        cfg = self.config
        keep = S >= cfg.score_threshold
        B, L, S = B[keep].astype(np.float64), L[keep], S[keep].astype(np.float32)
        if not len(B):
            self._prev = (frame.timestamp_us, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, np.int64))
            return Detections.empty()
        B = self._velocity(frame, B, L)
        attrs = tuple(
            attribute_for(CLASS_NAMES[int(lab)], float(np.hypot(b[7], b[8]))) for b, lab in zip(B, L)
        )
        return Detections(B, L, S, attrs)

    def _velocity(self, frame: Frame, B: np.ndarray, L: np.ndarray) -> np.ndarray:
        """Associate with the previous frame (global frame) for velocity; update the memory."""
        cfg = self.config
        T = np.asarray(frame.ego2global, dtype=np.float64)
        R2 = T[:2, :2]
        centres_g = B[:, :2] @ R2.T + T[:2, 3]
        vel_g = np.zeros_like(centres_g)
        prev = self._prev
        if prev is not None and len(prev[1]) and 0 < frame.timestamp_us - prev[0] < 1_000_000:
            dt = (frame.timestamp_us - prev[0]) * 1e-6
            p_centres, p_vel, p_labels = prev[1], prev[2], prev[3]
            predicted = p_centres + p_vel * dt  # constant-velocity prediction
            d = np.linalg.norm(centres_g[:, None] - predicted[None], axis=2)
            # Gate: tracks with a velocity are predicted well; new ones may have moved up to
            # max_speed * dt (a 2 Hz keyframe rate needs a wider gate than a 20 Hz lidar).
            has_v = np.any(p_vel != 0, axis=1)
            gate = cfg.assoc_distance_m + np.where(has_v, 0.0, cfg.max_speed_mps * dt)
            d[(L[:, None] != p_labels[None]) | (d > gate[None])] = np.inf
            # Greedy one-to-one matching, closest pairs first.
            a = cfg.velocity_smoothing
            for flat in np.argsort(d, axis=None):
                i, j = divmod(int(flat), d.shape[1])
                if not np.isfinite(d[i, j]):
                    break
                raw = (centres_g[i] - p_centres[j]) / dt
                vel_g[i] = a * raw + (1 - a) * p_vel[j] if has_v[j] else raw
                d[i, :] = np.inf
                d[:, j] = np.inf
        self._prev = (frame.timestamp_us, centres_g, vel_g, L.copy())
        B = B.copy()
        B[:, 7:9] = vel_g @ R2  # global -> ego (R2 orthonormal: R^T v as row-vector product)
        speed = np.hypot(B[:, 7], B[:, 8])
        heading = np.arctan2(B[:, 8], B[:, 7])
        # moving vehicles: keep the fitted axis, pick its direction closest to the motion
        flip = _IS_VEHICLE[L] & (speed > cfg.min_speed_for_heading) & (np.cos(heading - B[:, 6]) < 0)
        B[flip, 6] = wrap_angle(B[flip, 6] + np.pi)
        return B
