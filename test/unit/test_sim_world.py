"""The procedural world: geometry agreement between sensors and annotations, determinism,
class coverage, kinematics and conditions. Tiny resolutions and short scenes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qd_perception.classes import CLASS_NAMES, MEAN_SIZE_LWH, attribute_for
from qd_perception.config import ConfigError, from_dict, load_yaml
from qd_perception.geometry.boxes import box_corners, points_in_boxes
from qd_perception.geometry.transforms import invert
from qd_perception.sim.config import SimConfig
from qd_perception.sim.world import make_scene

ROOT = Path(__file__).resolve().parents[2]
TINY = SimConfig(resolution=(90, 160), duration_s=2.0)


def _lidar_global(scene, sweep) -> np.ndarray:
    s2g = sweep.ego2global @ scene.rig.lidar2ego()
    return sweep.points[:, :3].astype(np.float64) @ s2g[:3, :3].T + s2g[:3, 3]


def test_default_yaml_loads_and_bad_input_is_rejected():
    cfg = load_yaml(SimConfig, ROOT / "config" / "sim" / "default.yaml")
    assert cfg.resolution == (450, 800) and cfg.rig == "nuscenes_like"
    assert set(cfg.density) <= set(CLASS_NAMES)
    with pytest.raises(ConfigError, match="unknown class"):
        from_dict(SimConfig, {"density": {"unicycle": 1.0}})
    with pytest.raises(ConfigError, match="resolution"):
        from_dict(SimConfig, {"resolution": [4, 4]})
    with pytest.raises(ValueError, match="seed"):
        make_scene(TINY, seed=-1, scene_index=0)


def test_an_empty_world_still_renders():
    cfg = replace(
        TINY,
        resolution=(24, 40),
        density=dict.fromkeys(CLASS_NAMES, 0.0),
        work_zones=0,
        guarantee_all_classes=False,
    )
    scene = make_scene(cfg, 0, 0)
    assert scene.n_actors == 0 and len(scene.annotations(scene.start_us)) == 0
    sweep = scene.lidar(scene.start_us)
    assert len(sweep.points) > 10_000 and (sweep.instance_ids == -1).all()
    assert all((c.instance_ids == -1).all() and c.image.std() > 5 for c in scene.cameras(scene.start_us))


def test_lidar_points_lie_in_their_annotated_boxes():
    scene = make_scene(TINY, seed=3, scene_index=0)
    n_checked = 0
    for t in (scene.start_us, scene.start_us + 1_000_000):
        sweep = scene.lidar(t)
        ann = scene.annotations(t)
        assert sweep.points.dtype == np.float32 and sweep.points.shape[1] == 5
        assert len(sweep.point_time) == len(sweep.points) == len(sweep.instance_ids)
        period = 1.0 / scene.rig.lidar.rate_hz
        assert sweep.point_time.min() >= -period and sweep.point_time.max() <= 0
        assert set(np.unique(sweep.points[:, 4]).astype(int)) <= set(range(scene.rig.lidar.beams))
        assert 0 <= sweep.points[:, 3].min() and sweep.points[:, 3].max() <= 255
        pts = _lidar_global(scene, sweep)
        ids = {int(k): i for i, k in enumerate(ann.instance_ids)}
        hit_ids = np.unique(sweep.instance_ids[sweep.instance_ids >= 0])
        assert len(hit_ids) >= 5
        for k in hit_ids:
            assert int(k) in ids, "a lidar point hit an object that is not annotated"
            p = pts[sweep.instance_ids == k]
            inside = points_in_boxes(p, ann.boxes[ids[int(k)]][None], margin=0.05)[0]
            assert inside.all(), f"instance {k}: {np.count_nonzero(~inside)} of {len(p)} points outside"
            n_checked += len(p)
        # Ground returns sit on the ground plane (z = 0 in the global frame).
        ground = (sweep.instance_ids < 0) & (np.abs(pts[:, 2]) < 0.05)
        assert ground.sum() > 0.3 * len(pts)
    assert n_checked > 200


def test_projected_boxes_land_on_their_pixels():
    scene = make_scene(replace(TINY, resolution=(180, 320)), seed=5, scene_index=1)
    t = scene.start_us + 500_000
    ann = scene.annotations(t)
    by_id = {int(k): i for i, k in enumerate(ann.instance_ids)}
    center, _, _ = scene.actor_state(0.5)  # instance id k is actor k
    n_center, n_center_ok = 0, 0
    for cam in scene.cameras(t):
        K = scene.rig.intrinsics(cam.camera, scene.resolution)
        g2c = invert(cam.ego2global @ scene.rig.cam2ego(cam.camera))
        H, W = cam.instance_ids.shape
        for k in np.unique(cam.instance_ids[cam.instance_ids >= 0]):
            if int(k) not in by_id:  # seen, but beyond the annotation range
                far = np.linalg.norm(center[int(k), :2] - cam.ego2global[:2, 3])
                assert far > scene.cfg.annotation_range
                continue
            i = by_id[int(k)]
            corners = box_corners(ann.boxes[i][None])[0]
            pc = corners @ g2c[:3, :3].T + g2c[:3, 3]
            if (pc[:, 2] < 0.5).any():
                continue
            uv = (pc @ K.T)[:, :2] / pc[:, 2:3]
            rows, cols = np.nonzero(cam.instance_ids == k)
            # Every pixel of the object lies inside its projected box (1 px of rounding).
            assert cols.min() >= uv[:, 0].min() - 1 and cols.max() <= uv[:, 0].max() + 1
            assert rows.min() >= uv[:, 1].min() - 1 and rows.max() <= uv[:, 1].max() + 1
            # Well-visible objects: the projected centre shows the object itself.
            if ann.visibility[i] == 4 and len(rows) > 30:
                c = g2c[:3, :3] @ ann.boxes[i, :3] + g2c[:3, 3]
                u, v = np.rint((K @ c)[:2] / c[2]).astype(int)
                if 0 <= u < W and 0 <= v < H:
                    n_center += 1
                    n_center_ok += int(k in cam.instance_ids[max(v - 1, 0) : v + 2, max(u - 1, 0) : u + 2])
    assert n_center >= 3
    assert n_center_ok >= 0.9 * n_center
    # Depth is metric along the optical axis: the ground in front of CAM_FRONT at the bottom row.
    front = next(c for c in scene.cameras(t) if c.camera == "CAM_FRONT")
    assert np.isfinite(front.depth[-1]).all() and np.isinf(front.depth[0]).any()


def test_deterministic_and_independent_of_call_order():
    cfg = replace(TINY, resolution=(36, 64))
    a, b = make_scene(cfg, 11, 2), make_scene(cfg, 11, 2)
    t1, t2 = a.start_us + 250_000, a.start_us + 1_500_000
    a.lidar(t2), a.cameras(t2)  # render another instant first on one copy only
    la, lb = a.lidar(t1), b.lidar(t1)
    np.testing.assert_array_equal(la.points, lb.points)
    np.testing.assert_array_equal(la.instance_ids, lb.instance_ids)
    for ca, cb in zip(a.cameras(t1), b.cameras(t1)):
        np.testing.assert_array_equal(ca.image, cb.image)
        np.testing.assert_array_equal(ca.instance_ids, cb.instance_ids)
    np.testing.assert_array_equal(a.annotations(t1).boxes, b.annotations(t1).boxes)
    assert a.start_us == b.start_us and a.description == b.description
    c = make_scene(cfg, 12, 2)
    assert c.lidar(t1).points.shape != la.points.shape or not np.array_equal(c.lidar(t1).points, la.points)
    assert make_scene(cfg, 11, 3).start_us > a.end_us


def test_every_class_near_the_ego_in_each_scene():
    cfg = replace(TINY, duration_s=4.0)
    for idx in range(2):
        scene = make_scene(cfg, seed=7, scene_index=idx)
        near: set[str] = set()
        for t in range(scene.start_us, scene.end_us + 1, 500_000):
            ego = scene.ego(t).ego2global[:2, 3]
            center, _, _ = scene.actor_state((t - scene.start_us) * 1e-6)
            close = np.linalg.norm(center[:, :2] - ego, axis=1) < 40.0
            near |= {scene.actor_class[i] for i in np.flatnonzero(close)}
        assert near == set(CLASS_NAMES), f"scene {idx} lacks {set(CLASS_NAMES) - near}"


def _footprints_overlap(boxes: np.ndarray, shrink: float) -> list[tuple[int, int]]:
    """Pairs of boxes whose ground footprints (shrunk by ``shrink`` m) intersect (separating axes)."""
    corners = box_corners(boxes)[:, :4, :2]  # (N, 4, 2) bottom face
    centre = boxes[:, None, :2]
    corners = centre + (corners - centre) * (
        1 - 2 * shrink / np.maximum(boxes[:, None, 3:5].min(-1, keepdims=True), 0.1)
    )
    axes = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], -1)
    axes = np.stack([axes, axes[:, ::-1] * [-1, 1]], 1)  # (N, 2, 2) heading and its normal
    pairs = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            separated = False
            for ax in np.concatenate([axes[i], axes[j]]):
                pi, pj = corners[i] @ ax, corners[j] @ ax
                if pi.max() < pj.min() or pj.max() < pi.min():
                    separated = True
                    break
            if not separated:
                pairs.append((i, j))
    return pairs


def test_objects_never_overlap():
    for idx in range(4):
        scene = make_scene(replace(TINY, duration_s=6.0), seed=1, scene_index=idx)
        for t in np.arange(0.0, 6.01, 1.5):
            center, yaw, _ = scene.actor_state(t)
            boxes = np.zeros((len(center), 9))
            boxes[:, :3], boxes[:, 3:6], boxes[:, 6] = center, scene.a_size, yaw
            ego = scene.ego(scene.start_us + round(t * 1e6)).ego2global[:2, 3]
            near = np.flatnonzero(np.linalg.norm(center[:, :2] - ego, axis=1) < 50)
            assert len(near) > 20
            bad = _footprints_overlap(boxes[near], shrink=0.05)
            names = [(scene.actor_class[near[i]], scene.actor_class[near[j]]) for i, j in bad]
            assert not bad, f"scene {idx}: overlapping objects at t={t}: {names}"


def test_annotation_kinematics_sizes_and_attributes():
    cfg = replace(TINY, straight_probability=0.0)  # a curved road
    scene = make_scene(cfg, seed=2, scene_index=0)
    assert scene.road.curvature != 0
    t, dt = scene.start_us + 1_000_000, 50_000
    a0, a1, a2 = (scene.annotations(t + k * dt) for k in (-1, 0, 1))
    common = np.intersect1d(np.intersect1d(a0.instance_ids, a1.instance_ids), a2.instance_ids)
    assert len(common) > 0.9 * len(a1)  # ids are stable (a few cross the annotation range)
    sel = [np.searchsorted(a.instance_ids, common) for a in (a0, a1, a2)]
    fd = (a2.boxes[sel[2], :2] - a0.boxes[sel[0], :2]) / (2 * dt * 1e-6)
    np.testing.assert_allclose(fd, a1.boxes[sel[1], 7:9], atol=0.02)
    speed = np.linalg.norm(a1.boxes[:, 7:9], axis=1)
    assert speed.max() > 3.0 and (speed == 0).any()  # traffic and parked objects
    for box, cls, attr, v in zip(a1.boxes, a1.class_names, a1.attributes, speed):
        assert cls in CLASS_NAMES
        assert attr in (attribute_for(cls, v, True), attribute_for(cls, v, False))
        L, W, H = MEAN_SIZE_LWH[cls]
        assert 0.3 * L < box[3] < 1.6 * L and 0.4 * W < box[4] < 1.6 * W and 0.4 * H < box[5] < 1.6 * H
        assert abs(box[2] - box[5] / 2) < 1e-6  # standing on the ground
    assert set(np.unique(a1.visibility)) <= {1, 2, 3, 4} and (a1.visibility == 4).any()
    assert (a1.visibility < 4).any()  # some objects are occluded
    quick = scene.annotations(t, visibility=False)
    assert len(quick.visibility) == 0 and np.array_equal(quick.boxes, a1.boxes)
    # Ego odometry agrees with the pose trajectory.
    e0, e1, e2 = (scene.ego(t + k * dt) for k in (-1, 0, 1))
    v_global = (e2.ego2global[:3, 3] - e0.ego2global[:3, 3]) / (2 * dt * 1e-6)
    np.testing.assert_allclose(e1.ego2global[:3, :3].T @ v_global, e1.linear_velocity, atol=0.01)
    yaw = [np.arctan2(e.ego2global[1, 0], e.ego2global[0, 0]) for e in (e0, e2)]
    assert abs((yaw[1] - yaw[0]) / (2 * dt * 1e-6) - e1.angular_velocity[2]) < 1e-3


def test_night_is_darker_and_rain_degrades_the_lidar():
    base = replace(TINY, resolution=(36, 64), p_dusk=0.0, p_rain=0.0)
    day = make_scene(replace(base, p_night=0.0), 4, 0)
    night = make_scene(replace(base, p_night=1.0), 4, 0)
    assert day.description == "day, clear" and night.description == "night, clear"
    t = day.start_us + 500_000
    mean_day = np.mean([c.image.mean() for c in day.cameras(t)])
    mean_night = np.mean([c.image.mean() for c in night.cameras(t)])
    assert mean_night < 0.5 * mean_day
    rain = make_scene(replace(base, p_night=0.0, p_rain=1.0), 4, 0)
    assert rain.description == "day, rain"
    dry_pts, wet_pts = day.lidar(t).points, rain.lidar(t).points
    r_dry = np.linalg.norm(dry_pts[:, :3], axis=1)
    r_wet = np.linalg.norm(wet_pts[:, :3], axis=1)
    assert (r_wet > 5).sum() < 0.95 * (r_dry > 5).sum()  # dropouts
    assert (r_wet < 3).sum() > (r_dry < 3).sum() + 50  # spurious near returns (ground is > 3 m)


def test_sensor_culling_loses_no_hit():
    """Per-object ray rectangles (camera frusta, lidar beam x azimuth windows) give the same
    nearest hits as testing every object against every ray."""
    from qd_perception.sim import camera, lidar
    from qd_perception.sim.raycast import HitBuffer, cast, cast_ground

    scene = make_scene(replace(TINY, resolution=(45, 80)), seed=9, scene_index=3)
    t = scene.start_us + 700_000
    geo = scene.geometry(t)
    spec = scene.rig.lidar
    model = lidar.lidar_model(spec, float(spec.yaw_deg))
    s2g = scene.ego2global(t) @ scene.rig.lidar2ego()
    R, o = s2g[:3, :3], s2g[:3, 3]
    dirs = np.stack([(R[k] @ model.planes.reshape(3, -1)).reshape(model.planes.shape[1:]) for k in range(3)])
    dirs = dirs.astype(np.float32)
    near = np.flatnonzero(np.linalg.norm(geo.center - o, axis=1) < spec.max_range + 20)
    culled, brute = HitBuffer.empty(dirs.shape[1:]), HitBuffer.empty(dirs.shape[1:])
    rects = lidar._rects(geo, R, o, model)
    assert len(rects) < len(near)  # something was culled
    cast(o, dirs, geo, rects, culled)
    cast(o, dirs, geo, [(int(i), [(0, dirs.shape[1], 0, dirs.shape[2])]) for i in near], brute)
    in_range = brute.depth <= spec.max_range  # farther returns are dropped anyway
    assert in_range.sum() > 1000
    np.testing.assert_array_equal(culled.obj[in_range], brute.obj[in_range])
    np.testing.assert_array_equal(culled.depth[in_range], brute.depth[in_range])
    for m in camera._models(scene, scene.resolution):
        c2g = scene.ego2global(t) @ m.cam2ego
        R, o = c2g[:3, :3], c2g[:3, 3]
        hits, dirs, _, _ = camera.cast_camera(scene, t, m, scene.resolution)
        brute = HitBuffer.empty(scene.resolution)
        s_ref = float(scene.road.to_sd(np.array(o[0]), np.array(o[1]))[0])
        cast_ground(scene.road, o, dirs, m.ground_depth, s_ref, brute)
        reach = np.linalg.norm(geo.center - o, axis=1) - np.linalg.norm(geo.half, axis=1)
        near = np.flatnonzero(reach < scene.cfg.camera_max_range)
        cast(o, dirs, geo, [(int(i), [(0, 45, 0, 80)]) for i in near], brute)
        np.testing.assert_array_equal(hits.obj, brute.obj)
        np.testing.assert_array_equal(hits.depth, brute.depth)


def test_shapes_fill_their_boxes_tightly():
    from qd_perception.sim import shapes

    rng = np.random.default_rng(0)
    builders = {
        "car": lambda: shapes.car(rng),
        "truck": lambda: shapes.truck(rng),
        "construction_vehicle": lambda: shapes.construction_vehicle(rng),
        "bus": lambda: shapes.bus(rng),
        "trailer": lambda: shapes.trailer(rng),
        "barrier": lambda: shapes.barrier(rng),
        "motorcycle": lambda: shapes.motorcycle(rng, rider=bool(rng.integers(2))),
        "bicycle": lambda: shapes.bicycle(rng, rider=bool(rng.integers(2))),
        "pedestrian": lambda: shapes.pedestrian(rng, walking=bool(rng.integers(2))),
        "traffic_cone": lambda: shapes.traffic_cone(rng),
    }
    assert set(builders) == set(CLASS_NAMES)
    for name, build in builders.items():
        for _ in range(5):
            sh = build()
            lo = (sh.center - sh.half).min(0)
            hi = (sh.center + sh.half).max(0)
            np.testing.assert_allclose(hi - lo, sh.size, atol=1e-5, err_msg=name)  # touches every face
            np.testing.assert_allclose((hi + lo) / 2, 0, atol=1e-5, err_msg=name)  # centred
            assert len(sh.center) >= 3 and (sh.half > 0).all()


def test_rolling_shutter_lidar_follows_motion():
    from qd_perception.sim.lidar import ROLLING_SECTORS

    cfg = replace(TINY, lidar_rolling_shutter=True, ego_speed=(12.0, 12.0))
    scene = make_scene(cfg, seed=3, scene_index=0)
    t = scene.start_us + 1_000_000
    sweep = scene.lidar(t)
    spec = scene.rig.lidar
    pts = _lidar_global(scene, sweep)  # via the sweep-time pose
    A = spec.azimuth_steps
    period = 1.0 / spec.rate_hz
    col = np.floor((sweep.point_time / period + 1.0) * A).astype(int).clip(0, A - 1)
    bounds = np.linspace(0, A, ROLLING_SECTORS + 1).round().astype(int)
    sector = np.searchsorted(bounds, col, side="right") - 1
    mid_time = [
        round(float(((bounds[k] + bounds[k + 1]) // 2 + 0.5) / A - 1.0) * period * 1e6) for k in range(10)
    ]
    moved = 0
    for k in range(ROLLING_SECTORS):
        ann = scene.annotations(t + mid_time[k], visibility=False)
        ids = {int(i): j for j, i in enumerate(ann.instance_ids)}
        m = (sector == k) & (sweep.instance_ids >= 0)
        for iid in np.unique(sweep.instance_ids[m]):
            p = pts[m & (sweep.instance_ids == iid)]
            box = ann.boxes[ids[int(iid)]]
            assert points_in_boxes(p, box[None], margin=0.05)[0].all()  # where it was when scanned
            moved += int(np.hypot(*box[7:9]) * abs(mid_time[k]) * 1e-6 > 0.1)
    assert moved > 0  # some scanned objects had moved > 10 cm from their sweep-time box
    snap = make_scene(replace(cfg, lidar_rolling_shutter=False), seed=3, scene_index=0).lidar(t)
    assert not np.array_equal(snap.points, sweep.points)
