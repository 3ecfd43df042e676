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
from qd_perception.sim.materials import fmod, ground_material, hash_noise
from qd_perception.sim.raycast import (
    KERB_FACE,
    KERB_SIDE_FACE,
    KERB_TOP,
    Geometry,
    HitBuffer,
    Rect,
    Surface,
    cast,
    cast_ground,
    ground_shadow,
    shadow_envelopes,
    surface,
)
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
    dirs: np.ndarray  # (3, H, W) float32 optical-frame ray planes x, y (z = 1)
    # The world is flat and the ego level, so a ray's vertical component never changes: the
    # ground depth and the sky gradient of every pixel are fixed per camera.
    ground_depth: np.ndarray  # (H, W) float32 depth of the ground plane hit, inf above horizon
    sky_elevation: np.ndarray  # (H * W,) float32 sky gradient coordinate 0 (horizon) .. 1
    noise: np.ndarray  # (H + 32, W + 32) float32 unit sensor-noise tile, cut at a random offset
    vignette: np.ndarray  # (H, W) float32 lens fall-off, 1 at the centre, ~0.8 in the corners


NOISE_PAD = 32
SHADOW_RANGE = 80.0  # metres: farther shadows are lost in the haze anyway
KERB_COLOR = np.array([0.62, 0.62, 0.60], np.float32)


@functools.lru_cache(maxsize=32)
def camera_models(rig, resolution: tuple[int, int]) -> tuple[CameraModel, ...]:
    H, W = resolution
    models = []
    noise_rng = np.random.default_rng(0x401CE)
    for name in rig.camera_names:
        K = rig.intrinsics(name, (H, W))
        u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
        dirs = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)])
        c2e = rig.cam2ego(name)
        dz = np.einsum("k,khw->hw", c2e[2, :3], dirs)
        with np.errstate(divide="ignore"):
            ground = np.where(dz < -1e-6, -c2e[2, 3] / dz, np.inf)
        el = np.clip(dz / np.linalg.norm(dirs, axis=0), 0.0, 1.0) ** 0.6
        models.append(
            CameraModel(
                name,
                K,
                c2e,
                dirs.astype(np.float32),
                ground.astype(np.float32),
                el.reshape(-1).astype(np.float32),
                noise_rng.standard_normal((H + NOISE_PAD, W + NOISE_PAD), dtype=np.float32),
                (1.0 - 0.2 * (((u - K[0, 2]) / (W / 2)) ** 2 + ((v - K[1, 2]) / (W / 2)) ** 2) / 1.32).astype(
                    np.float32
                ),
            )
        )
    return tuple(models)


def _models(scene: SimScene, resolution: tuple[int, int]) -> tuple[CameraModel, ...]:
    return camera_models(scene.rig, tuple(resolution))


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
    scene: SimScene, t_us: int, model: CameraModel, resolution: tuple[int, int], footprints: bool = False
) -> tuple[HitBuffer, np.ndarray, np.ndarray, np.ndarray | None]:
    """Cast one camera. Returns hits, global ray planes (3, H, W), origin (3,) and, with
    ``footprints``, the unoccluded pixel count per object (N,)."""
    geo = scene.geometry(int(t_us))
    c2g = scene.ego2global(t_us) @ model.cam2ego
    R, o = c2g[:3, :3], c2g[:3, 3]
    Rf = R.astype(np.float32)
    x, y = model.dirs[0], model.dirs[1]
    dirs = np.stack([Rf[k, 0] * x + Rf[k, 1] * y + Rf[k, 2] for k in range(3)])
    hits = HitBuffer.empty(resolution)
    s_ref = float(scene.road.to_sd(np.array(o[0]), np.array(o[1]))[0])
    cast_ground(scene.road, o, dirs, model.ground_depth, s_ref, hits)
    rects = _rects(geo, R, o, model.K, resolution, scene.cfg.camera_max_range)
    footprint = cast(o, dirs, geo, rects, hits, footprints=footprints)
    return hits, dirs, o, footprint


