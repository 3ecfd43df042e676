"""A road of constant curvature in the global frame, addressed by arc length ``s`` and offset ``d``.

``s`` (m) runs along the road centre line, ``d`` (m) is the signed lateral offset, positive to
the left of the +s direction. Traffic is right-handed: lanes in the +s direction have ``d < 0``.

Cross-section, from the centre line outwards on each side::

    | lanes (n * lane_width) | bike lane | parking strip | kerb | sidewalk | buildings ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_STRAIGHT = 1e-6  # |curvature| below this is treated as a straight road (1000 km radius)


@dataclass(frozen=True)
class Road:
    """Constant-curvature centre line starting at ``origin`` (global x, y) with ``heading0`` (rad)."""

    origin: tuple[float, float]
    heading0: float
    curvature: float  # 1/m, positive turns left
    lanes_per_direction: int
    lane_width: float
    bike_lane_width: float
    parking_width: float
    sidewalk_width: float
    kerb_height: float = 0.15
    kerb_width: float = 0.2
    crosswalks: tuple[float, ...] = ()  # s of zebra crossings (4 m wide, kerb to kerb)
    # Side streets (T-junctions): (s of the side street's axis, side = +1 left / -1 right).
    junctions: tuple[tuple[float, int], ...] = ()
    side_street_half: float = 4.0  # half width of a side street's carriageway
    side_walk_width: float = 3.0  # its sidewalks

    def side_street(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(carriageway, sidewalk) masks of points (s, d) on a side street beyond the kerb line.

        A side street runs outwards from the main kerb, along +-d, centred on ``s_x`` (in road
        coordinates, so it fans slightly on a curved main road).
        """
        carriage = np.zeros(np.shape(s), bool)
        walk = np.zeros(np.shape(s), bool)
        for s_x, side in self.junctions:
            beyond = side * d > self.road_half
            ds = np.abs(s - np.float32(s_x))
            carriage |= beyond & (ds < self.side_street_half)
            walk |= (
                beyond & (ds >= self.side_street_half) & (ds < self.side_street_half + self.side_walk_width)
            )
        return carriage, walk

    def junction_blocks(self, side: int, s_a: float, s_b: float, margin: float = 1.0) -> bool:
        """Whether the s-interval [s_a, s_b] on ``side`` overlaps a side street's mouth."""
        lo, hi = min(s_a, s_b), max(s_a, s_b)
        half = self.side_street_half + margin
        return any(j_side == side and hi > s_x - half and lo < s_x + half for s_x, j_side in self.junctions)

    # Lateral layout -------------------------------------------------------------------------
    @property
    def lanes_half(self) -> float:
        """|d| of the outer edge of the driving lanes."""
        return self.lanes_per_direction * self.lane_width

    @property
    def bike_outer(self) -> float:
        return self.lanes_half + self.bike_lane_width

    @property
    def road_half(self) -> float:
        """|d| of the kerb face (edge of the carriageway)."""
        return self.bike_outer + self.parking_width

    @property
    def sidewalk_outer(self) -> float:
        return self.road_half + self.sidewalk_width

    def lane_center(self, lane: int, forward: bool) -> float:
        """d of lane ``lane`` (0 = next to the centre line) in the +s (forward) or -s direction."""
        d = (lane + 0.5) * self.lane_width
        return -d if forward else d

    # Centre line ----------------------------------------------------------------------------
    def heading(self, s: np.ndarray | float) -> np.ndarray:
        return self.heading0 + self.curvature * np.asarray(s, dtype=np.float64)

    def point(self, s: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """(..., 2) global x, y of road coordinates (s, d)."""
        s = np.asarray(s, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        k, h0 = self.curvature, self.heading0
        x0, y0 = self.origin
        h = h0 + k * s
        if abs(k) < _STRAIGHT:
            cx = x0 + s * np.cos(h0)
            cy = y0 + s * np.sin(h0)
        else:
            cx = x0 + (np.sin(h) - np.sin(h0)) / k
            cy = y0 - (np.cos(h) - np.cos(h0)) / k
        return np.stack([cx - d * np.sin(h), cy + d * np.cos(h)], axis=-1)

    def velocity(
        self,
        s: np.ndarray | float,
        d: np.ndarray | float,
        ds_dt: np.ndarray | float,
        dd_dt: np.ndarray | float,
    ) -> np.ndarray:
        """(..., 2) global velocity of a point moving in road coordinates (exact derivative)."""
        h = self.heading(s)
        d = np.asarray(d, dtype=np.float64)
        along = np.asarray(ds_dt) * (1.0 - self.curvature * d)
        tx, ty = np.cos(h), np.sin(h)
        return np.stack([along * tx - dd_dt * ty, along * ty + dd_dt * tx], axis=-1)

    def speed_to_ds_dt(self, speed: float, d: float) -> float:
        """ds/dt of a point at offset d moving at ``speed`` m/s along the road."""
        return speed / (1.0 - self.curvature * d)

    def to_sd(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global x, y (any shape) -> road coordinates (s, d), exact for this curve."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        k, h0 = self.curvature, self.heading0
        x0, y0 = self.origin
        if abs(k) < _STRAIGHT:
            dx, dy = x - x0, y - y0
            c, s_ = np.cos(h0), np.sin(h0)
            return dx * c + dy * s_, -dx * s_ + dy * c
        ox, oy = x0 - np.sin(h0) / k, y0 + np.cos(h0) / k  # centre of the circle
        vx, vy = x - ox, y - oy
        phi0 = h0 - np.sign(k) * np.pi / 2
        dphi = (np.arctan2(vy, vx) - phi0 + np.pi) % (2 * np.pi) - np.pi
        return dphi / k, 1.0 / k - np.sign(k) * np.hypot(vx, vy)

    def _tangent_frame(
        self, x_rel: np.ndarray, y_rel: np.ndarray, origin_xy: np.ndarray, s_ref: float
    ) -> tuple[np.ndarray, np.ndarray]:
        ref = self.point(s_ref, 0.0)
        h = float(self.heading(s_ref))
        c, s_ = np.float32(np.cos(h)), np.float32(np.sin(h))
        ox, oy = np.float32(origin_xy[0] - ref[0]), np.float32(origin_xy[1] - ref[1])
        px, py = x_rel + ox, y_rel + oy
        return c * px + s_ * py, c * py - s_ * px  # along the tangent at s_ref, to its left

    def to_sd_near(
        self, x_rel: np.ndarray, y_rel: np.ndarray, origin_xy: np.ndarray, s_ref: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates of points given relative to ``origin_xy`` (float32 friendly).

        Exact like :meth:`to_sd`, but evaluated in the tangent frame of the centre line at
        ``s_ref`` (pick one near the points) with cancellation-free formulas, so float32 inputs
        keep millimetre precision even for near-straight roads far from the map origin.
        """
        a, b = self._tangent_frame(x_rel, y_rel, origin_xy, s_ref)
        k = np.float32(self.curvature)
        if abs(self.curvature) < _STRAIGHT:
            return a + np.float32(s_ref), b
        ak, bk = a * k, 1 - b * k
        q = np.sqrt(ak * ak + bk * bk)
        return np.arctan2(ak, bk) / k + np.float32(s_ref), (2 * b - k * (a * a + b * b)) / (1 + q)

    def d_near(self, x_rel: np.ndarray, y_rel: np.ndarray, origin_xy: np.ndarray, s_ref: float) -> np.ndarray:
        """Only the ``d`` of :meth:`to_sd_near` (no arctangent: cheaper)."""
        a, b = self._tangent_frame(x_rel, y_rel, origin_xy, s_ref)
        if abs(self.curvature) < _STRAIGHT:
            return b
        k = np.float32(self.curvature)
        ak, bk = a * k, 1 - b * k
        return (2 * b - k * (a * a + b * b)) / (1 + np.sqrt(ak * ak + bk * bk))
