"""Vectorised ray casting against unions of oriented boxes (the geometry shared by all sensors).

Every object, static or moving, is a union of *parts*: boxes axis-aligned in the object's frame
(origin at the object's annotation-box centre, x forward, z up), the object itself placed by a
global centre and a yaw. A sensor provides a grid of rays (camera pixels or lidar beam x azimuth)
and, per object, the sub-rectangles of that grid its envelope can cover, so each object is only
tested against the rays that can hit it (the cost scales with covered area, not objects x rays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Normal codes stored per hit: axis * 2 + (1 if the outward normal points to +axis else 0).
N_NORMAL_CODES = 6
_NORMAL_OF_CODE = np.array(
    [[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=np.float32
)

Rect = tuple[int, int, int, int]  # row0, row1, col0, col1 (half-open) in the ray grid


@dataclass
class Geometry:
    """All objects of a scene at one instant, in the global frame.

    Object ``i`` owns parts ``part_start[i]:part_start[i + 1]`` of the part table.
    """

    center: np.ndarray  # (N, 3) float64 global position of the object frame origin
    yaw: np.ndarray  # (N,) float64
    half: np.ndarray  # (N, 3) float64 half extents of the envelope (annotation box)
    part_start: np.ndarray  # (N + 1,) int64
    part_center: np.ndarray  # (Q, 3) float32 part centres in the object frame
    part_half: np.ndarray  # (Q, 3) float32 part half extents

    def __len__(self) -> int:
        return len(self.center)

    def corners(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), 8, 3) global corners of the envelopes of objects ``idx``."""
        signs = np.array(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64
        )
        local = signs[None] * self.half[idx, None, :]
        c, s = np.cos(self.yaw[idx])[:, None], np.sin(self.yaw[idx])[:, None]
        x = c * local[..., 0] - s * local[..., 1]
        y = s * local[..., 0] + c * local[..., 1]
        return np.stack([x, y, local[..., 2]], -1) + self.center[idx, None, :]


@dataclass
class HitBuffer:
    """Nearest hit per ray. ``depth`` is the ray parameter t (range for unit rays)."""

    depth: np.ndarray  # (R, C) float32, inf = no hit
    obj: np.ndarray  # (R, C) int32 object index, -1 = none (ground/sky)
    part: np.ndarray  # (R, C) int32 global part index, -1 = none
    normal_code: np.ndarray  # (R, C) int8, see N_NORMAL_CODES
    local: np.ndarray  # (R, C, 3) float32 hit position in the part, normalised to [-1, 1]

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> HitBuffer:
        return cls(
            depth=np.full(shape, np.inf, np.float32),
            obj=np.full(shape, -1, np.int32),
            part=np.full(shape, -1, np.int32),
            normal_code=np.full(shape, -1, np.int8),
            local=np.zeros((*shape, 3), np.float32),
        )

    def global_normals(self, geo: Geometry, mask: np.ndarray) -> np.ndarray:
        """(M, 3) float32 outward normals in the global frame of the object hits in ``mask``."""
        n = _NORMAL_OF_CODE[self.normal_code[mask]]
        yaw = geo.yaw[self.obj[mask]].astype(np.float32)
        c, s = np.cos(yaw), np.sin(yaw)
        return np.stack([c * n[:, 0] - s * n[:, 1], s * n[:, 0] + c * n[:, 1], n[:, 2]], -1)


def cast(
    origin: np.ndarray,
    dirs: np.ndarray,
    geo: Geometry,
    rects: list[tuple[int, list[Rect]]],
    hits: HitBuffer,
    want_surface: bool = True,
) -> np.ndarray:
    """Cast the ray grid ``dirs`` (R, C, 3), from ``origin`` (3,) global, against objects.

    ``rects`` lists, per candidate object index, the grid rectangles its envelope may cover.
    ``hits`` is updated in place (z-test against what it already holds, e.g. the ground).
    Returns (N,) int64: per object, the number of rays that hit it ignoring all other objects
    (its unoccluded footprint, used for visibility).
    """
    footprint = np.zeros(len(geo), np.int64)
    origin = np.asarray(origin, np.float64)
    for i, rect_list in rects:
        c, s = np.cos(geo.yaw[i]), np.sin(geo.yaw[i])
        rinv = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], np.float32)  # global -> object
        o_l = (rinv @ (origin - geo.center[i])).astype(np.float32)
        p0, p1 = geo.part_start[i], geo.part_start[i + 1]
        pc = geo.part_center[p0:p1]
        ph = geo.part_half[p0:p1]
        lo_b = (pc - ph - o_l).T[:, :, None]  # (3, P, 1)
        hi_b = (pc + ph - o_l).T[:, :, None]
        for r0, r1, c0, c1 in rect_list:
            sub = dirs[r0:r1, c0:c1]
            h, w = sub.shape[:2]
            if h == 0 or w == 0:
                continue
            d = sub.reshape(-1, 3) @ rinv.T
            inv = np.ascontiguousarray((1.0 / np.where(np.abs(d) < 1e-9, np.float32(1e-9), d)).T)
            # Slab test, one axis at a time ((P, M) arrays; reductions over a size-3 axis are slow).
            near_ax = []
            t_near = t_far = None
            for ax in range(3):
                ta = lo_b[ax] * inv[ax]
                tb = hi_b[ax] * inv[ax]
                tn = np.minimum(ta, tb)
                tf = np.maximum(ta, tb, out=ta)
                near_ax.append(tn)
                t_near = tn.copy() if t_near is None else np.maximum(t_near, tn, out=t_near)
                t_far = tf if t_far is None else np.minimum(t_far, tf, out=t_far)
            t_near[(t_far < t_near) | (t_near <= 0)] = np.inf
            if len(pc) > 1:
                best = t_near.argmin(0)
                t_best = np.take_along_axis(t_near, best[None], 0)[0]
            else:
                best = np.zeros(t_near.shape[1], np.int64)
                t_best = t_near[0]
            finite = np.isfinite(t_best)
            footprint[i] += int(finite.sum())
            depth_view = hits.depth[r0:r1, c0:c1].reshape(-1)
            closer = t_best < depth_view
            if not closer.any():
                continue
            m = np.flatnonzero(closer)
            bm = best[m]
            tb = t_best[m]
            rr = r0 + m // w
            cc = c0 + m % w
            hits.depth[rr, cc] = tb
            hits.obj[rr, cc] = i
            hits.part[rr, cc] = p0 + bm
            if want_surface:
                axis = np.stack([near_ax[a][bm, m] for a in range(3)], -1).argmax(-1)
                dm = d[m]
                sign_pos = np.take_along_axis(dm, axis[:, None], 1)[:, 0] < 0
                hits.normal_code[rr, cc] = (axis * 2 + sign_pos).astype(np.int8)
                hits.local[rr, cc] = (o_l + tb[:, None] * dm - pc[bm]) / ph[bm]
    return footprint
