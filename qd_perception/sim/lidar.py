"""Spinning lidar: vectorised ray casting of ``beams x azimuth_steps`` rays against the world.

Timing model. The scan ends at ``timestamp_us`` and ``point_time`` gives each point's firing time
within the revolution (in ``[-1 / rate_hz, 0]``; it starts and ends behind the vehicle and turns
clockwise seen from above, like a Velodyne HDL-32E). By default the sweep is a **snapshot** of the
world at ``timestamp_us``, as if motion-compensated: every point is where its surface is at
``timestamp_us``, seen from the sensor pose at ``timestamp_us``, so points agree exactly with the
annotations of that instant. With ``SimConfig.lidar_rolling_shutter`` the revolution is cast in
``ROLLING_SECTORS`` time slices instead, each from the pose and against the world of its firing
time, and expressed in the sensor frame of ``timestamp_us`` (the motion distortion of a real,
uncompensated sweep: moving objects are smeared along their motion by up to 1 / rate_hz).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qd_perception.geometry.rig import LidarSpec
from qd_perception.geometry.transforms import invert
from qd_perception.sim.materials import ground_material
from qd_perception.sim.raycast import (
    KERB_FACE,
    KERB_SIDE_FACE,
    KERB_TOP,
    Geometry,
    HitBuffer,
    Rect,
    cast,
    cast_ground,
    surface,
)
from qd_perception.sim.shapes import R_CONCRETE
from qd_perception.sim.types import LidarSweep

if TYPE_CHECKING:
    from qd_perception.sim.world import SimScene

MIN_RANGE = 0.8  # returns closer than this are dropped (the sensor's blind zone)
ROLLING_SECTORS = 10  # with cfg.lidar_rolling_shutter: the sweep is cast in this many time slices


@dataclass(frozen=True)
class LidarModel:
    spec: LidarSpec
    elevation: np.ndarray  # (B,) radians, ring 0 = lowest beam
    azimuth: np.ndarray  # (A,) radians in the sensor frame, firing order
    dirs: np.ndarray  # (B, A, 3) float32 unit rays in the sensor frame
    planes: np.ndarray  # (3, B, A) float32 the same rays as x, y, z planes
    ground_depth: np.ndarray  # (B, A) float32 range to the ground (level sensor), inf if none
    az_start: float
    col_time: np.ndarray  # (A,) float32 seconds relative to the sweep timestamp


@functools.lru_cache(maxsize=8)
def lidar_model(spec: LidarSpec, ego_yaw_deg: float) -> LidarModel:
    B, A = spec.beams, spec.azimuth_steps
    el = np.deg2rad(np.linspace(spec.elevation_min_deg, spec.elevation_max_deg, B))
    # Start behind the vehicle (ego -x) and turn clockwise (decreasing azimuth).
    az_start = float(np.pi - np.deg2rad(ego_yaw_deg))
    az = az_start - 2 * np.pi * (np.arange(A) + 0.5) / A
    ce = np.cos(el)[:, None]
    dirs = np.stack(
        [ce * np.cos(az)[None], ce * np.sin(az)[None], np.broadcast_to(np.sin(el)[:, None], (B, A))], -1
    )
    period = 1.0 / spec.rate_hz
    col_time = ((np.arange(A) + 0.5) / A - 1.0) * period
    dirs = dirs.astype(np.float32)
    planes = np.ascontiguousarray(dirs.transpose(2, 0, 1))
    with np.errstate(divide="ignore"):
        ground = np.where(planes[2] < -1e-6, -spec.translation[2] / planes[2], np.inf).astype(np.float32)
    return LidarModel(spec, el, az, dirs, planes, ground, az_start, col_time.astype(np.float32))


def _rects(geo: Geometry, R: np.ndarray, o: np.ndarray, model: LidarModel) -> list[tuple[int, list[Rect]]]:
    """Beam x azimuth rectangles each object's envelope may cover (azimuth wraps around)."""
    spec = model.spec
    B, A = spec.beams, spec.azimuth_steps
    radius = np.linalg.norm(geo.half, axis=1)
    dist = np.linalg.norm(geo.center - o, axis=1)
    idx = np.flatnonzero(dist - radius < spec.max_range)
    if len(idx) == 0:
        return []
    corners = (geo.corners(idx) - o) @ R  # (n, 8, 3) sensor frame
    cen = (geo.center[idx] - o) @ R
    az_c = np.arctan2(cen[:, 1], cen[:, 0])
    az = np.arctan2(corners[..., 1], corners[..., 0])
    da = (az - az_c[:, None] + np.pi) % (2 * np.pi) - np.pi
    az_hi = az_c + da.max(1)
    az_lo = az_c + da.min(1)
    # Horizontal distance from the sensor to the footprint rectangle (object frame).
    rel = o[None, :2] - geo.center[idx, :2]
    c, s = np.cos(geo.yaw[idx]), np.sin(geo.yaw[idx])
    lx, ly = c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]
    dmin = np.hypot(
        np.maximum(np.abs(lx) - geo.half[idx, 0], 0), np.maximum(np.abs(ly) - geo.half[idx, 1], 0)
    )
    dmax = np.linalg.norm(corners[..., :2], axis=-1).max(1)
    zlo = geo.center[idx, 2] - geo.half[idx, 2] - o[2]
    zhi = geo.center[idx, 2] + geo.half[idx, 2] - o[2]
    el_lo = np.arctan2(zlo, np.where(zlo < 0, np.maximum(dmin, 1e-3), dmax))
    el_hi = np.arctan2(zhi, np.where(zhi > 0, np.maximum(dmin, 1e-3), dmax))
    step = (model.elevation[-1] - model.elevation[0]) / max(B - 1, 1)
    r0 = np.clip(np.floor((el_lo - model.elevation[0]) / step).astype(np.int64), 0, B)
    r1 = np.clip(np.ceil((el_hi - model.elevation[0]) / step).astype(np.int64) + 1, 0, B)
    k = A / (2 * np.pi)
    c0 = np.floor((model.az_start - az_hi) * k - 0.5).astype(np.int64)
    c1 = np.floor((model.az_start - az_lo) * k + 0.5).astype(np.int64) + 1
    inside = dmin < 0.3
    out = []
    for i, a0, a1, b0, b1, ins in zip(idx, r0, r1, c0, c1, inside):
        if a1 <= a0:
            continue
        if ins or b1 - b0 >= A:
            out.append((int(i), [(int(a0), int(a1), 0, A)]))
            continue
        b0m = int(b0 % A)
        span = int(b1 - b0)
        if b0m + span <= A:
            out.append((int(i), [(int(a0), int(a1), b0m, b0m + span)]))
        else:
            out.append((int(i), [(int(a0), int(a1), b0m, A), (int(a0), int(a1), 0, b0m + span - A)]))
    return out


