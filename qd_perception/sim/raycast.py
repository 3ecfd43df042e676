"""Vectorised ray casting against unions of oriented boxes (the geometry shared by all sensors).

Every object, static or moving, is a union of *parts*: boxes axis-aligned in the object's frame
(origin at the object's annotation-box centre, x forward, z up), the object itself placed by a
global centre and a yaw. A sensor provides a grid of rays (camera pixels or lidar beam x azimuth)
and, per object, the sub-rectangles of that grid its envelope can cover, so each object is only
tested against the rays that can hit it (the cost scales with covered area, not objects x rays).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from qd_perception.sim.road import Road

#: HitBuffer.obj codes of the static ground (all other hits are object indices >= 0).
SKY, GROUND, KERB_TOP, KERB_FACE, KERB_SIDE_FACE = -1, -2, -3, -4, -5

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

    @property
    def part_center_planes(self) -> np.ndarray:
        """(3, Q) float32, the part centres as x, y, z planes (cached)."""
        if not hasattr(self, "_pc_planes"):
            self._pc_planes = np.ascontiguousarray(self.part_center.T)
        return self._pc_planes

    @property
    def part_half_planes(self) -> np.ndarray:
        """(3, Q) float32, the part half extents as x, y, z planes (cached)."""
        if not hasattr(self, "_ph_planes"):
            self._ph_planes = np.ascontiguousarray(self.part_half.T)
        return self._ph_planes

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
    obj: np.ndarray  # (R, C) int32 object index, or SKY / GROUND / KERB_TOP / KERB_FACE (< 0)
    part: np.ndarray  # (R, C) int32 global part index, -1 = none

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> HitBuffer:
        return cls(
            depth=np.full(shape, np.inf, np.float32),
            obj=np.full(shape, -1, np.int32),
            part=np.full(shape, -1, np.int32),
        )


@dataclass
class Surface:
    """Surface details of M object hits (planar (3, M) arrays)."""

    local: np.ndarray  # (3, M) float32 hit position in its part, normalised to [-1, 1]
    code: np.ndarray  # (M,) int8 normal code in the object frame (axis * 2 + positive)
    normal: np.ndarray  # (3, M) float32 outward normal, global frame


def surface(
    hits: HitBuffer, geo: Geometry, origin: np.ndarray, dirs: np.ndarray, flat_idx: np.ndarray
) -> Surface:
    """Recompute where, on which face, the rays ``flat_idx`` hit their nearest part.

    ``dirs`` are the (3, R, C) global ray planes given to :func:`cast`. Done once per image for
    the visible hits only, instead of for every candidate inside the casting loop.
    """
    obj = hits.obj.reshape(-1).take(flat_idx)
    part = hits.part.reshape(-1).take(flat_idx)
    t = hits.depth.reshape(-1).take(flat_idx)
    d = dirs.reshape(3, -1).take(flat_idx, axis=1)
    rel = (np.asarray(origin, np.float64)[None] - geo.center).astype(np.float32).take(obj, axis=0)
    gx = rel[:, 0] + t * d[0]
    gy = rel[:, 1] + t * d[1]
    gz = rel[:, 2] + t * d[2]
    yaw = geo.yaw.take(obj).astype(np.float32)
    c, s = np.cos(yaw), np.sin(yaw)
    pc = geo.part_center_planes.take(part, axis=1)
    ph = geo.part_half_planes.take(part, axis=1)
    u = np.stack([(c * gx + s * gy - pc[0]) / ph[0], (c * gy - s * gx - pc[1]) / ph[1], (gz - pc[2]) / ph[2]])
    a0, a1, a2 = np.abs(u)
    axis = np.where((a0 >= a1) & (a0 >= a2), 0, np.where(a1 >= a2, 1, 2)).astype(np.int8)
    positive = np.where(axis == 0, u[0], np.where(axis == 1, u[1], u[2])) > 0
    sign = np.where(positive, np.float32(1), np.float32(-1))
    nx = np.where(axis == 0, sign, np.float32(0))
    ny = np.where(axis == 1, sign, np.float32(0))
    nz = np.where(axis == 2, sign, np.float32(0))
    normal = np.stack([c * nx - s * ny, s * nx + c * ny, nz])
    return Surface(np.clip(u, -1, 1), (axis * 2 + positive).astype(np.int8), normal)


def cast(
    origin: np.ndarray,
    dirs: np.ndarray,
    geo: Geometry,
    rects: list[tuple[int, list[Rect]]],
    hits: HitBuffer,
    footprints: bool = False,
) -> np.ndarray | None:
    """Cast the ray grid ``dirs`` (3, R, C) (x, y, z planes, global axes) from ``origin`` (3,).

    ``rects`` lists, per candidate object index, the grid rectangles its envelope may cover.
    ``hits`` is updated in place (z-test against what it already holds, e.g. the ground).
    With ``footprints``, returns (N,) int64: per object, the number of rays that hit it ignoring
    all other objects (its unoccluded footprint, used for visibility).
    """
    footprint = np.zeros(len(geo), np.int64) if footprints else None
    origin = np.asarray(origin, np.float64)
    # A ray component that is exactly 0 gives inf (or nan on a slab plane through the origin,
    # which reads as a miss): no guard needed, and the z part is the same for every object.
    if not rects:
        return footprint
    # Per-object set-up for all candidates at once (the loop below is the hot path).
    idx = np.array([i for i, _ in rects], np.int64)
    cos_all, sin_all = np.cos(geo.yaw[idx]), np.sin(geo.yaw[idx])
    rel = origin[None] - geo.center[idx]
    o_all = np.stack(
        [cos_all * rel[:, 0] + sin_all * rel[:, 1], cos_all * rel[:, 1] - sin_all * rel[:, 0], rel[:, 2]], 1
    ).astype(np.float32)
    cs_all = np.stack([cos_all, sin_all], 1).astype(np.float32)
    p_lo = (geo.part_center - geo.part_half).T  # (3, Q)
    p_hi = (geo.part_center + geo.part_half).T
    starts = geo.part_start
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_z = 1.0 / dirs[2]
        for k, (i, rect_list) in enumerate(rects):
            p0, p1 = int(starts[i]), int(starts[i + 1])
            n_parts = p1 - p0
            o_l = o_all[k][:, None, None, None]
            lo_b = p_lo[:, p0:p1, None, None] - o_l  # (3, P, 1, 1)
            hi_b = p_hi[:, p0:p1, None, None] - o_l
            cf, sf = cs_all[k]
            for r0, r1, c0, c1 in rect_list:
                if r1 <= r0 or c1 <= c0:
                    continue
                dx, dy = dirs[0, r0:r1, c0:c1], dirs[1, r0:r1, c0:c1]
                invs = (1.0 / (cf * dx + sf * dy), 1.0 / (cf * dy - sf * dx), inv_z[r0:r1, c0:c1])
                t_near = t_far = None
                for ax, inv in enumerate(invs):
                    ta = lo_b[ax] * inv
                    tb = hi_b[ax] * inv
                    tn = np.minimum(ta, tb)
                    tf = np.maximum(ta, tb, out=ta)
                    t_near = tn if t_near is None else np.maximum(t_near, tn, out=t_near)
                    t_far = tf if t_far is None else np.minimum(t_far, tf, out=t_far)
                np.copyto(t_near, np.float32(np.inf), where=(t_far < t_near) | (t_near <= 0))
                t_best = t_near.min(0) if n_parts > 1 else t_near[0]
                if footprint is not None:
                    footprint[i] += int(np.count_nonzero(t_best < np.inf))
                depth_view = hits.depth[r0:r1, c0:c1]
                closer = t_best < depth_view
                if not closer.any():
                    continue
                depth_view[closer] = t_best[closer]
                hits.obj[r0:r1, c0:c1][closer] = i
                if n_parts > 1:
                    flat = np.flatnonzero(closer)
                    best = np.take(t_near.reshape(n_parts, -1), flat, axis=1).argmin(0)
                else:
                    best = 0
                hits.part[r0:r1, c0:c1][closer] = p0 + best
    return footprint


def cast_ground(
    road: Road, origin: np.ndarray, dirs: np.ndarray, ground_depth: np.ndarray, s_ref: float, hits: HitBuffer
) -> None:
    """Fill ``hits`` with the ground plane (z = 0) and the kerbs, before the objects are cast.

    ``ground_depth`` (R, C) is the ray parameter of the z = 0 plane (inf for rays that do not
    go down), ``dirs`` the (3, R, C) global ray planes, ``origin`` the sensor position (its
    height must exceed the kerb's). A kerb is the band ``road_half <= |d| <= road_half +
    kerb_width`` raised by ``kerb_height``, following the road's curve exactly: a ray hits its
    top where the kerb-height plane crossing lies in the band, else its road-side face where
    the ray enters the band between that plane and the ground.
    """
    hits.depth[:] = ground_depth
    down = np.isfinite(ground_depth)
    hits.obj[:] = np.where(down, np.int32(GROUND), np.int32(SKY))
    idx = np.flatnonzero(down)
    t0 = ground_depth.reshape(-1).take(idx)
    d = dirs.reshape(3, -1).take(idx, axis=1)
    oz = np.float32(origin[2])
    t1 = t0 * (oz - np.float32(road.kerb_height)) / oz  # same ray, at the kerb-top height
    lo, hi = np.float32(road.road_half), np.float32(road.road_half + road.kerb_width)
    # Outside the kerb line |d| only grows along a ray (the sensor is on the carriageway), so
    # rays whose ground hit is inside it meet no kerb: the kerb-height crossing for the others.
    dd0 = road.d_near(d[0] * t0, d[1] * t0, origin[:2], s_ref)
    ad0 = np.abs(dd0)
    out = np.flatnonzero(ad0 >= lo)
    dd1 = np.zeros_like(dd0)
    t1o = t1.take(out)
    dd1[out] = road.d_near(d[0].take(out) * t1o, d[1].take(out) * t1o, origin[:2], s_ref)
    ad1 = np.abs(dd1)
    top = (ad1 >= lo) & (ad1 <= hi)
    # Entering the band from the road side between the two heights: the kerb face.
    face = ~top & (ad1 < lo) & (ad0 >= lo)
    side_face = np.zeros_like(face)
    if road.junctions:
        # No kerb across a side street's mouth; its own kerbs line it (|s - s_x| = half width).
        # Only rays reaching past the kerb line can meet either: s (an arctangent) for those only.
        w_lo = np.float32(road.side_street_half)
        w_hi = np.float32(road.side_street_half + road.kerb_width)
        cand = out
        c1, c0 = t1.take(cand), t0.take(cand)
        dc = d.take(cand, axis=1)
        s1, _ = road.to_sd_near(dc[0] * c1, dc[1] * c1, origin[:2], s_ref)
        s0, _ = road.to_sd_near(dc[0] * c0, dc[1] * c0, origin[:2], s_ref)
        e1, e0 = dd1.take(cand), dd0.take(cand)
        top_c, face_c = top.take(cand), face.take(cand)
        side_c = np.zeros(len(cand), bool)
        for s_x, side in road.junctions:
            x1, x0 = np.abs(s1 - np.float32(s_x)), np.abs(s0 - np.float32(s_x))
            top_c &= ~((x1 < w_hi) & (side * e1 > 0))
            face_c &= ~((x0 < w_hi) & (side * e0 > 0))
            s_top = (side * e1 > lo) & (x1 >= w_lo) & (x1 <= w_hi)
            top_c |= s_top
            side_c |= ~s_top & (side * e0 > lo) & (x1 < w_lo) & (x0 >= w_lo) & (x0 <= w_hi + 1.0)
        top[cand], face[cand], side_face[cand] = top_c, face_c, side_c
        t_side = t1 + (t0 - t1) * np.float32(0.5)
    t_face = t1 + (t0 - t1) * (lo - ad1) / np.maximum(ad0 - ad1, np.float32(1e-6))
    flat_d = hits.depth.reshape(-1)
    flat_o = hits.obj.reshape(-1)
    flat_d[idx[top]] = t1[top]
    flat_o[idx[top]] = KERB_TOP
    flat_d[idx[face]] = t_face[face]
    flat_o[idx[face]] = KERB_FACE
    if side_face.any():
        flat_d[idx[side_face]] = t_side[side_face]
        flat_o[idx[side_face]] = KERB_SIDE_FACE


def shadow_envelopes(geo: Geometry, sun_dir: np.ndarray) -> Geometry:
    """Flat boxes on the ground (object frames) that contain each object's sun shadow.

    A point at height z throws its shadow ``z * sun_xy / sun_z`` away from the sun, so the shadow
    of an object lies in its footprint swept by that offset up to its top.
    """
    w = -np.asarray(sun_dir[:2], np.float64) / max(float(sun_dir[2]), 1e-3)  # ground shift per metre
    top = geo.center[:, 2] + geo.half[:, 2]
    c, s = np.cos(geo.yaw), np.sin(geo.yaw)
    vx = (c * w[0] + s * w[1]) * top  # the shift of the top, in each object's frame
    vy = (-s * w[0] + c * w[1]) * top
    lo_x, hi_x = -geo.half[:, 0] + np.minimum(vx, 0), geo.half[:, 0] + np.maximum(vx, 0)
    lo_y, hi_y = -geo.half[:, 1] + np.minimum(vy, 0), geo.half[:, 1] + np.maximum(vy, 0)
    mx, my = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
    center = np.stack(
        [geo.center[:, 0] + c * mx - s * my, geo.center[:, 1] + s * mx + c * my, np.full_like(mx, 0.01)], 1
    )
    half = np.stack([(hi_x - lo_x) / 2, (hi_y - lo_y) / 2, np.full_like(mx, 0.01)], 1)
    return Geometry(center, geo.yaw, half, geo.part_start, geo.part_center, geo.part_half)


def ground_shadow(
    origin: np.ndarray,
    dirs: np.ndarray,
    geo: Geometry,
    rects: list[tuple[int, list[Rect]]],
    hits: HitBuffer,
    sun_dir: np.ndarray,
) -> np.ndarray:
    """(R, C) bool: ground/kerb hits in the shadow of any object's parts (sun at ``sun_dir``).

    ``rects`` are the grid rectangles of :func:`shadow_envelopes` per object. For a ground point
    q, the segment ``q + z * sun_xy / sun_z`` (z from a part's bottom to its top) meets the
    part's footprint exactly when some point of the part hides the sun from q.
    """
    shadow = np.zeros(hits.depth.shape, bool)
    sun = np.asarray(sun_dir, np.float64)
    w = sun[:2] / max(sun[2], 1e-3)
    origin = np.asarray(origin, np.float64)
    for i, rect_list in rects:
        c, s = np.cos(geo.yaw[i]), np.sin(geo.yaw[i])
        rel = origin - geo.center[i]
        o_l = np.array([c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1]], np.float32)
        w_l = np.array([c * w[0] + s * w[1], -s * w[0] + c * w[1]], np.float32)
        p0, p1 = int(geo.part_start[i]), int(geo.part_start[i + 1])
        pc, ph = geo.part_center[p0:p1], geo.part_half[p0:p1]
        z_lo = (pc[:, 2] - ph[:, 2] + geo.center[i, 2])[:, None, None].astype(np.float32)
        z_hi = (pc[:, 2] + ph[:, 2] + geo.center[i, 2])[:, None, None].astype(np.float32)
        cf, sf = np.float32(c), np.float32(s)
        for r0, r1, c0, c1 in rect_list:
            if r1 <= r0 or c1 <= c0:
                continue
            kind = hits.obj[r0:r1, c0:c1]
            t = hits.depth[r0:r1, c0:c1]
            ground = (kind <= GROUND) & np.isfinite(t)
            if not ground.any():
                continue
            tg = np.where(ground, t, np.float32(0))
            gx = dirs[0, r0:r1, c0:c1] * tg
            gy = dirs[1, r0:r1, c0:c1] * tg
            qx = cf * gx + sf * gy + o_l[0]
            qy = cf * gy - sf * gx + o_l[1]
            lo, hi = z_lo.copy(), z_hi.copy()
            for q, wa, a in ((qx, w_l[0], 0), (qy, w_l[1], 1)):
                f_lo = (pc[:, a] - ph[:, a])[:, None, None]
                f_hi = (pc[:, a] + ph[:, a])[:, None, None]
                if abs(wa) < 1e-6:
                    inside = (q[None] >= f_lo) & (q[None] <= f_hi)
                    hi = np.where(inside, hi, np.float32(-1))
                    continue
                za, zb = (f_lo - q[None]) / wa, (f_hi - q[None]) / wa
                lo = np.maximum(lo, np.minimum(za, zb))
                hi = np.minimum(hi, np.maximum(za, zb))
            shadow[r0:r1, c0:c1] |= ground & (lo <= hi).any(0)
    return shadow
