"""Camera renderer: per-pixel ray casting (ground analytically, objects by :mod:`.raycast`) and a
small shader (sun / sky ambient / street lamps / headlights, surface patterns, haze, rain).

Rays use OpenCV pixel conventions: pixel (row v, col u) has its centre at image coordinates
(u, v), so ``K @ p`` of a point lands on ``round(u), round(v)``. Ray directions are scaled to
unit optical z, so the ray parameter of a hit is its depth along the optical axis.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qd_perception.sim import shapes
from qd_perception.sim.materials import ground_material, hash_noise
from qd_perception.sim.raycast import Geometry, HitBuffer, Rect, cast
from qd_perception.sim.types import CameraImage

if TYPE_CHECKING:
    from qd_perception.sim.world import SimScene

NEAR = 0.05
# Envelope corner pairs forming the 12 edges (corner index = 4 * ix + 2 * iy + iz, see Geometry.corners).
_EDGES = np.array([(a, a | bit) for bit in (1, 2, 4) for a in range(8) if not a & bit])


@dataclass(frozen=True)
class CameraModel:
    name: str
    K: np.ndarray  # (3, 3) at the render resolution
    cam2ego: np.ndarray  # (4, 4)
    dirs: np.ndarray  # (H, W, 3) float32 optical-frame rays with z = 1


@functools.lru_cache(maxsize=32)
def camera_models(rig_key: object, rig, resolution: tuple[int, int]) -> tuple[CameraModel, ...]:
    H, W = resolution
    models = []
    for name in rig.camera_names:
        K = rig.intrinsics(name, (H, W))
        u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
        dirs = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        models.append(CameraModel(name, K, rig.cam2ego(name), dirs.astype(np.float32)))
    return tuple(models)


def _models(scene: SimScene, resolution: tuple[int, int]) -> tuple[CameraModel, ...]:
    return camera_models(scene.cfg.rig, scene.rig, tuple(resolution))


def _rects(
    geo: Geometry, R: np.ndarray, o: np.ndarray, K: np.ndarray, shape: tuple[int, int], max_range: float
) -> list[tuple[int, list[Rect]]]:
    """Image rectangles covered by each object's envelope (clipped at the near plane)."""
    H, W = shape
    radius = np.linalg.norm(geo.half, axis=1)
    dist = np.linalg.norm(geo.center - o, axis=1)
    idx = np.flatnonzero(dist - radius < max_range)
    if len(idx) == 0:
        return []
    pc = (geo.corners(idx) - o) @ R  # (n, 8, 3) camera frame
    # Cheap frustum cull on the bounding sphere before the exact clip.
    z = pc[..., 2]
    front = z >= NEAR
    keep = front.any(1)
    idx, pc, z, front = idx[keep], pc[keep], z[keep], front[keep]
    a, b = pc[:, _EDGES[:, 0]], pc[:, _EDGES[:, 1]]
    za, zb = a[..., 2], b[..., 2]
    cross = (za - NEAR) * (zb - NEAR) < 0
    w = np.where(cross, (NEAR - za) / np.where(cross, zb - za, 1.0), 0.0)
    clip = a + w[..., None] * (b - a)
    pts = np.concatenate([pc, clip], 1)
    valid = np.concatenate([front, cross], 1)
    zz = np.where(valid, pts[..., 2], 1.0)
    u = K[0, 0] * pts[..., 0] / zz + K[0, 2]
    v = K[1, 1] * pts[..., 1] / zz + K[1, 2]
    big = 1e9
    umin = np.where(valid, u, big).min(1)
    umax = np.where(valid, u, -big).max(1)
    vmin = np.where(valid, v, big).min(1)
    vmax = np.where(valid, v, -big).max(1)
    c0 = np.clip(np.floor(umin).astype(np.int64), 0, W)
    c1 = np.clip(np.ceil(umax).astype(np.int64) + 1, 0, W)
    r0 = np.clip(np.floor(vmin).astype(np.int64), 0, H)
    r1 = np.clip(np.ceil(vmax).astype(np.int64) + 1, 0, H)
    out = []
    for i, a0, a1, b0, b1 in zip(idx, r0, r1, c0, c1):
        if a1 > a0 and b1 > b0:
            out.append((int(i), [(int(a0), int(a1), int(b0), int(b1))]))
    return out