@dataclass
class _SectorHits:
    """Valid returns of the columns ``[c0, c1)`` cast at one instant, in firing order."""

    col: np.ndarray  # (M,) absolute column index
    ring: np.ndarray  # (M,)
    rng: np.ndarray  # (M,) float32 range, m
    obj: np.ndarray  # (M,) int32 object index or a ground code (< 0)
    refl: np.ndarray  # (M,) float32 material reflectivity
    cosi: np.ndarray  # (M,) float32 |cos| of the incidence angle
    to_sweep: np.ndarray  # (4, 4) sensor frame at this instant -> sensor frame of the sweep


def _clip_rects(rects: list[tuple[int, list[Rect]]], c0: int, c1: int) -> list[tuple[int, list[Rect]]]:
    out = []
    for i, rl in rects:
        kept = [(r0, r1, max(a, c0) - c0, min(b, c1) - c0) for r0, r1, a, b in rl if min(b, c1) > max(a, c0)]
        if kept:
            out.append((i, kept))
    return out


def _cast_sector(
    scene: SimScene, model: LidarModel, t_us: int, c0: int, c1: int, sweep_s2g: np.ndarray
) -> _SectorHits:
    spec = model.spec
    geo = scene.geometry(int(t_us))
    s2g = scene.ego2global(t_us) @ scene.rig.lidar2ego()
    R, o = s2g[:3, :3], s2g[:3, 3]
    Rf = R.astype(np.float32)
    x, y, z = model.planes[:, :, c0:c1]
    dirs = np.stack([Rf[k, 0] * x + Rf[k, 1] * y + Rf[k, 2] * z for k in range(3)])
    B, A = spec.beams, c1 - c0
    hits = HitBuffer.empty((B, A))
    # The ego stays level on flat ground, so the sensor's ground ranges are fixed (cached).
    s_ref = float(scene.road.to_sd(np.array(o[0]), np.array(o[1]))[0])
    cast_ground(scene.road, o, dirs, model.ground_depth[:, c0:c1], s_ref, hits)
    rects = _rects(geo, R, o, model)
    cast(o, dirs, geo, rects if (c0, c1) == (0, spec.azimuth_steps) else _clip_rects(rects, c0, c1), hits)
    # Firing order: column by column, beams bottom-up within a column.
    depth = hits.depth.T
    valid = np.isfinite(depth) & (depth <= spec.max_range) & (depth >= MIN_RANGE)
    col, ring = np.nonzero(valid)
    rng_t = depth[col, ring].astype(np.float32)
    obj = hits.obj.T[col, ring]
    part = hits.part.T[col, ring]
    refl = np.empty(len(obj), np.float32)
    cosi = np.ones(len(obj), np.float32)
    is_obj = obj >= 0
    refl[is_obj] = scene.part_refl[part[is_obj]]
    dg = dirs[:, ring, col].T
    if is_obj.any():
        srf = surface(hits, geo, o, dirs, ring[is_obj] * A + col[is_obj])
        cosi[is_obj] = np.abs((srf.normal.T * dg[is_obj]).sum(1))
    gm = ~is_obj
    if gm.any():
        gp = o[None] + dg[gm].astype(np.float64) * rng_t[gm, None]
        s, d = scene.road.to_sd(gp[:, 0], gp[:, 1])
        _, g_refl = ground_material(scene.road, s, d)
        g_obj = obj[gm]
        g_refl[g_obj <= KERB_TOP] = R_CONCRETE
        refl[gm] = g_refl
        dz = np.abs(dg[gm, 2])
        vertical = (g_obj == KERB_FACE) | (g_obj == KERB_SIDE_FACE)
        cosi[gm] = np.where(vertical, np.sqrt(np.maximum(1 - dz * dz, 0)), dz)
    return _SectorHits(col + c0, ring, rng_t, obj, refl, cosi, invert(sweep_s2g) @ s2g)


