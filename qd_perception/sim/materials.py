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


ZONE_COLORS = np.stack([ASPHALT, BIKE, PARKING, SIDEWALK, VERGE])
ZONE_REFL = np.array([10.0, 18.0, 12.0, 30.0, 14.0], np.float32)


def fmod(x: np.ndarray, period: float) -> np.ndarray:
    """x mod period in [0, period) (faster than np.mod for float arrays)."""
    return x - np.float32(period) * np.floor(x * np.float32(1.0 / period))


def ground_material(road: Road, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (3, M) float32 planes and lidar reflectivity (M,) float32 of the ground at (s, d)."""
    s = s.astype(np.float32)
    d = d.astype(np.float32)
    ad = np.abs(d)
    zone = (
        (ad >= road.lanes_half).astype(np.int8)
        + (ad >= road.bike_outer)
        + (ad >= road.road_half)
        + (ad >= road.sidewalk_outer)
    )
    if road.junctions:
        carriage, side_walk = road.side_street(s, d)
        zone = np.where(carriage, np.int8(0), np.where(side_walk, np.int8(3), zone))
    refl = ZONE_REFL.take(zone)
    # Fine texture: 25 cm lattice noise on the road, slab joints on the sidewalk.
    grain = hash_noise(np.floor(s * 4), np.floor(d * 4)) - 0.5
    coarse = hash_noise(np.floor(s * 0.5), np.floor(d * 0.5), 7) - 0.5
    walk = zone == 3
    joint = walk & ((fmod(s, 1.5) < 0.04) | (fmod(ad - np.float32(road.road_half), 1.5) < 0.04))
    factor = (1.0 + 0.10 * grain + 0.08 * coarse) * np.where(joint, np.float32(0.7), np.float32(1.0))
    # Markings (retro-reflective paint: bright for the lidar too).
    white = np.abs(ad - road.lanes_half) < 0.08
    for i in range(1, road.lanes_per_direction):
        white |= (np.abs(ad - i * road.lane_width) < 0.075) & (fmod(s, 9.0) < 3.0)
    white |= (np.abs(ad - road.bike_outer) < 0.06) & (fmod(s, 4.0) < 2.0)
    yellow = np.abs(ad - 0.15) < 0.06
    for s_x, side in road.junctions:  # side street: dashed centre line and a stop line
        out = side * d - np.float32(road.road_half)
        into = (out > 0) & (np.abs(s - np.float32(s_x)) < road.side_street_half)
        white |= into & (np.abs(s - np.float32(s_x)) < 0.06) & (out > 3.0) & (fmod(out, 6.0) < 3.0)
        white |= into & (np.abs(out - 1.5) < 0.2) & ((s - np.float32(s_x)) * side > 0)
    for s_cw in road.crosswalks:
        white |= (np.abs(s - np.float32(s_cw)) < 2.0) & (ad < road.road_half) & (fmod(d + 60.0, 1.2) < 0.6)
    zone = np.where(white, np.int8(5), np.where(yellow, np.int8(6), zone))
    factor = np.where(white | yellow, np.float32(1.0), factor)
    color = _GROUND_PLANES.take(zone, axis=1) * factor.astype(np.float32)
    refl = np.where(white | yellow, np.float32(130.0), refl)
    return color, refl.astype(np.float32)


_GROUND_PLANES = np.stack([ASPHALT, BIKE, PARKING, SIDEWALK, VERGE, WHITE_PAINT, YELLOW_PAINT]).T.copy()