def _visibility(scene: SimScene, t_us: int) -> np.ndarray:
    H, W = scene.resolution
    sc = scene.cfg.visibility_scale
    res = (max(8, H // sc), max(8, W // sc))
    n = scene.n_actors
    foot = np.zeros(n, np.int64)
    seen = np.zeros(n, np.int64)
    for model in _models(scene, res):
        hits, _, _, fp = cast_camera(scene, t_us, model, res, footprints=True)
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
    return scene.cached("visibility", t_us, lambda: _visibility(scene, int(t_us))).copy()


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


# Indices into _PALETTE (albedo replacing the part colour) and _EMIT (emitted light).
_KEEP, _GLASS, _WHITE, _HEAD, _TAIL, _GRILLE, _WINDOW, _ROOF = range(8)
_PALETTE_BASE = np.array(
    [[0, 0, 0], [0.10, 0.13, 0.17], [0.95, 0.95, 0.95], [0.9, 0.9, 0.85], [0.75, 0.06, 0.05],
     [0.08, 0.08, 0.08], [0.11, 0.14, 0.19], [0.35, 0.34, 0.33]], np.float32,
).T  # fmt: skip
_NO_EMIT, _E_HEAD, _E_TAIL, _E_WINDOW, _E_LAMP = range(5)
_EMIT = np.array(
    [[0, 0, 0], [1.2, 1.15, 1.0], [0.9, 0.05, 0.03], [0.9, 0.7, 0.4], [2.0, 1.8, 1.4]], np.float32
).T


def _object_albedo(
    scene: SimScene, part: np.ndarray, srf: Surface, obj: np.ndarray, lit: Lighting
) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (3, M) and emission (3, M) of M object hits, with the parts' surface patterns."""
    pat = scene.part_pattern.take(part)
    half = scene.part_half.take(part, axis=0)
    code = srf.code
    axis = code >> 1
    positive = (code & 1).astype(bool)
    vertical = axis != 2
    lx, ly, lz = srf.local
    ay = np.abs(ly)
    choice = np.zeros(len(part), np.int8)
    mult = np.ones(len(part), np.float32)
    echoice = np.zeros(len(part), np.int8)

    def put(mask: np.ndarray, k: int) -> None:
        np.putmask(choice, mask, k)

    put((pat == shapes.GLASS_SIDES) & vertical & (lz > -0.75), _GLASS)
    band_lo = np.where((axis == 0) & positive, np.float32(-0.35), np.float32(0.15))
    put((pat == shapes.WINDOW_BAND) & vertical & (lz > band_lo) & (lz < 0.8), _GLASS)
    my = ly * half[:, 1]
    mx = lx * half[:, 0]
    put((pat == shapes.STRIPES_Y) & (np.floor((my + 10.0) / 0.4).astype(np.int64) % 2 == 0), _WHITE)
    np.putmask(mult, (pat == shapes.CORRUGATED) & vertical & (fmod(mx, 0.4) < 0.06), np.float32(0.72))
    body = pat == shapes.VEHICLE_BODY
    if body.any():
        front = body & (axis == 0) & positive
        back = body & (axis == 0) & ~positive
        head = front & (ay > 0.5) & (ay < 0.9) & (lz > 0.05) & (lz < 0.6)
        tail = back & (ay > 0.55) & (ay < 0.92) & (lz > 0.1) & (lz < 0.7)
        put(head, _HEAD)
        put(tail, _TAIL)
        put(front & (ay < 0.4) & (lz > -0.4) & (lz < 0.3), _GRILLE)
        np.putmask(mult, body & vertical & (lz < -0.75), np.float32(0.35))
        lit_up = scene.lights_on.take(obj)  # parked vehicles have their lights off
        np.putmask(echoice, head & lit_up, _E_HEAD)
        np.putmask(echoice, tail & lit_up, _E_TAIL)
    fac = pat == shapes.FACADE
    if fac.any():
        zb = lz * half[:, 2] + half[:, 2]  # height above the ground
        along = np.where(axis == 0, my, mx)
        fa = fmod(along, 3.0) / 3.0
        fz = fmod(zb, 3.2) / 3.2
        upper = (zb > 3.2) & (fa > 0.22) & (fa < 0.78) & (fz > 0.3) & (fz < 0.85)
        shop = (zb > 0.4) & (zb < 2.8) & (fa > 0.08) & (fa < 0.92)
        win = fac & vertical & (upper | shop)
        put(win, _WINDOW)
        put(fac & ~vertical, _ROOF)
        if lit.emissive > 0:
            wid = hash_noise(np.floor((along + 100.0) / 3.0), np.floor(zb / 3.2) + 97 * obj)
            np.putmask(echoice, win & (wid < 0.35), _E_WINDOW)
    if lit.lamps > 0:
        np.putmask(echoice, (pat == shapes.LAMP) & (axis == 2) & ~positive, _E_LAMP)
    palette = _PALETTE_BASE.copy()
    palette[:, _GLASS] += 0.25 * lit.sky_horizon
    palette[:, _WINDOW] += 0.25 * lit.sky_horizon
    col = scene.part_color.take(part, axis=0).T
    col = np.where(choice == _KEEP, col, palette.take(choice, axis=1)) * mult
    emit_scale = np.where(echoice == _E_LAMP, np.float32(1.0), np.float32(lit.emissive))
    emit = _EMIT.take(echoice, axis=1) * emit_scale
    return col, emit


def _lamp_light(scene: SimScene, p: np.ndarray, n: np.ndarray, s: np.ndarray, o: np.ndarray) -> np.ndarray:
    """(N,) light at points p (3, N, relative to o) with normals n (3, N) from the nearest lamp
    (by road s) on each side of the road. Where the nearest lamp changes, both are equally far,
    so the light stays continuous; the other lamps would add a few per cent."""
    acc = np.zeros(p.shape[1], np.float32)
    for lamp_s, lamp_global in scene.lamp_rows:
        if len(lamp_s) == 0:
            continue
        lamp_xyz = (lamp_global - o).astype(np.float32)
        last = len(lamp_s) - 1
        j = np.searchsorted(lamp_s, s)
        a, b = np.clip(j - 1, 0, last), np.clip(j, 0, last)
        k = np.where(np.abs(s - lamp_s[a]) < np.abs(s - lamp_s[b]), a, b)
        lp = lamp_xyz.take(k, axis=0)
        vx, vy, vz = lp[:, 0] - p[0], lp[:, 1] - p[1], lp[:, 2] - p[2]
        dist2 = vx * vx + vy * vy + vz * vz
        ndl = np.maximum(n[0] * vx + n[1] * vy + n[2] * vz, 0) / np.sqrt(dist2)
        acc += ndl / (1.0 + dist2 / np.float32(36.0))
    return acc


def shade(
    scene: SimScene,
    t_us: int,
    hits: HitBuffer,
    dirs: np.ndarray,
    o: np.ndarray,
    model: CameraModel,
    cam_index: int,
) -> np.ndarray:
    """RGB uint8 image of one cast camera (planar (3, H * W) arrays inside)."""
    lit = lighting_for(scene)
    H, W = hits.depth.shape
    N = H * W
    f32 = np.float32
    depth = hits.depth.reshape(N)
    finite = np.isfinite(depth)
    D = dirs.reshape(3, N)
    t = np.where(finite, depth, f32(0))
    pos = D * t  # relative to the camera centre o (float32 keeps mm precision near the camera)
    obj = hits.obj.reshape(N)
    s_ref = float(scene.road.to_sd(np.array(o[0]), np.array(o[1]))[0])
    gi = np.flatnonzero(finite & (obj < 0))
    s_g, d_g = scene.road.to_sd_near(pos[0].take(gi), pos[1].take(gi), o[:2], s_ref)
    albedo = np.zeros((3, N), f32)
    g_col, _ = ground_material(scene.road, s_g, d_g)
    g_obj = obj.take(gi)
    kerb = g_obj <= KERB_TOP
    g_col[:, kerb] = KERB_COLOR[:, None]
    if scene.conditions.rain:
        g_col *= f32(0.75)  # wet asphalt
    albedo[:, gi] = g_col
    emit = np.zeros((3, N), f32)
    normal = np.zeros((3, N), f32)
    normal[2] = 1.0
    face = g_obj == KERB_FACE
    if face.any():  # vertical kerb faces look at the road centre line
        h = scene.road.heading(s_g[face]).astype(f32)
        sign = -np.sign(d_g[face])
        fi = gi[face]
        normal[0, fi] = sign * -np.sin(h)
        normal[1, fi] = sign * np.cos(h)
        normal[2, fi] = 0.0
    face = g_obj == KERB_SIDE_FACE
    if face.any():  # a side street's kerb faces look at its axis
        sf = s_g[face]
        axes = np.array([s_x for s_x, _ in scene.road.junctions], f32)
        nearest = axes[np.abs(sf[:, None] - axes[None]).argmin(1)]
        h = scene.road.heading(sf).astype(f32)
        sign = np.sign(nearest - sf)
        fi = gi[face]
        normal[0, fi] = sign * np.cos(h)
        normal[1, fi] = sign * np.sin(h)
        normal[2, fi] = 0.0
    oi = np.flatnonzero(obj >= 0)
    if len(oi):
        geo = scene.geometry(int(t_us))
        srf = surface(hits, geo, o, dirs, oi)
        part = hits.part.reshape(N).take(oi)
        o_col, o_emit = _object_albedo(scene, part, srf, obj.take(oi), lit)
        albedo[:, oi] = o_col
        emit[:, oi] = o_emit
        normal[:, oi] = srf.normal
    # Lighting: hemispheric ambient + sun + street lamps + ego headlights (a grey level per pixel,
    # coloured lights as separate planes).
    light = lit.ambient[:, None] * (f32(0.75) + f32(0.25) * normal[2])[None]
    if lit.sun.any():
        sd = lit.sun_dir
        direct = np.maximum(normal[0] * sd[0] + normal[1] * sd[1] + normal[2] * sd[2], 0)
        # Objects' shadows on the ground under a high sun (a low one would shade everything,
        # an overcast sky casts none).
        if sd[2] > 0.25 and not scene.conditions.rain:
            geo = scene.geometry(int(t_us))
            c2g = scene.ego2global(t_us) @ model.cam2ego
            env = shadow_envelopes(geo, sd)
            rects = _rects(env, c2g[:3, :3], o, model.K, (H, W), SHADOW_RANGE)
            shadow = ground_shadow(o, dirs, geo, rects, hits, sd).reshape(N)
            direct = np.where(shadow, f32(0), direct)
        light += lit.sun[:, None] * direct
    if lit.lamps > 0 or lit.headlights > 0:
        # Artificial lights reach surfaces within ~60 m; beyond that the haze hides them.
        li = np.flatnonzero(finite & (t < 60.0))
        p_l = pos.take(li, axis=1)
        n_l = normal.take(li, axis=1)
        lamp_l = np.zeros(len(li), f32)
        head_l = np.zeros(len(li), f32)
        if lit.lamps > 0 and len(scene.lamp_xyz):
            s_l, _ = scene.road.to_sd_near(p_l[0], p_l[1], o[:2], s_ref)
            lamp_l = f32(lit.lamps * 1.6) * _lamp_light(scene, p_l, n_l, s_l, o)
        e2g = scene.ego2global(t_us)
        fwd = e2g[:3, 0].astype(f32)
        cam_fwd = (e2g[:3, :3] @ model.cam2ego[:3, 2]).astype(f32)
        if lit.headlights > 0 and float(cam_fwd @ fwd) > 0.0:  # rear cameras see no headlight
            hp = (e2g[:3, :3] @ np.array([3.7, 0.0, 0.7]) + e2g[:3, 3] - o).astype(f32)
            vx, vy, vz = p_l[0] - hp[0], p_l[1] - hp[1], p_l[2] - hp[2]
            dist = np.sqrt(vx * vx + vy * vy + vz * vz) + f32(1e-3)
            cone = np.clip(((vx * fwd[0] + vy * fwd[1] + vz * fwd[2]) / dist - f32(0.82)) / f32(0.12), 0, 1)
            ndl = np.maximum(-(n_l[0] * vx + n_l[1] * vy + n_l[2] * vz) / dist, 0)
            head_l = f32(lit.headlights * 2.2) * cone * ndl / (1.0 + (dist / f32(14.0)) ** 2)
        # 1-D scatters, then coloured broadcasts (a 2-D fancy-index update is much slower).
        full = np.zeros(N, f32)
        full[li] = lamp_l
        light += np.array([1.0, 0.82, 0.55], f32)[:, None] * full
        full[li] = head_l
        light += full
    col = albedo * light + emit
    # Atmospheric haze, then the sky where nothing was hit.
    fog = np.exp(-t / f32(lit.visibility))
    col = col * fog + lit.haze[:, None] * (1 - fog)
    el = model.sky_elevation
    sky = scene.cached(
        f"sky:{model.name}:{H}x{W}",
        0,
        lambda: lit.sky_horizon[:, None] * (1 - el) + lit.sky_zenith[:, None] * el,
    )
    img = np.where(finite, col, sky).reshape(3, H, W)
    rng = scene.frame_rng(t_us, 100 + cam_index)
    if scene.conditions.rain:
        img = _rain(img, rng)
    img *= model.vignette
    dy, dx = rng.integers(0, NOISE_PAD, 2)
    img += model.noise[None, dy : dy + H, dx : dx + W] * f32(scene.cfg.image_noise / 255.0)
    img *= f32(255.0)
    img += f32(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    out = np.empty((H, W, 3), np.uint8)
    for c in range(3):
        out[..., c] = img[c]
    return out


def _rain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast loss, a slight blur and bright streaks on a (3, H, W) image."""
    _, H, W = img.shape
    mean = img.mean(axis=(1, 2), keepdims=True)
    # Contrast loss and a [1 2 1]/4 blur, separable, in place.
    img = img * np.float32(0.72 / 4) + mean * np.float32(0.28 / 4)
    b = img * 2
    b[:, 1:] += img[:, :-1]
    b[:, :-1] += img[:, 1:]
    b[:, 0] += img[:, 0]
    b[:, -1] += img[:, -1]
    img = b * 2
    img[:, :, 1:] += b[:, :, :-1]
    img[:, :, :-1] += b[:, :, 1:]
    img[:, :, 0] += b[:, :, 0]
    img[:, :, -1] += b[:, :, -1]
    img *= np.float32(0.25)
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
    img += streak[None]
    return img


def render_cameras(scene: SimScene, t_us: int) -> list[CameraImage]:
    """The six rig cameras at scene resolution, all exposed at ``t_us`` (global shutter)."""
    out = []
    e2g = scene.ego2global(t_us)
    res = tuple(scene.resolution)
    for ci, model in enumerate(_models(scene, res)):
        hits, dirs, o, _ = cast_camera(scene, t_us, model, res)
        image = shade(scene, t_us, hits, dirs, o, model, ci)
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
