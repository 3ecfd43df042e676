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


_PRIORS = np.log(np.array([MEAN_SIZE_LWH[c] for c in CLASS_NAMES]))  # (C, 3)
_VEHICLES = {"car", "truck", "construction_vehicle", "bus", "trailer", "motorcycle", "bicycle"}


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


def size_costs(length: float, width: float, height: float) -> np.ndarray:
    """(C,) cost of each class for an observed footprint/height (lower is better).

    Log-ratio to the class mean; exceeding the prior weighs 4x more than falling short of it in
    length/width (occlusion), height is seen whole from a roof-mounted lidar so both directions count.
    """
    obs = np.log(np.maximum([length, width, height], 0.05))
    d = obs[None] - _PRIORS  # > 0: larger than the prior
    w_over = np.array([4.0, 4.0, 3.0])
    w_under = np.array([0.6, 0.8, 2.0])
    return (np.where(d > 0, w_over, w_under) * d**2).sum(1)


class ClassicalDetector:
    """Ground removal + clustering + oriented boxes + size classes. See the module docstring."""

    modalities: tuple[str, ...] = ("lidar",)

    def __init__(self, config: ClassicalConfig | None = None) -> None:
        self.config = config or ClassicalConfig()
        # (t_us, centres (N, 2) global, velocities (N, 2) global, labels (N,)) of the last frame
        self._prev: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

    def reset(self) -> None:
        self._prev = None

    # -- pipeline --------------------------------------------------------------------------
    def detect(self, frame: Frame) -> Detections:
        cfg = self.config
        if frame.points is None:
            raise ValueError("ClassicalDetector needs lidar points (Frame.points is None)")
        pts = np.asarray(frame.points)
        if len(pts) and pts.shape[1] >= 5:
            pts = pts[pts[:, 4] == 0]  # current sweep only: older sweeps smear moving objects
        pts = pts[np.isfinite(pts[:, :3]).all(1)] if len(pts) else pts
        keep = (
            (np.abs(pts[:, 0]) < cfg.range_m)
            & (np.abs(pts[:, 1]) < cfg.range_m)
            & (pts[:, 2] > cfg.z_min_m)
            & (pts[:, 2] < cfg.z_max_m)
        )
        pts = pts[keep]
        if len(pts) < cfg.min_points:
            return self._finish(frame, [], [], [])
        ground = self._ground_height(pts)
        obj = pts[pts[:, 2] - ground > cfg.ground_clearance_m]
        obj_ground = ground[pts[:, 2] - ground > cfg.ground_clearance_m]
        boxes, labels, scores = [], [], []
        for idx in self._clusters(obj):
            box = self._fit(obj[idx, :3], obj_ground[idx])
            if box is not None:
                b, lab, sc = box
                boxes.append(b)
                labels.append(lab)
                scores.append(sc)
        return self._finish(frame, boxes, labels, scores)

    def _ground_height(self, pts: np.ndarray) -> np.ndarray:
        cfg = self.config
        g = cfg.ground_cell_m
        ij = np.floor((pts[:, :2] + cfg.range_m) / g).astype(np.int64)
        n = math.ceil(2 * cfg.range_m / g) + 1
        flat = ij[:, 0] * n + ij[:, 1]
        cell_min = np.full(n * n, np.inf)
        # Per-cell minimum without ufunc.at (several times slower): sort by (cell, z) and keep
        # the first point of each cell.
        order = np.lexsort((pts[:, 2], flat))
        fs = flat[order]
        first = np.ones(len(fs), bool)
        first[1:] = fs[1:] != fs[:-1]
        cell_min[fs[first]] = pts[order[first], 2]
        ground = cell_min[flat]
        # A cell entirely covered by an object has no ground return: do not let its lowest
        # (object) point become the ground. Clip to the typical ground level plus a slope margin.
        ref = np.median(cell_min[np.isfinite(cell_min)])
        return np.minimum(ground, ref + 0.3)

    def _clusters(self, obj: np.ndarray) -> list[np.ndarray]:
        cfg = self.config
        if len(obj) < cfg.min_points:
            return []
        c = cfg.cluster_cell_m
        ij = np.floor((obj[:, :2] + cfg.range_m) / c).astype(np.int64)
        n = math.ceil(2 * cfg.range_m / c) + 1
        occ = np.zeros((n, n), bool)
        occ[ij[:, 0], ij[:, 1]] = True
        grown = ndimage.binary_dilation(occ, structure=np.ones((3, 3), bool))
        lab, num = ndimage.label(grown, structure=np.ones((3, 3), bool))
        pl = lab[ij[:, 0], ij[:, 1]]
        order = np.argsort(pl, kind="stable")
        bounds = np.searchsorted(pl[order], np.arange(1, num + 2))
        out = []
        for k in range(num):
            idx = order[bounds[k] : bounds[k + 1]]
            if len(idx) >= cfg.min_points:
                out.append(idx)
        return out

    def _fit(self, xyz: np.ndarray, ground: np.ndarray) -> tuple[np.ndarray, int, float] | None:
        cfg = self.config
        centre = xyz[:, :2].mean(0)
        yaw, lo, hi = min_area_rectangle(xyz[:, :2] - centre, cfg.heading_steps)
        ext = hi - lo
        if ext.max() > cfg.max_extent_m:
            return None
        # length along the longer side
        if ext[1] > ext[0]:
            yaw += np.pi / 2
            lo, hi = np.array([lo[1], -hi[0]]), np.array([hi[1], -lo[0]])
            ext = hi - lo
        z_bottom = float(np.median(ground))
        z_top = float(xyz[:, 2].max())
        height = z_top - z_bottom
        costs = size_costs(max(ext[0], 0.1), max(ext[1], 0.1), height)
        # Classes whose length is the short side (barrier: 0.5 m long, 2.5 m wide) match the
        # footprint turned by 90 degrees.
        costs_turned = size_costs(max(ext[1], 0.1), max(ext[0], 0.1), height)
        label = int(np.argmin(np.minimum(costs, costs_turned)))
        cost = float(min(costs[label], costs_turned[label]))
        if cost > cfg.max_size_cost:
            return None
        if costs_turned[label] < costs[label]:
            yaw += np.pi / 2
            lo, hi = np.array([lo[1], -hi[0]]), np.array([hi[1], -lo[0]])
            ext = hi - lo
        prior = MEAN_SIZE_LWH[CLASS_NAMES[label]]
        u = np.array([np.cos(yaw), np.sin(yaw)])
        v = np.array([-np.sin(yaw), np.cos(yaw)])
        # Grow each axis to the prior away from the sensor: the visible edge stays put.
        sensor = np.asarray(cfg.sensor_xy) - centre
        s_proj = np.array([sensor @ u, sensor @ v])
        new_lo, new_hi = lo.copy(), hi.copy()
        for a, size in ((0, prior[0]), (1, prior[1])):
            if ext[a] < size:
                if s_proj[a] <= (lo[a] + hi[a]) / 2:  # sensor on the low side: near edge is lo
                    new_hi[a] = lo[a] + size
                else:
                    new_lo[a] = hi[a] - size
        mid = (new_lo + new_hi) / 2
        cxy = centre + mid[0] * u + mid[1] * v
        dims = new_hi - new_lo
        dz = max(height, prior[2] * 0.9) if height < prior[2] else height
        cz = z_bottom + dz / 2
        n_term = 1.0 - math.exp(-len(xyz) / 15.0)
        score = float(math.exp(-cost) * n_term)
        # The rectangle fixes the heading axis, not its direction: choose the one within 90 deg of
        # the ego's heading (traffic in the ego's direction; motion overrides it later).
        yaw = float((yaw + np.pi / 2) % np.pi - np.pi / 2)
        box = np.array([cxy[0], cxy[1], cz, dims[0], dims[1], dz, yaw, 0.0, 0.0])
        return box, label, score

    def _finish(self, frame: Frame, boxes: list, labels: list, scores: list) -> Detections:
        cfg = self.config
        if not boxes:
            self._prev = (frame.timestamp_us, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, np.int64))
            return Detections.empty()
        B = np.array(boxes, dtype=np.float64)
        L = np.array(labels, dtype=np.int64)
        S = np.array(scores, dtype=np.float32)
        keep = S >= cfg.score_threshold
        B, L, S = B[keep], L[keep], S[keep]
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
        for k in range(len(B)):
            if CLASS_NAMES[int(L[k])] in _VEHICLES and speed[k] > cfg.min_speed_for_heading:
                heading = math.atan2(B[k, 8], B[k, 7])
                # keep the fitted axis, pick its direction closest to the motion
                if math.cos(heading - B[k, 6]) < 0:
                    B[k, 6] = float(wrap_angle(B[k, 6] + np.pi))
        return B
