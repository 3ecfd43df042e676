"""Ground materials (road surface, markings, bike lanes, sidewalks, verges) by road coordinates.

Shared by the camera shader (albedo) and the lidar (reflectivity) so both sensors agree.
"""

from __future__ import annotations

import numpy as np

from qd_perception.sim.road import Road

ASPHALT = np.array([0.22, 0.22, 0.23], np.float32)
PARKING = np.array([0.26, 0.26, 0.27], np.float32)
BIKE = np.array([0.40, 0.20, 0.18], np.float32)
SIDEWALK = np.array([0.58, 0.57, 0.55], np.float32)
VERGE = np.array([0.27, 0.34, 0.17], np.float32)
WHITE_PAINT = np.array([0.88, 0.88, 0.86], np.float32)
YELLOW_PAINT = np.array([0.85, 0.68, 0.15], np.float32)


def hash_noise(a: np.ndarray, b: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic white noise in [0, 1) on integer lattice points (a, b)."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def ground_material(road: Road, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (M, 3) float32 and lidar reflectivity (M,) float32 of the ground at (s, d)."""
    ad = np.abs(d)
    n = len(s)
    color = np.empty((n, 3), np.float32)
    refl = np.empty(n, np.float32)
    zones = [
        (ad < road.lanes_half, ASPHALT, 10.0),
        ((ad >= road.lanes_half) & (ad < road.bike_outer), BIKE, 18.0),
        ((ad >= road.bike_outer) & (ad < road.road_half), PARKING, 12.0),
        ((ad >= road.road_half) & (ad < road.sidewalk_outer), SIDEWALK, 30.0),
        (ad >= road.sidewalk_outer, VERGE, 14.0),
    ]
    for m, c, r in zones:
        color[m] = c
        refl[m] = r
    # Fine texture: 25 cm lattice noise on the road, slab joints on the sidewalk.
    grain = hash_noise(np.floor(s * 4), np.floor(d * 4)) - 0.5
    coarse = hash_noise(np.floor(s * 0.5), np.floor(d * 0.5), 7) - 0.5
    color *= (1.0 + 0.10 * grain + 0.08 * coarse)[:, None]
    walk = (ad >= road.road_half) & (ad < road.sidewalk_outer)
    joint = walk & ((np.mod(s, 1.5) < 0.04) | (np.mod(ad - road.road_half, 1.5) < 0.04))
    color[joint] *= 0.7
    # Markings (retro-reflective paint: bright for the lidar too).
    white = np.abs(ad - road.lanes_half) < 0.08
    for i in range(1, road.lanes_per_direction):
        white |= (np.abs(ad - i * road.lane_width) < 0.075) & (np.mod(s, 9.0) < 3.0)
    white |= (np.abs(ad - road.bike_outer) < 0.06) & (np.mod(s, 4.0) < 2.0)
    yellow = np.abs(ad - 0.15) < 0.06
    color[white] = WHITE_PAINT
    color[yellow] = YELLOW_PAINT
    refl[white | yellow] = 130.0
    return color, refl
