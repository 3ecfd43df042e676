"""The procedural driving world: :func:`make_scene` builds a :class:`SimScene` (a ``SceneSource``).

A scene is a constant-curvature road (:mod:`.road`) with lanes, bike lanes, parking strips,
kerbs, sidewalks, buildings, lamp posts and trees, populated with objects of all ten detection
classes (:mod:`.shapes`) that move along road-aligned tracks at constant speed: traffic in both
directions, parked vehicles, cyclists, walking, standing and crossing pedestrians and a work zone
with cones, barriers and a construction vehicle. Objects never overlap: moving ones are checked
against every other object's track over the whole scene. Everything is drawn from
``np.random.default_rng([seed, scene_index])`` once, at construction; rendering a time ``t`` is a
pure function of the scene and ``t`` (per-frame noise is seeded from ``(seed, scene, t, sensor)``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from qd_perception.classes import CLASS_NAMES, attribute_for
from qd_perception.geometry.rig import Rig, load_rig
from qd_perception.geometry.transforms import make_transform
from qd_perception.sim import shapes
from qd_perception.sim.config import SimConfig
from qd_perception.sim.raycast import Geometry
from qd_perception.sim.road import Road
from qd_perception.sim.types import Annotations, CameraImage, EgoState, LidarSweep

START_US = 1_700_000_000_000_000
SCENE_SPACING_US = 10**9  # 1000 s between scene starts


@dataclass(frozen=True)
class Conditions:
    lighting: str  # "day" | "dusk" | "night"
    rain: bool

    @property
    def description(self) -> str:
        return f"{self.lighting}, {'rain' if self.rain else 'clear'}"


class _Occupancy:
    """Axis-aligned (s, d) rectangles of the static objects, to place new ones without overlap."""

    def __init__(self) -> None:
        self.rects: list[tuple[float, float, float, float]] = []

    def free(self, s0: float, s1: float, d0: float, d1: float, margin: float = 0.3) -> bool:
        return all(s1 + margin <= a or s0 - margin >= b or d1 <= c or d0 >= d for a, b, c, d in self.rects)

    def add(self, s0: float, s1: float, d0: float, d1: float) -> None:
        self.rects.append((s0, s1, d0, d1))


class _Tracks:
    """Road-aligned extents of every object over the scene (sampled every 0.1 s), so moving
    objects can be added without running through anything."""

    def __init__(self, ts: np.ndarray) -> None:
        self.ts = ts
        self.s = np.zeros((0, len(ts)))
        self.d = np.zeros((0, len(ts)))
        self.hs = np.zeros((0, 1))
        self.hd = np.zeros((0, 1))
        self.owner: list[object] = []  # the actor of each row (None for the ego)

    @staticmethod
    def extents(a: _Actor) -> tuple[float, float]:
        c, s = abs(np.cos(a.yaw_offset)), abs(np.sin(a.yaw_offset))
        L, W = a.shape.size[0] / 2, a.shape.size[1] / 2
        return c * L + s * W, s * L + c * W

    def _rows(self, s_t, d_t, hs, hd):
        n = len(self.ts)
        return np.broadcast_to(s_t, (n,))[None], np.broadcast_to(d_t, (n,))[None], [[hs]], [[hd]]

    def add_track(self, s_t, d_t, hs: float, hd: float, owner: object = None) -> None:
        self.owner.append(owner)
        s_r, d_r, hs_r, hd_r = self._rows(s_t, d_t, hs, hd)
        self.s = np.concatenate([self.s, s_r])
        self.d = np.concatenate([self.d, d_r])
        self.hs = np.concatenate([self.hs, hs_r])
        self.hd = np.concatenate([self.hd, hd_r])

    def add(self, a: _Actor) -> None:
        self.add_track(a.s0 + a.ds_dt * self.ts, a.d0 + a.dd_dt * self.ts, *self.extents(a), owner=a)

    def remove(self, gone: list[_Actor]) -> None:
        keep = np.array([not any(o is g for g in gone) for o in self.owner], bool)
        self.s, self.d, self.hs, self.hd = self.s[keep], self.d[keep], self.hs[keep], self.hd[keep]
        self.owner = [o for o, k in zip(self.owner, keep) if k]

    def clear(self, a: _Actor, margin: float = 0.4) -> bool:
        """True when ``a`` never comes within ``margin`` of any tracked object."""
        hs, hd = self.extents(a)
        s_t = a.s0 + a.ds_dt * self.ts
        d_t = a.d0 + a.dd_dt * self.ts
        apart = (np.abs(self.s - s_t) > self.hs + hs + margin) | (
            np.abs(self.d - d_t) > self.hd + hd + margin
        )
        return bool(apart.all())

    def try_add(self, actors: list, a: _Actor, margin: float = 0.4) -> bool:
        if not self.clear(a, margin):
            return False
        actors.append(a)
        self.add(a)
        return True


@dataclass
class _Actor:
    class_name: str
    shape: shapes.Shape
    s0: float
    d0: float
    ds_dt: float = 0.0
    dd_dt: float = 0.0
    yaw_offset: float = 0.0  # heading relative to the road tangent
    has_rider: bool = True
    pinned: bool = False  # placed to guarantee class coverage: never removed to make room


class SimScene:
    """One simulated scene; satisfies :class:`qd_perception.sim.types.SceneSource`.

    Notes for the writers:

    * Instance ids are ``0 .. n_actors - 1`` **within a scene** (pair them with ``name`` for
      data-set-wide identities); lidar points and pixels of static clutter carry -1.
    * ``annotations(t)`` holds the objects within ``cfg.annotation_range`` of the ego; cameras
      can see farther (up to ``cfg.camera_max_range``), so a few pixels may carry ids that are
      not annotated at that instant.
    * Any ``t_us`` may be rendered (also outside ``[start_us, end_us]``), in any order.

    Beyond the protocol: ``road`` (:class:`.road.Road`), ``conditions``, ``actor_state(t)``,
    ``geometry(t_us)`` (what the sensors see) and ``ego2global(t_us)``.
    """

    def __init__(self, cfg: SimConfig, seed: int, scene_index: int) -> None:
        if int(seed) < 0 or int(scene_index) < 0:
            raise ValueError(f"seed and scene_index must be >= 0, got seed={seed}, scene_index={scene_index}")
        self.cfg = cfg
        self.seed = int(seed)
        self.scene_index = int(scene_index)
        self.rig: Rig = load_rig(cfg.rig)
        self.resolution = tuple(cfg.resolution)
        self.name = f"scene-{scene_index:04d}"
        self.start_us = START_US + scene_index * SCENE_SPACING_US
        self.end_us = self.start_us + round(cfg.duration_s * 1e6)
        self._cache: dict[str, dict] = {}
        rng = np.random.default_rng([self.seed, self.scene_index, 0x5C3E])
        self._build(rng)
        self.description = self.conditions.description

    # Construction -------------------------------------------------------------------------
    def _build(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        u = rng.random(4)
        lighting = "night" if u[0] < cfg.p_night else "dusk" if u[0] < cfg.p_night + cfg.p_dusk else "day"
        self.conditions = Conditions(lighting, bool(u[1] < cfg.p_rain))
        if rng.random() < cfg.straight_probability:
            k = 0.0
        else:
            k = float(rng.uniform(*cfg.curvature))
        n_lanes = int(rng.integers(cfg.lanes_per_direction[0], cfg.lanes_per_direction[1] + 1))
        self.road = Road(
            origin=(float(rng.uniform(300, 1700)), float(rng.uniform(300, 1700))),
            heading0=float(rng.uniform(-np.pi, np.pi)),
            curvature=k,
            lanes_per_direction=n_lanes,
            lane_width=cfg.lane_width,
            bike_lane_width=1.5,
            parking_width=cfg.parking_width,
            sidewalk_width=float(rng.uniform(*cfg.sidewalk_width)),
        )
        road = self.road
        T = cfg.duration_s
        # Ego: in a forward lane at constant speed.
        self.ego_lane = int(rng.integers(n_lanes))
        self.ego_d = road.lane_center(self.ego_lane, forward=True)
        self.ego_speed = float(rng.uniform(*cfg.ego_speed))
        self.ego_ds_dt = road.speed_to_ds_dt(self.ego_speed, self.ego_d)
        self.ego_s0 = 0.0
        s_path_end = self.ego_ds_dt * T
        self.s_range = (-110.0, s_path_end + 110.0)
        occ = {+1: _Occupancy(), -1: _Occupancy()}  # static objects per side (sign of d)
        s_cw = float(rng.uniform(15.0, s_path_end + 35.0))
        junctions: tuple[tuple[float, int], ...] = ()
        if rng.random() < cfg.p_junction:  # a side street on the ego's way, clear of the crossing
            for _ in range(10):
                s_x = float(rng.uniform(10.0, s_path_end + 40.0))
                if abs(s_x - s_cw) > road.side_street_half + 6.0:
                    junctions = ((s_x, int(rng.choice([-1, 1]))),)
                    break
        self.road = road = replace(road, crosswalks=(s_cw,), junctions=junctions)
        for side in (+1, -1):  # no parking on the crossing
            occ[side].add(s_cw - 3.0, s_cw + 3.0, -road.road_half, road.road_half)
        for s_x, side in junctions:  # nor in front of a side street, nor clutter on its mouth
            w = road.side_street_half + 1.0
            lo, hi = sorted((side * road.lanes_half, side * road.sidewalk_outer))
            occ[side].add(s_x - w, s_x + w, lo, hi)
        actors: list[_Actor] = []
        statics: list[tuple[shapes.Shape, float, float, float]] = []  # shape, s, d, yaw offset
        self.lamps: list[tuple[float, float]] = []  # (s, d) of lamp heads
        self._side_parked: list[_Actor] = []
        self._build_static(rng, statics, occ)
        actors.extend(self._side_parked)
        self.work_zones = self._build_work_zones(rng, actors, occ, s_path_end)
        self._build_parking(rng, actors, occ)
        self._build_traffic(rng, actors)
        # From here on every new object is checked against every track (moving or not).
        tracks = _Tracks(np.arange(0.0, T + 1e-9, 0.1))
        for a in actors:
            tracks.add(a)
        # The ego as a moving obstacle: 4.8 m long from 1 m behind the rear axle.
        ts = tracks.ts
        tracks.add_track(self.ego_s0 + 1.4 + self.ego_ds_dt * ts, np.full(len(ts), self.ego_d), 2.4, 1.0)
        self._build_bike_lanes(rng, actors, tracks)
        self._build_sidewalks(rng, actors, occ, tracks)
        self._build_crossings(rng, actors, tracks)
        if cfg.guarantee_all_classes:
            self._guarantee_classes(rng, actors, occ, tracks)
        self._finalise(actors, statics)

    def _build_static(self, rng, statics, occ) -> None:
        road = self.road
        s_lo, s_hi = self.s_range[0] - 60, self.s_range[1] + 60
        # Kerbs are not objects: raycast.cast_ground intersects them analytically.
        for side in (+1, -1):
            # Lamp posts and trees in the strip next to the kerb.
            s = s_lo + rng.uniform(0, 20)
            while s < s_hi:
                if road.junction_blocks(side, s, s, margin=1.0):
                    s += road.side_street_half * 2 + 2.0
                    continue
                d = side * (road.road_half + 0.45)
                statics.append((shapes.street_lamp(arm_dir=-float(side)), s, d, 0.0))
                self.lamps.append((s, side * (road.road_half + 0.45 - 1.65)))
                occ[side].add(s - 0.3, s + 0.3, min(d, d) - 0.3, max(d, d) + 0.3)
                n_trees = int(rng.integers(0, 3))
                for j in range(n_trees):
                    st = s + (j + 1) * 28.0 / (n_trees + 1) + rng.uniform(-2, 2)
                    dt = side * (road.road_half + 0.95)
                    if road.junction_blocks(side, st - 1.0, st + 1.0):
                        continue
                    statics.append((shapes.tree(rng), st, dt, float(rng.uniform(0, np.pi / 2))))
                    occ[side].add(st - 1.0, st + 1.0, dt - 1.0, dt + 1.0)
                s += rng.uniform(24, 34)
            # Buildings behind the sidewalk.
            s = s_lo
            while s < s_hi:
                length = float(rng.uniform(8, 30))
                if rng.random() < 0.15:  # an empty lot
                    s += length
                    continue
                if road.junction_blocks(side, s, s + length, margin=road.side_walk_width + 0.5):
                    s += float(rng.uniform(1.0, 3.0))  # leave the side street and its sidewalks open
                    continue
                depth = float(rng.uniform(8, 14))
                height = float(rng.uniform(5, 24) if rng.random() < 0.8 else rng.uniform(24, 40))
                sag = length**2 * abs(road.curvature) / 8
                setback = float(rng.uniform(0.3, 3.0)) + sag
                d = side * (road.sidewalk_outer + setback + depth / 2)
                statics.append((shapes.building(rng, length, depth, height), s + length / 2, d, 0.0))
                s += length + float(rng.uniform(0.0, 6.0))
        # Cars parked along the side streets.
        for s_x, side in road.junctions:
            for k in range(int(rng.integers(0, 4))):
                lane = 1.0 if rng.random() < 0.5 else -1.0  # which kerb of the side street
                car = shapes.car(rng)
                s_c = s_x + lane * (road.side_street_half - car.size[1] / 2 - 0.3)
                d_c = side * (road.sidewalk_outer + 4.0 + k * 6.5 + rng.uniform(0, 1.5))
                self._side_parked.append(
                    _Actor("car", car, s_c, d_c, yaw_offset=side * lane * np.pi / 2, has_rider=False)
                )

    def _build_work_zones(self, rng, actors, occ, s_path_end) -> list[tuple[int, float, float]]:
        road = self.road
        zones = []
        for _ in range(self.cfg.work_zones):
            for _ in range(10):
                side = int(rng.choice([-1, 1]))
                length = float(rng.uniform(22, 36))
                s0 = float(rng.uniform(8, max(12.0, s_path_end + 10)))
                s1 = s0 + length
                if not road.junction_blocks(side, s0 - 8.0, s1 + 3.0):
                    break
            else:
                continue  # no room for a work zone
            zones.append((side, s0, s1))
            d_in, d_out = road.lanes_half, road.road_half
            # Cones along the lane edge, with a taper at the start.
            for s in np.arange(s0 - 6.0, s1 + 0.1, 3.0):
                taper = np.clip((s - (s0 - 6.0)) / 6.0, 0.0, 1.0)
                d = side * (d_out - 0.4 - taper * (d_out - d_in - 0.7))
                actors.append(_Actor("traffic_cone", shapes.traffic_cone(rng), float(s), float(d)))
            # Barriers closing both ends (their long side spans the closed strip).
            for s in (s0, s1):
                for dd in (d_in + 0.2 + 1.3, d_out - 1.35):
                    actors.append(_Actor("barrier", shapes.barrier(rng), s, side * dd, yaw_offset=np.pi / 2))
            cv = shapes.construction_vehicle(rng)
            s_cv = s0 + length / 2 + rng.uniform(-3, 3)
            cv_yaw = float(np.clip(rng.normal(0, 0.04), -0.08, 0.08))
            cv_extent = cv.size[1] / 2 * np.cos(cv_yaw) + cv.size[0] / 2 * abs(np.sin(cv_yaw))  # across d
            actors.append(
                _Actor(
                    "construction_vehicle",
                    cv,
                    s_cv,
                    side * (d_out - 0.05 - cv_extent),
                    yaw_offset=cv_yaw,
                )
            )
            taken = [s_cv - cv.size[0] / 2 - 1.0, s_cv + cv.size[0] / 2 + 1.0]
            worker_s: list[float] = []
            for _ in range(int(rng.integers(1, 3))):  # workers
                s_w = s0 + rng.uniform(2.5, length - 2.5)
                clear_of_cv = not taken[0] < s_w < taken[1]
                if clear_of_cv and all(abs(s_w - o) > 1.2 for o in worker_s):
                    worker_s.append(s_w)
                    actors.append(
                        _Actor(
                            "pedestrian",
                            shapes.pedestrian(rng, False),
                            s_w,
                            side * (d_in + 1.0),
                            yaw_offset=float(rng.uniform(-np.pi, np.pi)),
                        )
                    )
            occ[side].add(
                s0 - 7.0, s1 + 1.0, min(side * d_in, side * d_out) - 0.2, max(side * d_in, side * d_out) + 0.2
            )
        return zones

    def _parked_shape(self, rng, cls: str) -> shapes.Shape:
        return {
            "car": lambda: shapes.car(rng),
            "truck": lambda: shapes.truck(rng),
            "bus": lambda: shapes.bus(rng),
            "trailer": lambda: shapes.trailer(rng),
            "construction_vehicle": lambda: shapes.construction_vehicle(rng),
            "motorcycle": lambda: shapes.motorcycle(rng, rider=False),
        }[cls]()

    def _build_parking(self, rng, actors, occ) -> None:
        road, cfg = self.road, self.cfg
        classes = ["car", "truck", "bus", "trailer", "construction_vehicle", "motorcycle"]
        w = np.array([cfg.density.get(c, 0.0) for c in classes])
        if w.sum() <= 0 or cfg.parked_fraction <= 0:
            return
        w = w / w.sum()
        for side in (+1, -1):
            d = side * (road.bike_outer + road.parking_width / 2)
            s = self.s_range[0]
            while s < self.s_range[1]:
                if rng.random() > cfg.parked_fraction * 1.5:
                    s += float(rng.uniform(3, 10))
                    continue
                cls = classes[int(rng.choice(len(classes), p=w))]
                shape = self._parked_shape(rng, cls)
                L = shape.size[0]
                if occ[side].free(s, s + L, d - 1.2, d + 1.2):
                    flip = np.pi if (side > 0 and rng.random() < 0.8) else 0.0
                    actors.append(_Actor(cls, shape, s + L / 2, d, yaw_offset=flip, has_rider=False))
                    occ[side].add(s, s + L, d - 1.2, d + 1.2)
                s += L + float(rng.uniform(0.6, 3.0))

    def _build_traffic(self, rng, actors) -> None:
        road, cfg = self.road, self.cfg
        T = cfg.duration_s
        classes = ["car", "truck", "bus", "motorcycle", "trailer"]
        w = np.array([cfg.density.get(c, 0.0) for c in classes])
        moving_density = float(w.sum()) * (1 - cfg.parked_fraction)
        if moving_density <= 0:
            return
        w = w / w.sum()
        mean_gap = max(12.0, 100.0 / moving_density * 2 * road.lanes_per_direction)
        for forward in (True, False):
            for lane in range(road.lanes_per_direction):
                d = road.lane_center(lane, forward)
                is_ego_lane = forward and lane == self.ego_lane
                if is_ego_lane:
                    speed = self.ego_speed
                elif forward:
                    speed = float(rng.uniform(max(2.0, self.ego_speed - 4), self.ego_speed + 5))
                else:
                    speed = float(rng.uniform(5.0, 14.0))
                ds = road.speed_to_ds_dt(speed, d) * (1 if forward else -1)
                rel = abs(ds - self.ego_ds_dt) * T
                s = self.s_range[0] - rel - 20 + rng.uniform(0, mean_gap)
                while s < self.s_range[1] + rel + 20:
                    cls = classes[int(rng.choice(len(classes), p=w))]
                    if cls == "trailer":  # a tractor pulling the trailer
                        tr = shapes.trailer(rng)
                        tk = shapes.truck(rng)
                        L = tr.size[0] + tk.size[0] + 0.5
                        parts = [("trailer", tr, s + tr.size[0] / 2), ("truck", tk, s + L - tk.size[0] / 2)]
                    else:
                        shape = (
                            shapes.motorcycle(rng, rider=True)
                            if cls == "motorcycle"
                            else self._parked_shape(rng, cls)
                        )
                        L = shape.size[0]
                        parts = [(cls, shape, s + L / 2)]
                    ego_lo = self.ego_s0 - 1.5 - 7.0
                    ego_hi = self.ego_s0 + 4.0 + 7.0
                    if not (is_ego_lane and s < ego_hi and s + L > ego_lo):
                        for c, sh, sc in parts:
                            yaw = 0.0 if forward else np.pi
                            if not forward:  # drives towards -s: the front is at the low-s end
                                sc = 2 * s + L - sc
                            actors.append(_Actor(c, sh, sc, d, ds_dt=ds, yaw_offset=yaw, has_rider=True))
                    s += L + float(rng.exponential(mean_gap)) + 6.0

    def _zone_blocks(self, side: int, s_a: float, s_b: float) -> bool:
        lo, hi = min(s_a, s_b), max(s_a, s_b)
        return any(z_side == side and hi > z0 - 8 and lo < z1 + 3 for z_side, z0, z1 in self.work_zones)

    def _build_bike_lanes(self, rng, actors, tracks: _Tracks) -> None:
        road, cfg = self.road, self.cfg
        T = cfg.duration_s
        n = int(
            rng.poisson(cfg.density.get("bicycle", 0.0) * 0.6 * (self.s_range[1] - self.s_range[0]) / 100)
        )
        for _ in range(n):
            side = int(rng.choice([-1, 1]))
            d = side * (road.lanes_half + road.bike_lane_width / 2)
            speed = float(rng.uniform(2.5, 6.0))
            ds = road.speed_to_ds_dt(speed, d) * (-side)  # right side rides +s
            s0 = float(rng.uniform(*self.s_range))
            if self._zone_blocks(side, s0, s0 + ds * T):
                continue
            yaw = 0.0 if side < 0 else np.pi
            bike = _Actor("bicycle", shapes.bicycle(rng, rider=True), s0, d, ds_dt=ds, yaw_offset=yaw)
            tracks.try_add(actors, bike)

    def _build_sidewalks(self, rng, actors, occ, tracks: _Tracks) -> None:
        road, cfg = self.road, self.cfg
        length = self.s_range[1] - self.s_range[0]
        n_ped = int(rng.poisson(cfg.density.get("pedestrian", 0.0) * length / 100))
        band = (road.road_half + 1.5, max(road.road_half + 1.6, road.sidewalk_outer - 0.5))
        for _ in range(n_ped):
            side = int(rng.choice([-1, 1]))
            s0 = float(rng.uniform(*self.s_range))
            if rng.random() < 0.7:
                speed = float(rng.uniform(0.8, 1.7))
                direction = 1 if rng.random() < 0.5 else -1
                d = side * float(rng.uniform(*band))
                ds = road.speed_to_ds_dt(speed, d) * direction
                yaw = 0.0 if direction > 0 else np.pi
                walker = _Actor("pedestrian", shapes.pedestrian(rng, True), s0, d, ds_dt=ds, yaw_offset=yaw)
                tracks.try_add(actors, walker, margin=0.2)
            else:
                d = side * (road.sidewalk_outer - 0.35)
                if occ[side].free(s0 - 0.4, s0 + 0.4, min(d, d) - 0.4, max(d, d) + 0.4):
                    yaw = float(rng.uniform(-np.pi, np.pi))
                    stander = _Actor("pedestrian", shapes.pedestrian(rng, False), s0, d, yaw_offset=yaw)
                    if tracks.try_add(actors, stander, margin=0.2):
                        occ[side].add(s0 - 0.4, s0 + 0.4, d - 0.4, d + 0.4)
        # Loose cones and barriers by the kerb (besides the work zones), if configured.
        for cls in ("traffic_cone", "barrier"):
            for _ in range(int(rng.poisson(cfg.density.get(cls, 0.0) * length / 100))):
                self._place_kerbside(rng, actors, occ, tracks, cls, float(rng.uniform(*self.s_range)))
        # Parked bicycles on the sidewalk, by the kerb.
        n_bikes = int(rng.poisson(cfg.density.get("bicycle", 0.0) * 0.4 * length / 100))
        for _ in range(n_bikes):
            self._place_sidewalk_cycle(rng, actors, occ, tracks, "bicycle", float(rng.uniform(*self.s_range)))

    def _build_crossings(self, rng, actors, tracks: _Tracks) -> None:
        """Pedestrians on the zebra crossing, timed so that no vehicle (nor the ego) runs
        through them: every candidate is checked against every object's track."""
        road, T = self.road, self.cfg.duration_s
        limit = road.sidewalk_outer - 0.5
        if self.cfg.density.get("pedestrian", 0.0) <= 0:
            return
        for s_cw in road.crosswalks:
            placed = 0
            target = int(rng.integers(1, 4))
            for _ in range(40):
                if placed >= target:
                    break
                direction = 1.0 if rng.random() < 0.5 else -1.0
                speed = float(rng.uniform(1.0, 1.6))
                s_p = s_cw + float(rng.uniform(-1.3, 1.3))
                d0 = -direction * speed * float(rng.uniform(0.0, T))  # at d = 0 some time in the scene
                if max(abs(d0), abs(d0 + direction * speed * T)) > limit:
                    continue
                ped = _Actor(
                    "pedestrian",
                    shapes.pedestrian(rng, True),
                    s_p,
                    d0,
                    dd_dt=direction * speed,
                    yaw_offset=np.pi / 2 * direction,
                )
                placed += tracks.try_add(actors, ped, margin=0.6)

    def _place_kerbside(self, rng, actors, occ, tracks: _Tracks, cls: str, s: float) -> bool:
        """A cone or a barrier (long side along the road) on the sidewalk by the kerb."""
        side = int(rng.choice([-1, 1]))
        d = side * (self.road.road_half + 0.6)
        shape = shapes.traffic_cone(rng) if cls == "traffic_cone" else shapes.barrier(rng)
        item = _Actor(cls, shape, s, d, yaw_offset=np.pi / 2 if cls == "barrier" else 0.0)
        if occ[side].free(s - 1.4, s + 1.4, d - 0.5, d + 0.5) and tracks.try_add(actors, item, 0.2):
            occ[side].add(s - 1.4, s + 1.4, d - 0.5, d + 0.5)
            return True
        return False

    def _place_sidewalk_cycle(self, rng, actors, occ, tracks: _Tracks, cls: str, s: float) -> bool:
        road = self.road
        side = int(rng.choice([-1, 1]))
        shape = shapes.bicycle(rng, rider=False) if cls == "bicycle" else shapes.motorcycle(rng, rider=False)
        d = side * (road.road_half + 0.3 + shape.size[0] / 2)
        if not occ[side].free(s - 0.6, s + 0.6, d - shape.size[0] / 2, d + shape.size[0] / 2):
            return False
        yaw = np.pi / 2 * (1 if rng.random() < 0.5 else -1)  # perpendicular to the kerb
        if not tracks.try_add(actors, _Actor(cls, shape, s, d, yaw_offset=yaw, has_rider=False), margin=0.2):
            return False
        occ[side].add(s - 0.6, s + 0.6, d - shape.size[0] / 2, d + shape.size[0] / 2)
        return True

    def _ego_xy(self, t: np.ndarray) -> np.ndarray:
        return self.road.point(self.ego_s0 + self.ego_ds_dt * t, self.ego_d)

    def _guarantee_classes(self, rng, actors, occ, tracks: _Tracks) -> None:
        """Make every class pass within 35 m of the ego at some keyframe (all classes scoreable)."""
        road = self.road
        t_key = np.arange(0.0, self.cfg.duration_s + 1e-9, 0.5)
        ego = self._ego_xy(t_key)  # (K, 2)
        present: set[str] = set()
        for a in actors:
            s = a.s0 + a.ds_dt * t_key
            xy = road.point(s, a.d0 + a.dd_dt * t_key)
            if a.class_name not in present and np.min(np.linalg.norm(xy - ego, axis=-1)) < 35.0:
                present.add(a.class_name)
                a.pinned = True  # the witness of its class stays
        s_ego_mid = self.ego_s0 + self.ego_ds_dt * self.cfg.duration_s / 2
        for cls in CLASS_NAMES:
            if cls in present:
                continue
            for attempt in range(60):
                s = s_ego_mid + float(rng.uniform(-15, 25)) + attempt * 0.5
                side = int(rng.choice([-1, 1]))
                if cls in ("pedestrian",):
                    d = side * (road.sidewalk_outer - 0.35)
                    ped = _Actor(
                        cls, shapes.pedestrian(rng, False), s, d, yaw_offset=float(rng.uniform(-3, 3))
                    )
                    if occ[side].free(s - 0.4, s + 0.4, d - 0.4, d + 0.4) and tracks.try_add(
                        actors, ped, 0.2
                    ):
                        occ[side].add(s - 0.4, s + 0.4, d - 0.4, d + 0.4)
                        break
                elif cls in ("bicycle", "motorcycle"):
                    if self._place_sidewalk_cycle(rng, actors, occ, tracks, cls, s):
                        break
                elif cls in ("traffic_cone", "barrier"):
                    if self._place_kerbside(rng, actors, occ, tracks, cls, s):
                        break
                else:
                    shape = self._parked_shape(rng, cls)
                    L = shape.size[0]
                    d = side * (road.bike_outer + road.parking_width / 2)
                    # Make room in the parking strip: drop parked vehicles in the way.
                    keep = []
                    for a in actors:
                        in_strip = a.ds_dt == 0 and abs(a.d0 - d) < 1.0
                        if in_strip and abs(a.s0 - s) < (L + a.shape.size[0]) / 2 + 0.5:
                            if a.pinned:
                                break
                            continue
                        keep.append(a)
                    else:
                        if self._zone_blocks(side, s - L / 2, s + L / 2) or road.junction_blocks(
                            side, s - L / 2, s + L / 2
                        ):
                            continue
                        gone = [a for a in actors if not any(a is k for k in keep)]
                        tracks.remove(gone)
                        vehicle = _Actor(cls, shape, s, d, has_rider=False, pinned=True)
                        if tracks.clear(vehicle, 0.3):
                            actors[:] = keep
                            actors.append(vehicle)
                            tracks.add(vehicle)
                            break
                        for a in gone:  # keep the parked vehicles after all
                            tracks.add(a)

    def _finalise(self, actors: list[_Actor], statics) -> None:
        road = self.road
        self.n_actors = len(actors)
        self.actor_class = tuple(a.class_name for a in actors)
        self.actor_rider = np.array([a.has_rider for a in actors], bool)
        moving = np.array([a.ds_dt != 0 or a.dd_dt != 0 for a in actors], bool)
        #: Per object (actors, then static clutter): vehicle lights on (moving traffic only).
        self.lights_on = np.concatenate([moving, np.zeros(len(statics), bool)])
        self.instance_ids = np.arange(len(actors), dtype=np.int64)
        # Walking pedestrians swing legs and arms (parts 0, 1 and 3, 4 of shapes.pedestrian)
        # within their fixed box, about one gait cycle per 1.4 m.
        starts = np.concatenate([[0], np.cumsum([len(a.shape.center) for a in actors])]).astype(np.int64)
        walkers = [i for i, a in enumerate(actors) if a.class_name == "pedestrian" and moving[i]]
        self.anim_parts = np.array([starts[i] + np.array([0, 1, 3, 4]) for i in walkers], np.int64).reshape(
            -1, 4
        )
        self.anim_stride = np.array([abs(actors[i].shape.center[0, 0]) for i in walkers], np.float32)
        speeds = [np.hypot(actors[i].ds_dt, actors[i].dd_dt) for i in walkers]
        self.anim_freq = np.array(speeds, np.float64) / 1.4
        self.anim_phase = np.array([(i * 2.399) % (2 * np.pi) for i in walkers], np.float64)
        self.a_s0 = np.array([a.s0 for a in actors], np.float64)
        self.a_d0 = np.array([a.d0 for a in actors], np.float64)
        self.a_ds = np.array([a.ds_dt for a in actors], np.float64)
        self.a_dd = np.array([a.dd_dt for a in actors], np.float64)
        self.a_yaw = np.array([a.yaw_offset for a in actors], np.float64)
        self.a_size = np.array([a.shape.size for a in actors], np.float64).reshape(-1, 3)
        all_shapes = [a.shape for a in actors] + [st[0] for st in statics]
        counts = np.array([len(sh.center) for sh in all_shapes], np.int64)
        self.part_start = np.concatenate([[0], np.cumsum(counts)])
        self.part_center = np.concatenate([sh.center for sh in all_shapes]).astype(np.float32)
        self.part_half = np.concatenate([sh.half for sh in all_shapes]).astype(np.float32)
        self.part_color = np.concatenate([sh.color for sh in all_shapes]).astype(np.float32)
        self.part_refl = np.concatenate([sh.reflectivity for sh in all_shapes]).astype(np.float32)
        self.part_pattern = np.concatenate([sh.pattern for sh in all_shapes]).astype(np.int8)
        # Static geometry is placed once.
        st_s = np.array([st[1] for st in statics])
        st_d = np.array([st[2] for st in statics])
        xy = road.point(st_s, st_d)
        size = np.array([st[0].size for st in statics])
        self.static_center = np.concatenate([xy, size[:, 2:3] / 2], 1)
        self.static_yaw = road.heading(st_s) + np.array([st[3] for st in statics])
        self.static_half = size / 2
        lamps = np.array(self.lamps).reshape(-1, 2)
        # Per side of the road: lamp s (sorted) and global lamp-head positions, for the shader.
        self.lamp_rows = []
        for side in (+1, -1):
            m = np.sign(lamps[:, 1]) == side
            order = np.argsort(lamps[m, 0])
            ls = lamps[m, 0][order]
            xyz = np.concatenate([road.point(ls, lamps[m, 1][order]), np.full((len(ls), 1), 7.1)], 1)
            self.lamp_rows.append((ls, xyz.astype(np.float32)))
        self.lamp_xyz = np.concatenate(
            [road.point(lamps[:, 0], lamps[:, 1]), np.full((len(lamps), 1), 7.1)], 1
        )

    # Kinematics ---------------------------------------------------------------------------
    def _t(self, t_us: int) -> float:
        return (int(t_us) - self.start_us) * 1e-6

    def actor_state(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Actors at scene time ``t`` (s): centres (N, 3), yaws (N,), velocities (N, 2), global frame."""
        s = self.a_s0 + self.a_ds * t
        d = self.a_d0 + self.a_dd * t
        xy = self.road.point(s, d).reshape(-1, 2)
        center = np.concatenate([xy, self.a_size[:, 2:3] / 2], 1)
        yaw = self.road.heading(s) + self.a_yaw
        vel = self.road.velocity(s, d, self.a_ds, self.a_dd).reshape(-1, 2)
        return center, yaw, vel

    def cached(self, kind: str, t_us: int, make):
        """Per-scene memo of per-instant results (bounded; a pure function of t, so the order
        of calls never changes a result)."""
        cache = self._cache.setdefault(kind, {})
        key = int(t_us)
        if key not in cache:
            if len(cache) >= 32:
                cache.pop(next(iter(cache)))
            cache[key] = make()
        return cache[key]

    def geometry(self, t_us: int) -> Geometry:
        """Every object (actors, then static clutter) at ``t_us``; shared, do not modify."""
        return self.cached("geometry", t_us, lambda: self._geometry(t_us))

    def _geometry(self, t_us: int) -> Geometry:
        t = self._t(t_us)
        center, yaw, _ = self.actor_state(t)
        part_center = self.part_center
        if len(self.anim_parts):
            part_center = part_center.copy()
            swing = (self.anim_stride * np.sin(self.anim_phase + 2 * np.pi * self.anim_freq * t)).astype(
                np.float32
            )
            for col, gain in enumerate((1.0, -1.0, -0.6, 0.6)):  # legs, then the arms against them
                part_center[self.anim_parts[:, col], 0] = np.float32(gain) * swing
        return Geometry(
            center=np.concatenate([center, self.static_center]),
            yaw=np.concatenate([yaw, self.static_yaw]),
            half=np.concatenate([self.a_size / 2, self.static_half]),
            part_start=self.part_start,
            part_center=part_center,
            part_half=self.part_half,
        )

    def ego2global(self, t_us: int) -> np.ndarray:
        t = self._t(t_us)
        s = self.ego_s0 + self.ego_ds_dt * t
        xy = self.road.point(s, self.ego_d)
        yaw = float(self.road.heading(s))
        c, sn = np.cos(yaw), np.sin(yaw)
        R = np.array([[c, -sn, 0.0], [sn, c, 0.0], [0.0, 0.0, 1.0]])
        return make_transform(R, np.array([xy[0], xy[1], 0.0]))

    # SceneSource --------------------------------------------------------------------------
    def ego(self, t_us: int) -> EgoState:
        return EgoState(
            timestamp_us=int(t_us),
            ego2global=self.ego2global(t_us),
            linear_velocity=np.array([self.ego_speed, 0.0, 0.0]),
            angular_velocity=np.array([0.0, 0.0, self.road.curvature * self.ego_ds_dt]),
        )

    def annotations(self, t_us: int, visibility: bool = True) -> Annotations:
        """Objects within ``cfg.annotation_range`` of the ego at ``t_us``.

        The visibility levels cost a low-resolution render of the six cameras (~5 % of a
        keyframe); ``visibility=False`` skips it (``Annotations.visibility`` is then empty), e.g.
        for per-sweep ground truth in a bag, which carries no visibility.
        """
        from qd_perception.sim.camera import visibility_levels

        t = self._t(t_us)
        center, yaw, vel = self.actor_state(t)
        ego_xy = self.ego2global(t_us)[:2, 3]
        keep = np.flatnonzero(np.linalg.norm(center[:, :2] - ego_xy, axis=1) <= self.cfg.annotation_range)
        boxes = np.zeros((len(keep), 9))
        boxes[:, 0:3] = center[keep]
        boxes[:, 3:6] = self.a_size[keep]
        boxes[:, 6] = (yaw[keep] + np.pi) % (2 * np.pi) - np.pi
        boxes[:, 7:9] = vel[keep]
        speed = np.linalg.norm(vel[keep], axis=1)
        attrs = tuple(
            attribute_for(self.actor_class[i], float(v), bool(self.actor_rider[i]))
            for i, v in zip(keep, speed)
        )
        vis = visibility_levels(self, int(t_us))[keep] if visibility else np.zeros(0, np.int64)
        return Annotations(
            boxes=boxes,
            class_names=tuple(self.actor_class[i] for i in keep),
            instance_ids=self.instance_ids[keep].copy(),
            attributes=attrs,
            visibility=vis,
        )

    def lidar(self, t_us: int) -> LidarSweep:
        from qd_perception.sim.lidar import render_lidar

        return render_lidar(self, int(t_us))

    def cameras(self, t_us: int) -> list[CameraImage]:
        from qd_perception.sim.camera import render_cameras

        return render_cameras(self, int(t_us))

    def frame_rng(self, t_us: int, sensor: int) -> np.random.Generator:
        """Noise generator of one sensor reading: a pure function of (seed, scene, t, sensor)."""
        return np.random.default_rng([self.seed, self.scene_index, int(t_us) - self.start_us + 2**40, sensor])


def make_scene(cfg: SimConfig, seed: int, scene_index: int) -> SimScene:
    """Build scene ``scene_index`` of the world drawn from ``seed`` (deterministic)."""
    return SimScene(cfg, seed, scene_index)
