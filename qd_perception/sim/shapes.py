"""Object shapes: every class (and static clutter) as a union of boxes with a material.

Each builder returns parts in an object frame with x forward, y left, z up, z = 0 on the ground
and x, y centred; :func:`finish` re-centres them on the envelope so the annotation box (the
envelope) encloses the geometry exactly. Sizes start from ``MEAN_SIZE_LWH`` with jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qd_perception.classes import MEAN_SIZE_LWH

# Surface patterns, evaluated per pixel by the camera shader (``camera.py``).
PLAIN, GLASS_SIDES, WINDOW_BAND, STRIPES_Y, FACADE, VEHICLE_BODY, CORRUGATED, LAMP = range(8)

# Lidar reflectivity (0..255) of the materials.
R_PAINT, R_GLASS, R_TYRE, R_RETRO, R_CLOTH, R_SKIN, R_CONCRETE, R_METAL, R_WOOD, R_LEAF = (
    45.0, 8.0, 4.0, 220.0, 25.0, 20.0, 35.0, 60.0, 20.0, 15.0,
)  # fmt: skip

TYRE = (0.06, 0.06, 0.07)
DARK = (0.12, 0.12, 0.13)
GLASS = (0.10, 0.13, 0.17)
CAR_PAINTS = (
    (0.92, 0.92, 0.92), (0.08, 0.08, 0.09), (0.62, 0.63, 0.66), (0.35, 0.36, 0.38),
    (0.10, 0.16, 0.38), (0.62, 0.08, 0.08), (0.10, 0.28, 0.16), (0.70, 0.64, 0.52),
    (0.20, 0.40, 0.72), (0.85, 0.75, 0.20),
)  # fmt: skip
CARGO_COLOURS = (
    (0.95, 0.95, 0.93),
    (0.90, 0.50, 0.10),
    (0.15, 0.30, 0.60),
    (0.20, 0.50, 0.25),
    (0.75, 0.75, 0.78),
)
BUS_COLOURS = ((0.80, 0.10, 0.10), (0.10, 0.30, 0.70), (0.92, 0.92, 0.90), (0.20, 0.55, 0.30))
TRAILER_COLOURS = ((0.93, 0.93, 0.93), (0.70, 0.72, 0.75), (0.15, 0.20, 0.45), (0.55, 0.12, 0.10))
CONSTRUCTION_COLOURS = ((0.95, 0.72, 0.05), (0.95, 0.45, 0.05))
CLOTHES = (
    (0.15, 0.15, 0.18), (0.75, 0.10, 0.10), (0.10, 0.25, 0.60), (0.85, 0.85, 0.85), (0.20, 0.45, 0.20),
    (0.55, 0.40, 0.25), (0.90, 0.70, 0.10), (0.45, 0.20, 0.50), (0.30, 0.30, 0.32),
)  # fmt: skip
PANTS = ((0.10, 0.12, 0.25), (0.12, 0.12, 0.12), (0.35, 0.30, 0.25), (0.25, 0.25, 0.28))
SKIN = ((0.90, 0.72, 0.58), (0.70, 0.50, 0.36), (0.45, 0.30, 0.20), (0.95, 0.80, 0.68))
FACADES = (
    (0.78, 0.72, 0.60), (0.62, 0.30, 0.22), (0.70, 0.70, 0.72), (0.88, 0.86, 0.80), (0.50, 0.42, 0.35),
    (0.45, 0.50, 0.55),
)  # fmt: skip
CONE_ORANGE = (1.0, 0.38, 0.03)
WHITE = (0.95, 0.95, 0.95)
BARRIER_RED = (0.85, 0.10, 0.08)
CONCRETE = (0.68, 0.67, 0.64)


@dataclass(frozen=True)
class Shape:
    """Parts of one object, centred on its envelope (the tight annotation box)."""

    size: np.ndarray  # (3,) envelope length, width, height (m)
    center: np.ndarray  # (P, 3) float32 part centres in the object frame
    half: np.ndarray  # (P, 3) float32 part half extents
    color: np.ndarray  # (P, 3) float32 albedo 0..1
    reflectivity: np.ndarray  # (P,) float32 lidar reflectivity 0..255
    pattern: np.ndarray  # (P,) int8 surface pattern


class _Builder:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def box(self, x0, x1, y0, y1, z0, z1, color, refl, pattern=PLAIN) -> None:
        assert x1 > x0 and y1 > y0 and z1 > z0, (x0, x1, y0, y1, z0, z1)
        if refl in (R_PAINT, R_CLOTH):  # diffuse surfaces: dark paint returns less than white
            refl = refl * (0.4 + 1.2 * (0.3 * color[0] + 0.59 * color[1] + 0.11 * color[2]))
        self.rows.append((x0, x1, y0, y1, z0, z1, color, refl, pattern))

    def mirror_y(self, x0, x1, y0, y1, z0, z1, color, refl, pattern=PLAIN) -> None:
        self.box(x0, x1, y0, y1, z0, z1, color, refl, pattern)
        self.box(x0, x1, -y1, -y0, z0, z1, color, refl, pattern)

    def finish(self) -> Shape:
        a = np.array([r[:6] for r in self.rows], dtype=np.float64)
        lo = np.array([a[:, 0].min(), a[:, 2].min(), a[:, 4].min()])
        hi = np.array([a[:, 1].max(), a[:, 3].max(), a[:, 5].max()])
        mid = (lo + hi) / 2
        centers = np.stack([(a[:, 0] + a[:, 1]) / 2, (a[:, 2] + a[:, 3]) / 2, (a[:, 4] + a[:, 5]) / 2], 1)
        halves = np.stack([a[:, 1] - a[:, 0], a[:, 3] - a[:, 2], a[:, 5] - a[:, 4]], 1) / 2
        return Shape(
            size=hi - lo,
            center=(centers - mid).astype(np.float32),
            half=halves.astype(np.float32),
            color=np.array([r[6] for r in self.rows], np.float32),
            reflectivity=np.array([r[7] for r in self.rows], np.float32),
            pattern=np.array([r[8] for r in self.rows], np.int8),
        )


def _pick(rng: np.random.Generator, options: tuple) -> tuple:
    return options[int(rng.integers(len(options)))]


def jittered_size(class_name: str, rng: np.random.Generator, rel: float = 0.08) -> tuple[float, float, float]:
    L, W, H = MEAN_SIZE_LWH[class_name]
    j = 1.0 + rel * np.clip(rng.standard_normal(3), -2, 2)
    return float(L * j[0]), float(W * j[1]), float(H * j[2])


def _wheels(b: _Builder, xs: list[float], W: float, r: float, w: float) -> None:
    for x in xs:
        b.mirror_y(x - r, x + r, W / 2 - w, W / 2, 0.0, 2 * r, TYRE, R_TYRE)


def _round_wheel(b: _Builder, x: float, y0: float, y1: float, r: float) -> None:
    """A wheel of radius r at x as a cross of two boxes (an octagon-like side view)."""
    b.box(x - r, x + r, y0, y1, 0.3 * r, 1.7 * r, TYRE, R_TYRE)
    b.box(x - 0.7 * r, x + 0.7 * r, y0, y1, 0.0, 2 * r, TYRE, R_TYRE)


def car(rng: np.random.Generator) -> Shape:
    L, W, H = jittered_size("car", rng)
    paint = _pick(rng, CAR_PAINTS)
    kind = rng.random()
    if kind < 0.45:  # saloon: low, short cabin
        H, zb, rear, front = 0.85 * H, 0.55, -0.33, 0.17
    elif kind < 0.8:  # hatchback / SUV
        zb, rear, front = 0.55, -0.46, 0.17
    else:  # van / MPV: tall, long cabin
        L, H, zb, rear, front = 1.05 * L, 1.1 * H, 0.5, -0.48, 0.28
    b = _Builder()
    r = min(0.34, 0.19 * H)
    _wheels(b, [L / 2 - 0.85, -L / 2 + 0.8], W, r, 0.22)
    b.box(-L / 2, L / 2, -W / 2 + 0.02, W / 2 - 0.02, 0.22, zb * H, paint, R_PAINT, VEHICLE_BODY)
    b.box(rear * L, front * L, -0.44 * W, 0.44 * W, zb * H, H, paint, R_GLASS, GLASS_SIDES)
    return b.finish()


def truck(rng: np.random.Generator) -> Shape:
    L, W, H = jittered_size("truck", rng)
    cab_paint = _pick(rng, CAR_PAINTS)
    b = _Builder()
    _wheels(b, [L / 2 - 1.1, -L / 2 + 1.3], W, 0.5, 0.3)
    cab = min(2.0, 0.3 * L)
    b.box(L / 2 - cab, L / 2, -W / 2, W / 2, 0.55, 0.88 * H, cab_paint, R_PAINT, WINDOW_BAND)
    b.box(-L / 2 + 0.3, L / 2 - 0.2, -0.4 * W, 0.4 * W, 0.45, 1.0, DARK, R_METAL)
    b.box(-L / 2, L / 2 - cab - 0.15, -W / 2, W / 2, 1.0, H, _pick(rng, CARGO_COLOURS), R_PAINT)
    return b.finish()


def bus(rng: np.random.Generator) -> Shape:
    L, W, H = jittered_size("bus", rng)
    paint = _pick(rng, BUS_COLOURS)
    b = _Builder()
    _wheels(b, [L / 2 - 2.4, -L / 2 + 2.8], W, 0.5, 0.3)
    b.box(-L / 2, L / 2, -W / 2, W / 2, 0.3, H - 0.25, paint, R_PAINT, WINDOW_BAND)
    b.box(-0.25 * L, 0.1 * L, -0.35 * W, 0.35 * W, H - 0.25, H, (0.8, 0.8, 0.8), R_METAL)
    return b.finish()


def trailer(rng: np.random.Generator) -> Shape:
    L, W, H = jittered_size("trailer", rng)
    b = _Builder()
    _wheels(b, [-L / 2 + 1.2, -L / 2 + 2.3], W, 0.5, 0.35)
    b.mirror_y(L / 2 - 2.1, L / 2 - 1.95, 0.25 * W, 0.3 * W, 0.0, 1.15, DARK, R_METAL)
    b.box(-L / 2 + 0.5, L / 2 - 0.5, -0.3 * W, 0.3 * W, 1.0, 1.2, DARK, R_METAL)
    b.box(-L / 2, L / 2, -W / 2, W / 2, 1.2, H, _pick(rng, TRAILER_COLOURS), R_PAINT, CORRUGATED)
    return b.finish()


def construction_vehicle(rng: np.random.Generator) -> Shape:
    L, W, H = jittered_size("construction_vehicle", rng)
    paint = _pick(rng, CONSTRUCTION_COLOURS)
    b = _Builder()
    b.mirror_y(-0.38 * L, 0.22 * L, W / 2 - 0.6, W / 2, 0.0, 0.9, DARK, R_TYRE)
    b.box(-L / 2, 0.12 * L, -0.44 * W, 0.44 * W, 0.9, 0.55 * H, paint, R_PAINT)
    b.box(-0.08 * L, 0.12 * L, 0.0, 0.44 * W, 0.55 * H, 0.93 * H, paint, R_GLASS, GLASS_SIDES)
    b.box(0.12 * L, 0.42 * L, -0.1, 0.1, 0.72 * H, 0.82 * H, paint, R_PAINT)
    b.box(0.0, 0.22 * L, -0.1, 0.1, 0.82 * H, H, paint, R_PAINT)
    b.box(0.38 * L, 0.45 * L, -0.1, 0.1, 0.28 * H, 0.82 * H, paint, R_PAINT)
    b.box(0.36 * L, L / 2, -0.4 * W, 0.4 * W, 0.0, 0.28 * H, (0.35, 0.33, 0.3), R_METAL)
    return b.finish()


def pedestrian(rng: np.random.Generator, walking: bool) -> Shape:
    """Legs are parts 0 and 1, arms parts 3 and 4 (``world`` swings them, at most as far as
    here, so the box stays tight)."""
    _, W, H = jittered_size("pedestrian", rng, 0.06)
    L = 0.55 + 0.2 * rng.random() if walking else 0.40 + 0.1 * rng.random()  # standing: a small stance
    W = min(W, 0.72)
    shirt, pants, skin = _pick(rng, CLOTHES), _pick(rng, PANTS), _pick(rng, SKIN)
    b = _Builder()
    stride = L / 2 - 0.08
    for x, y in ((stride, 0.1), (-stride, -0.1)):
        b.box(x - 0.08, x + 0.08, y - 0.07, y + 0.07, 0.0, 0.47 * H, pants, R_CLOTH)
    b.box(-0.12, 0.12, -W / 2 + 0.12, W / 2 - 0.12, 0.47 * H, 0.82 * H, shirt, R_CLOTH)
    swing = 0.6 * stride
    b.box(swing - 0.06, swing + 0.06, W / 2 - 0.12, W / 2, 0.46 * H, 0.8 * H, shirt, R_CLOTH)
    b.box(-swing - 0.06, -swing + 0.06, -W / 2, -W / 2 + 0.12, 0.46 * H, 0.8 * H, shirt, R_CLOTH)
    b.box(-0.05, 0.05, -0.05, 0.05, 0.82 * H, 0.86 * H, skin, R_SKIN)
    b.box(-0.1, 0.1, -0.085, 0.085, 0.86 * H, 0.96 * H, skin, R_SKIN)
    b.box(-0.1, 0.1, -0.09, 0.09, 0.96 * H, H, (0.1, 0.07, 0.05), R_CLOTH)
    return b.finish()


def _rider(
    b: _Builder, rng: np.random.Generator, x_seat: float, z_seat: float, H: float, reach: float
) -> None:
    shirt, pants = _pick(rng, CLOTHES), _pick(rng, PANTS)
    b.mirror_y(x_seat - 0.05, x_seat + 0.3, 0.07, 0.2, z_seat - 0.45, z_seat, pants, R_CLOTH)
    b.box(x_seat - 0.15, x_seat + 0.12, -0.19, 0.19, z_seat, H - 0.25, shirt, R_CLOTH)
    b.mirror_y(x_seat + 0.12, reach, 0.15, 0.24, H - 0.55, H - 0.45, shirt, R_CLOTH)
    b.box(
        x_seat - 0.12,
        x_seat + 0.1,
        -0.12,
        0.12,
        H - 0.25,
        H,
        _pick(rng, ((0.9, 0.9, 0.9), DARK, (0.8, 0.1, 0.1))),
        R_PAINT,
    )


def bicycle(rng: np.random.Generator, rider: bool) -> Shape:
    L, W, _ = jittered_size("bicycle", rng, 0.05)
    frame = _pick(rng, CAR_PAINTS)
    b = _Builder()
    r = 0.34
    for x in (L / 2 - r, -L / 2 + r):
        _round_wheel(b, x, -0.03, 0.03, r)
    b.box(-L / 2 + r, L / 2 - r, -0.03, 0.03, 0.5, 0.6, frame, R_METAL)
    b.box(-0.2, -0.1, -0.03, 0.03, 0.35, 0.9, frame, R_METAL)
    b.box(-0.28, -0.04, -0.08, 0.08, 0.9, 0.95, DARK, R_CLOTH)
    b.box(L / 2 - r - 0.04, L / 2 - r + 0.04, -0.03, 0.03, 0.35, 1.0, frame, R_METAL)
    b.box(L / 2 - r - 0.05, L / 2 - r + 0.05, -W / 2, W / 2, 1.0, 1.05, DARK, R_METAL)
    if rider:
        _rider(b, rng, -0.15, 0.95, 1.62 + 0.15 * rng.random(), L / 2 - r)
    return b.finish()


def motorcycle(rng: np.random.Generator, rider: bool) -> Shape:
    L, W, _ = jittered_size("motorcycle", rng, 0.06)
    paint = _pick(rng, CAR_PAINTS)
    b = _Builder()
    r = 0.31
    for x in (L / 2 - r, -L / 2 + r):
        _round_wheel(b, x, -0.07, 0.07, r)
    b.box(-0.3 * L, 0.28 * L, -0.17, 0.17, 0.3, 0.75, DARK, R_METAL)
    b.box(0.0, 0.26 * L, -0.16, 0.16, 0.75, 0.95, paint, R_PAINT)
    b.box(-0.32 * L, 0.0, -0.15, 0.15, 0.75, 0.85, DARK, R_CLOTH)
    b.box(0.28 * L, 0.4 * L, -0.13, 0.13, 0.7, 1.0, paint, R_PAINT, VEHICLE_BODY)
    b.box(0.26 * L, 0.3 * L, -W / 2, W / 2, 1.0, 1.06, DARK, R_METAL)
    if rider:
        _rider(b, rng, -0.18 * L, 0.85, 1.5 + 0.15 * rng.random(), 0.28 * L)
    return b.finish()


def traffic_cone(rng: np.random.Generator) -> Shape:
    L, _, H = jittered_size("traffic_cone", rng, 0.05)
    H = 0.55 * H + 0.2 * rng.random()  # real cones are 0.5-0.9 m; the nuScenes mean includes posts
    b = _Builder()
    b.box(-L / 2, L / 2, -L / 2, L / 2, 0.0, 0.04, (0.15, 0.15, 0.15), R_TYRE)
    n = 5
    for k in range(n):
        w = (0.62 - 0.48 * k / (n - 1)) * L / 2
        white = k == 2
        b.box(-w, w, -w, w, 0.04 + (H - 0.04) * k / n, 0.04 + (H - 0.04) * (k + 1) / n,
              WHITE if white else CONE_ORANGE, R_RETRO if white else R_PAINT)  # fmt: skip
    return b.finish()


def barrier(rng: np.random.Generator) -> Shape:
    L, W, H = jittered_size("barrier", rng, 0.06)
    b = _Builder()
    if rng.random() < 0.5:  # striped plastic/metal barrier on feet
        b.mirror_y(-L / 2, L / 2, W / 2 - 0.25, W / 2, 0.0, 0.12, DARK, R_PAINT)
        b.mirror_y(-0.04, 0.04, W / 2 - 0.2, W / 2 - 0.12, 0.12, 0.45 * H, (0.8, 0.8, 0.8), R_METAL)
        b.box(-0.06, 0.06, -W / 2, W / 2, 0.45 * H, H, BARRIER_RED, R_RETRO, STRIPES_Y)
    else:  # concrete jersey barrier
        b.box(-L / 2, L / 2, -W / 2, W / 2, 0.0, 0.3 * H, CONCRETE, R_CONCRETE)
        b.box(-0.3 * L, 0.3 * L, -W / 2, W / 2, 0.3 * H, 0.6 * H, CONCRETE, R_CONCRETE)
        b.box(-0.18 * L, 0.18 * L, -W / 2, W / 2, 0.6 * H, H, CONCRETE, R_CONCRETE, STRIPES_Y)
    return b.finish()


# Static clutter ------------------------------------------------------------------------------


def building(rng: np.random.Generator, length: float, depth: float, height: float) -> Shape:
    b = _Builder()
    b.box(
        -length / 2, length / 2, -depth / 2, depth / 2, 0.0, height, _pick(rng, FACADES), R_CONCRETE, FACADE
    )
    return b.finish()


def street_lamp(arm_dir: float) -> Shape:
    """A lamp post; the arm points to +y (arm_dir = 1) or -y (arm_dir = -1) over the road."""
    b = _Builder()
    grey = (0.45, 0.46, 0.48)
    b.box(-0.08, 0.08, -0.08, 0.08, 0.0, 7.5, grey, R_METAL)
    y0, y1 = sorted((0.0, 1.9 * arm_dir))
    b.box(-0.05, 0.05, y0, y1, 7.35, 7.5, grey, R_METAL)
    ly0, ly1 = sorted((1.3 * arm_dir, 2.0 * arm_dir))
    b.box(-0.17, 0.17, ly0, ly1, 7.2, 7.35, (0.95, 0.9, 0.7), R_METAL, LAMP)
    return b.finish()


def tree(rng: np.random.Generator) -> Shape:
    b = _Builder()
    c = 0.75 + 0.2 * rng.random()
    green = (0.15 + 0.1 * rng.random(), 0.35 + 0.15 * rng.random(), 0.12)
    b.box(-0.15, 0.15, -0.15, 0.15, 0.0, 2.6, (0.35, 0.25, 0.15), R_WOOD)
    b.box(-c, c, -c, c, 2.6, 4.6, green, R_LEAF)
    b.box(-0.6 * c, 0.6 * c, -0.6 * c, 0.6 * c, 4.6, 5.6, green, R_LEAF)
    return b.finish()