def cast_camera(
    scene: SimScene, t_us: int, model: CameraModel, resolution: tuple[int, int], surface: bool = True
) -> tuple[HitBuffer, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cast one camera. Returns hits, global ray dirs (H, W, 3), origin (3,), R (3, 3), footprints."""
    geo = scene.geometry(int(t_us))
    c2g = scene.ego2global(t_us) @ model.cam2ego
    R, o = c2g[:3, :3], c2g[:3, 3]
    dirs = model.dirs @ R.T.astype(np.float32)
    hits = HitBuffer.empty(resolution)
    dz = dirs[..., 2]
    ground = dz < -1e-6
    hits.depth[ground] = (-o[2] / dz[ground]).astype(np.float32)
    rects = _rects(geo, R, o, model.K, resolution, scene.cfg.camera_max_range)
    footprint = cast(o, dirs, geo, rects, hits, want_surface=surface)
    return hits, dirs, o, R, footprint


@functools.lru_cache(maxsize=16)
def _visibility_cached(scene: SimScene, t_us: int) -> np.ndarray:
    H, W = scene.resolution
    sc = scene.cfg.visibility_scale
    res = (max(8, H // sc), max(8, W // sc))
    n = scene.n_actors
    foot = np.zeros(n, np.int64)
    seen = np.zeros(n, np.int64)
    for model in _models(scene, res):
        hits, _, _, _, fp = cast_camera(scene, t_us, model, res, surface=False)
        foot += fp[:n]
        obj = hits.obj[hits.obj >= 0]
        seen += np.bincount(obj[obj < n], minlength=n)[:n]
    frac = np.where(foot > 0, seen / np.maximum(foot, 1), 0.0)
    return (1 + (frac >= 0.4) + (frac >= 0.6) + (frac >= 0.8)).astype(np.int64)


def visibility_levels(scene: SimScene, t_us: int) -> np.ndarray:
    """(n_actors,) nuScenes visibility level 1..4 (0-40, 40-60, 60-80, 80-100 % visible in cameras).

    The visible fraction of an object is the number of pixels showing it, over all cameras,
    divided by the pixels it would cover without occluders, on images downscaled by
    ``cfg.visibility_scale``.
    """
    return _visibility_cached(scene, int(t_us)).copy()


# Shading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lighting:
    sun_dir: np.ndarray  # (3,) unit vector towards the sun
    sun: np.ndarray  # (3,) colour * intensity
    ambient: np.ndarray  # (3,)
    sky_horizon: np.ndarray
    sky_zenith: np.ndarray
    haze: np.ndarray
    visibility: float  # metres (haze 1/e distance)
    lamps: float  # street lamp intensity
    headlights: float
    emissive: float  # vehicle lights / lit windows


def lighting_for(scene: SimScene) -> Lighting:
    c = scene.conditions
    rng = np.random.default_rng([scene.seed, scene.scene_index, 0x116])
    az = rng.uniform(-np.pi, np.pi)
    elev = {"day": rng.uniform(0.5, 1.1), "dusk": rng.uniform(0.04, 0.15), "night": -0.5}[c.lighting]
    sun_dir = np.array([np.cos(az) * np.cos(elev), np.sin(az) * np.cos(elev), np.sin(elev)], np.float32)
    f = np.float32
    if c.lighting == "day":
        L = Lighting(sun_dir, f([0.75, 0.72, 0.66]), f([0.42, 0.45, 0.50]), f([0.78, 0.85, 0.93]),
                     f([0.35, 0.55, 0.85]), f([0.75, 0.80, 0.88]), 700.0, 0.0, 0.0, 0.0)  # fmt: skip
    elif c.lighting == "dusk":
        L = Lighting(sun_dir, f([0.55, 0.33, 0.18]), f([0.22, 0.2, 0.24]), f([0.95, 0.58, 0.32]),
                     f([0.20, 0.22, 0.42]), f([0.55, 0.42, 0.38]), 500.0, 0.5, 0.4, 0.6)  # fmt: skip
    else:
        L = Lighting(sun_dir, f([0.0, 0.0, 0.0]), f([0.035, 0.04, 0.055]), f([0.06, 0.06, 0.09]),
                     f([0.01, 0.01, 0.025]), f([0.05, 0.05, 0.07]), 400.0, 1.0, 1.0, 1.0)  # fmt: skip
    if c.rain:
        grey = f([0.55, 0.57, 0.6]) if c.lighting == "day" else L.sky_horizon * 0.8
        L = Lighting(L.sun_dir, L.sun * 0.35, L.ambient * 1.1, grey, grey * 0.85, grey, 120.0,
                     L.lamps, L.headlights, L.emissive)  # fmt: skip
    return L


def _object_albedo(
    scene: SimScene, hits: HitBuffer, m: np.ndarray, lit: Lighting
) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (M, 3) and emission (M, 3) of object hits ``m`` (mask), with surface patterns."""
    part = hits.part[m]
    col = scene.part_color[part].copy()
    emit = np.zeros_like(col)
    pat = scene.part_pattern[part]
    loc = hits.local[m]  # normalised [-1, 1]
    met = loc * scene.part_half[part]  # metres from the part centre
    code = hits.normal_code[m]
    axis = code // 2
    positive = (code % 2) == 1
    vertical = axis != 2
    glass = np.array([0.10, 0.13, 0.17], np.float32) + 0.25 * lit.sky_horizon
    p = pat == shapes.GLASS_SIDES
    g = p & vertical & (loc[:, 2] > -0.75)
    col[g] = glass
    p = pat == shapes.WINDOW_BAND
    band_lo = np.where((axis == 0) & positive, -0.35, 0.15)
    g = p & vertical & (loc[:, 2] > band_lo) & (loc[:, 2] < 0.8)
    col[g] = glass
    p = pat == shapes.STRIPES_Y
    stripe = p & (np.floor((met[:, 1] + 10.0) / 0.4).astype(np.int64) % 2 == 0)
    col[stripe] = np.array([0.95, 0.95, 0.95], np.float32)
    p = pat == shapes.CORRUGATED
    col[p & vertical & (np.mod(met[:, 0], 0.4) < 0.06)] *= 0.72
    p = pat == shapes.VEHICLE_BODY
    front = p & (axis == 0) & positive
    back = p & (axis == 0) & ~positive
    ay, z = np.abs(loc[:, 1]), loc[:, 2]
    head = front & (ay > 0.5) & (ay < 0.9) & (z > 0.05) & (z < 0.6)
    tail = back & (ay > 0.55) & (ay < 0.92) & (z > 0.1) & (z < 0.7)
    grille = front & (ay < 0.4) & (z > -0.4) & (z < 0.3)
    col[head] = np.array([0.9, 0.9, 0.85], np.float32)
    col[tail] = np.array([0.75, 0.06, 0.05], np.float32)
    col[grille] = np.array([0.08, 0.08, 0.08], np.float32)
    col[p & vertical & (z < -0.75)] *= 0.35
    emit[head] = lit.emissive * np.array([1.2, 1.15, 1.0], np.float32)
    emit[tail] = lit.emissive * np.array([0.9, 0.05, 0.03], np.float32)
    p = pat == shapes.FACADE
    if p.any():
        zb = met[:, 2] + scene.part_half[part, 2]  # height above the ground
        along = np.where(axis == 0, met[:, 1], met[:, 0])
        fa = np.mod(along + 100.0, 3.0) / 3.0
        fz = np.mod(zb, 3.2) / 3.2
        upper = (zb > 3.2) & (fa > 0.22) & (fa < 0.78) & (fz > 0.3) & (fz < 0.85)
        shop = (zb > 0.4) & (zb < 2.8) & (fa > 0.08) & (fa < 0.92)
        win = p & vertical & (upper | shop)
        col[win] = glass * 1.1
        roof = p & ~vertical
        col[roof] = np.array([0.35, 0.34, 0.33], np.float32)
        if lit.emissive > 0:
            wid = hash_noise(np.floor((along + 100.0) / 3.0), np.floor(zb / 3.2) + 97 * hits.obj[m])
            on = win & (wid < 0.35)
            emit[on] = lit.emissive * np.array([0.9, 0.7, 0.4], np.float32)
    p = pat == shapes.LAMP
    emit[p & (axis == 2) & ~positive] = (lit.lamps > 0) * np.array([2.0, 1.8, 1.4], np.float32)
    return col, emit


def shade(
    scene: SimScene, t_us: int, hits: HitBuffer, dirs: np.ndarray, o: np.ndarray, cam_index: int
) -> np.ndarray:
    """RGB uint8 image of one cast camera."""
    lit = lighting_for(scene)
    H, W = hits.depth.shape
    img = np.empty((H, W, 3), np.float32)
    finite = np.isfinite(hits.depth)
    # Sky: vertical gradient by ray elevation.
    sky = ~finite
    if sky.any():
        dn = dirs[sky]
        el = np.clip(dn[:, 2] / np.linalg.norm(dn, axis=1), 0.0, 1.0) ** 0.6
        img[sky] = lit.sky_horizon * (1 - el[:, None]) + lit.sky_zenith * el[:, None]
    surf = finite
    depth_all = hits.depth[surf]
    pos = o.astype(np.float32) + dirs[surf] * depth_all[:, None]
    obj = hits.obj[surf]
    is_obj = obj >= 0
    albedo = np.empty((len(pos), 3), np.float32)
    emit = np.zeros((len(pos), 3), np.float32)
    normal = np.zeros((len(pos), 3), np.float32)
    normal[:, 2] = 1.0
    gm = ~is_obj
    if gm.any():
        s, d = scene.road.to_sd(pos[gm, 0], pos[gm, 1])
        albedo[gm], _ = ground_material(scene.road, s, d)
        if scene.conditions.rain:
            albedo[gm] *= 0.75
    if is_obj.any():
        om = np.zeros_like(surf)
        om[surf] = is_obj
        albedo[is_obj], emit[is_obj] = _object_albedo(scene, hits, om, lit)
        geo = scene.geometry(int(t_us))
        normal[is_obj] = hits.global_normals(geo, om)
    # Lighting: hemispheric ambient + sun + point lamps + ego headlights.
    light = lit.ambient[None] * (0.75 + 0.25 * normal[:, 2:3])
    if lit.sun.any():
        light = light + lit.sun[None] * np.clip(normal @ lit.sun_dir, 0, None)[:, None]
    if lit.lamps > 0 and len(scene.lamp_xyz):
        # Lamps farther than ~25 m from a surface add < 5 % of their light: only near pairs count.
        close = np.flatnonzero(depth_all < 70.0)
        pc_, nc_ = pos[close], normal[close]
        acc = np.zeros((len(close), 1), np.float32)
        near = np.linalg.norm(scene.lamp_xyz[:, :2] - o[:2], axis=1) < 80
        for lp in scene.lamp_xyz[near].astype(np.float32):
            v = lp - pc_
            dist2 = np.einsum("ij,ij->i", v, v)
            ndl = np.maximum(np.einsum("ij,ij->i", nc_, v), 0) / np.sqrt(dist2)
            acc[:, 0] += ndl / (1.0 + dist2 / 36.0)
        light[close] += (lit.lamps * 1.6 * acc) * np.array([1.0, 0.82, 0.55], np.float32)
    if lit.headlights > 0:
        e2g = scene.ego2global(t_us)
        hp = (e2g[:3, :3] @ np.array([3.7, 0.0, 0.7]) + e2g[:3, 3]).astype(np.float32)
        fwd = e2g[:3, 0].astype(np.float32)
        v = pos - hp
        dist = np.linalg.norm(v, axis=1) + 1e-3
        cone = np.clip(((v @ fwd) / dist - 0.82) / 0.12, 0, 1)
        ndl = np.clip(-(normal * v).sum(1) / dist, 0, None)
        light += (lit.headlights * 2.2 * cone * ndl / (1.0 + (dist / 14.0) ** 2))[:, None]
    col = albedo * light + emit
    # Atmospheric haze.
    f = np.exp(-depth_all / lit.visibility)[:, None]
    img[surf] = col * f + lit.haze * (1 - f)
    rng = scene.frame_rng(t_us, 100 + cam_index)
    if scene.conditions.rain:
        img = _rain(img, rng)
    noise = rng.standard_normal((H, W, 1), dtype=np.float32) * (scene.cfg.image_noise / 255.0)
    img += noise
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _rain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast loss, a slight blur and bright streaks."""
    H, W, _ = img.shape
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = 0.72 * img + 0.28 * mean
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    img = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] + 2 * p[1:-1, 1:-1]) / 6.0
    n = max(1, H * W // 900)
    length = max(4, H // 18)
    x0 = rng.uniform(0, W, n)
    y0 = rng.uniform(-length, H, n)
    slope = rng.normal(0.15, 0.05, n)
    k = np.arange(length)
    ys = (y0[:, None] + k[None]).astype(np.int64)
    xs = (x0[:, None] + slope[:, None] * k[None]).astype(np.int64)
    ok = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
    streak = np.zeros((H, W), np.float32)
    np.add.at(streak, (ys[ok], xs[ok]), 0.12)
    return img + streak[..., None]


def render_cameras(scene: SimScene, t_us: int) -> list[CameraImage]:
    """The six rig cameras at scene resolution, all exposed at ``t_us`` (global shutter)."""
    out = []
    e2g = scene.ego2global(t_us)
    res = tuple(scene.resolution)
    for ci, model in enumerate(_models(scene, res)):
        hits, dirs, o, _, _ = cast_camera(scene, t_us, model, res)
        image = shade(scene, t_us, hits, dirs, o, ci)
        obj = hits.obj
        inst = np.full(obj.shape, -1, np.int64)
        m = (obj >= 0) & (obj < scene.n_actors)
        inst[m] = scene.instance_ids[obj[m]]
        out.append(
            CameraImage(
                camera=model.name,
                timestamp_us=int(t_us),
                ego2global=e2g.copy(),
                image=image,
                instance_ids=inst,
                depth=hits.depth,
            )
        )
    return out