def render_lidar(scene: SimScene, t_us: int) -> LidarSweep:
    """One sweep in the lidar sensor frame of ``t_us`` (see the module docstring)."""
    spec = scene.rig.lidar
    model = lidar_model(spec, float(spec.yaw_deg))
    B, A = spec.beams, spec.azimuth_steps
    e2g = scene.ego2global(t_us)
    s2g = e2g @ scene.rig.lidar2ego()
    n_sec = ROLLING_SECTORS if scene.cfg.lidar_rolling_shutter else 1
    bounds = np.linspace(0, A, n_sec + 1).round().astype(int)
    sectors = []
    for c0, c1 in itertools.pairwise(bounds):
        # Rolling: each sector sees the world (and is seen from the pose) of its firing time.
        t_k = int(t_us) if n_sec == 1 else int(t_us) + round(float(model.col_time[(c0 + c1) // 2]) * 1e6)
        sectors.append(_cast_sector(scene, model, t_k, int(c0), int(c1), s2g))
    col = np.concatenate([h.col for h in sectors])
    ring = np.concatenate([h.ring for h in sectors])
    rng_t = np.concatenate([h.rng for h in sectors])
    obj = np.concatenate([h.obj for h in sectors])
    refl = np.concatenate([h.refl for h in sectors])
    cosi = np.concatenate([h.cosi for h in sectors])
    rng = scene.frame_rng(t_us, 1)
    noise = scene.cfg.lidar_range_noise
    if noise > 0:
        rng_t = rng_t + np.clip(rng.standard_normal(len(rng_t), dtype=np.float32), -2, 2) * noise
    xyz = model.dirs[ring, col] * rng_t[:, None]
    if n_sec > 1:  # into the sensor frame of the sweep timestamp
        start = 0
        for h in sectors:
            n = len(h.col)
            T = h.to_sweep.astype(np.float32)
            xyz[start : start + n] = xyz[start : start + n] @ T[:3, :3].T + T[:3, 3]
            start += n
    # Intensity: material reflectivity x incidence, plus noise.
    intensity = refl * (0.3 + 0.7 * cosi) * rng.uniform(0.85, 1.15, len(refl)).astype(np.float32)
    # Dark and specular surfaces (glass, tyres) often return nothing, grazing hits too.
    p_miss = np.where(refl < 10.0, 0.35, 0.0) + np.where(cosi < 0.1, 0.3, 0.0)
    kept = rng.random(len(refl)) >= p_miss
    xyz, intensity, obj, col, ring, rng_t = (
        xyz[kept],
        intensity[kept],
        obj[kept],
        col[kept],
        ring[kept],
        rng_t[kept],
    )
    inst = np.full(len(obj), -1, np.int64)
    am = (obj >= 0) & (obj < scene.n_actors)
    inst[am] = scene.instance_ids[obj[am]]
    ring_f = ring.astype(np.float32)
    ptime = model.col_time[col]
    if scene.conditions.rain:
        keep = rng.random(len(rng_t)) >= 0.06 + 0.3 * (rng_t / spec.max_range)
        xyz, intensity, ring_f, ptime, inst = (
            xyz[keep],
            intensity[keep] * 0.8,
            ring_f[keep],
            ptime[keep],
            inst[keep],
        )
        # Spurious near returns from drops.
        n_sp = int(rng.integers(150, 500))
        rs = rng.integers(0, B, n_sp)
        cs = rng.integers(0, A, n_sp)
        dist = rng.uniform(MIN_RANGE, 5.0, n_sp).astype(np.float32)
        xyz = np.concatenate([xyz, model.dirs[rs, cs] * dist[:, None]])
        intensity = np.concatenate([intensity, rng.uniform(1, 12, n_sp).astype(np.float32)])
        ring_f = np.concatenate([ring_f, rs.astype(np.float32)])
        ptime = np.concatenate([ptime, model.col_time[cs]])
        inst = np.concatenate([inst, np.full(n_sp, -1, np.int64)])
        order = np.argsort(ptime, kind="stable")
        xyz, intensity, ring_f, ptime, inst = (
            xyz[order],
            intensity[order],
            ring_f[order],
            ptime[order],
            inst[order],
        )
    points = np.concatenate([xyz, np.clip(intensity, 0, 255)[:, None], ring_f[:, None]], 1).astype(np.float32)
    return LidarSweep(
        timestamp_us=int(t_us),
        ego2global=e2g,
        points=points,
        point_time=ptime.astype(np.float32),
        instance_ids=inst,
    )
