"""Offline vs streaming AP on hand-made sequences whose answers are known, and latency helpers."""

from __future__ import annotations

import numpy as np
import pytest

from qd_perception.data.types import Detections
from qd_perception.eval.latency import ReplayClock, latency_stats
from qd_perception.eval.streaming import (
    GroundTruthFrame,
    TimedOutput,
    evaluate_replay,
    latest_published,
    match_stamps,
)
from qd_perception.geometry.boxes import transform_boxes
from qd_perception.geometry.transforms import invert

EGO_SPEED = 10.0  # m/s along global +x
DT_US = 100_000  # 10 Hz


def ego_pose(t_us: int) -> np.ndarray:
    T = np.eye(4)
    T[0, 3] = EGO_SPEED * t_us * 1e-6
    return T


def world_car(t_us: int, car_speed: float) -> np.ndarray:
    """One car 12 m ahead of the ego start, moving at car_speed along +x (global frame)."""
    return np.array([[12.0 + car_speed * t_us * 1e-6, 3.0, 1.0, 4.6, 1.9, 1.7, 0.0, car_speed, 0.0]])


def ego_dets(t_us: int, car_speed: float, score: float = 0.9) -> Detections:
    """Perfect detections of the car in the ego frame at t (velocity over ground, ego axes)."""
    boxes = transform_boxes(world_car(t_us, car_speed), invert(ego_pose(t_us)))
    attr = ("vehicle.moving",) if car_speed else ("vehicle.parked",)
    return Detections(boxes, np.array([0]), np.array([score], np.float32), attr, num_lidar_pts=np.array([50]))


def sequence(car_speed: float, latency_ms: float, keep=lambda k: True):
    gt = [
        GroundTruthFrame(f"s{k}", k * DT_US, ego_pose(k * DT_US), ego_dets(k * DT_US, car_speed, 1.0))
        for k in range(10)
    ]
    # Outputs also exist for inputs before the first scored instant, so streaming has something
    # published at t = 0 and only latency (not start-up) is measured.
    outs = [
        TimedOutput(
            k * DT_US, k * DT_US + int(latency_ms * 1000), ego_pose(k * DT_US), ego_dets(k * DT_US, car_speed)
        )
        for k in range(-5, 10)
        if keep(k)
    ]
    return gt, outs


def test_zero_latency_streaming_equals_offline():
    r = evaluate_replay(*sequence(car_speed=8.0, latency_ms=0.0))
    assert r.offline.per_class_ap["car"] == pytest.approx(1.0)
    assert r.streaming.per_class_ap["car"] == pytest.approx(1.0)
    assert r.offline.per_class_tp_errors["car"]["trans_err"] == pytest.approx(0.0, abs=1e-9)
    assert r.offline.per_class_tp_errors["car"]["vel_err"] == pytest.approx(0.0, abs=1e-9)
    assert r.offline.map == pytest.approx(0.1)  # one class of ten has ground truth
    assert r.offline_missing == r.streaming_missing == 0
    np.testing.assert_allclose(r.streaming_staleness_ms, 0.0)


def test_static_world_is_not_penalised_when_ego_moves():
    # 250 ms latency: at t the newest output is from t - 300 ms, when the ego was 3 m behind.
    # Compared in a common (global) frame a static car still matches exactly; compared naively
    # in the ego frame it would be 3 m off (no match at 0.5/1/2 m).
    r = evaluate_replay(*sequence(car_speed=0.0, latency_ms=250.0))
    assert r.streaming.per_class_ap["car"] == pytest.approx(1.0)
    assert r.streaming.per_class_tp_errors["car"]["trans_err"] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(r.streaming_staleness_ms, 300.0)


def test_moving_object_latency_penalty_is_exact():
    # Car at 10 m/s, outputs 300 ms stale: 3 m centre error -> matched only at the 4 m threshold.
    r = evaluate_replay(*sequence(car_speed=10.0, latency_ms=250.0))
    assert r.offline.per_class_ap["car"] == pytest.approx(1.0)
    assert r.streaming.per_class_ap["car"] == pytest.approx(0.25)
    assert r.streaming.per_class_tp_errors["car"]["trans_err"] == pytest.approx(
        1.0
    )  # capped TP error of class car
    assert r.streaming.map < r.offline.map


def test_dropped_frames():
    # Every other input dropped. Offline: half the instants have no prediction (recall 0.5).
    # Streaming at zero latency, static car: the previous output still matches exactly.
    r = evaluate_replay(*sequence(car_speed=0.0, latency_ms=0.0, keep=lambda k: k % 2 == 0))
    assert r.offline_missing == 5
    # devkit AP: precision 1 up to recall 0.5, averaged over recalls 0.11..1.0 above min precision.
    assert r.offline.per_class_ap["car"] == pytest.approx(40 / 90, abs=1e-6)
    assert r.streaming.per_class_ap["car"] == pytest.approx(1.0)
    np.testing.assert_allclose(r.streaming_staleness_ms, [0, 100] * 5)


def test_pairing_helpers():
    pub = [300, 100, 200]
    np.testing.assert_array_equal(latest_published([50, 100, 250, 1000], pub), [-1, 1, 2, 0])
    np.testing.assert_array_equal(latest_published([5], []), [-1])
    np.testing.assert_array_equal(match_stamps([100, 205, 260], [200, 100], tol_us=10), [1, 0, -1])
    np.testing.assert_array_equal(match_stamps([100, 7], [100], tol_us=0), [0, -1])


def test_latency_helpers():
    s = latency_stats([*range(1, 101), float("nan")])
    assert s.n == 100 and s.p50 == pytest.approx(50.5) and s.max == 100.0
    assert np.isnan(latency_stats([]).p50)
    c = ReplayClock(wall_start_s=1000.0, bag_start_us=5_000_000, rate=2.0)
    assert float(c.to_bag_us(1001.0)) == pytest.approx(7_000_000)
    assert float(c.to_wall_s(c.to_bag_us(1234.5))) == pytest.approx(1234.5)
    with pytest.raises(ValueError):
        ReplayClock(0.0, 0, rate=0.0)


def test_replay_pose_track_and_keyframes():
    from qd_perception.data.rosbag import PoseTrack, detections_from_msg
    from qd_perception.eval.replay import ground_truth_frames
    from qd_perception.geometry.transforms import matrix_to_quat, quat_to_yaw, yaw_to_quat
    from qd_perception.sim import rosmsgs as rm

    T1 = np.eye(4)
    T1[:3, :3] = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # yaw 90 deg
    T1[0, 3] = 10.0
    track = PoseTrack(np.array([1_000_000, 0]), np.stack([T1, np.eye(4)]))  # unsorted on purpose
    mid = track.at(500_000)
    assert mid[0, 3] == pytest.approx(5.0)
    assert quat_to_yaw(matrix_to_quat(mid[:3, :3])) == pytest.approx(np.pi / 4)
    np.testing.assert_allclose(track.at(5_000_000), T1, atol=1e-12)  # clamped at the ends
    np.testing.assert_allclose(PoseTrack(np.zeros(0, np.int64), np.zeros((0, 4, 4))).at(7), np.eye(4))
    assert yaw_to_quat(0.0)[0] == pytest.approx(1.0)

    # Ground truth at 20 Hz: "keyframes" keeps the 2 Hz instants from the first stamp.
    t0 = 1_700_000_000_000_000
    msgs = [
        (
            0,
            rm.detection3d_array(
                t0 + k * 50_000, np.zeros((1, 9)), np.array([8]), num_lidar_points=np.array([5])
            ),
        )
        for k in range(25)
    ]
    key = ground_truth_frames(msgs, PoseTrack(np.zeros(0, np.int64), np.zeros((0, 4, 4))), "keyframes")
    assert [f.timestamp_us - t0 for f in key] == [0, 500_000, 1_000_000]
    assert len(ground_truth_frames(msgs, track, "all")) == 25
    d = detections_from_msg(msgs[0][1])
    assert d.labels.tolist() == [8] and d.num_lidar_pts.tolist() == [5]


def test_replay_parameter_overrides(tmp_path):
    import yaml

    from qd_perception.commands.replay import ReplayOptions, write_overrides
    from qd_perception.paths import config_dir
    from qd_perception.ros.graph import nodes

    specs, _ = nodes("lidar")
    opts = ReplayOptions(
        bags=(tmp_path,),
        out=tmp_path,
        overrides=("lidar_detector.detector.score_threshold=0.3", "lidar_detector.rig=x"),
    )
    files = write_overrides(opts, specs, tmp_path / "params")
    p = yaml.safe_load(open(files["lidar_detector"]))["lidar_detector"]["ros__parameters"]
    assert p["detector.score_threshold"] == 0.3 and p["rig"] == "x"
    # the rest of config/lidar_detector.param.yaml is kept
    shipped = yaml.safe_load(open(config_dir() / "lidar_detector.param.yaml"))["lidar_detector"]
    assert p["detector.name"] == shipped["ros__parameters"]["detector.name"]
    assert p["detector.model_path"] == shipped["ros__parameters"]["detector.model_path"]
    with pytest.raises(ValueError, match="no node 'bev_detector'"):
        write_overrides(replace_overrides(opts, "bev_detector.detector.model_path=m.pt"), specs, tmp_path)
    with pytest.raises(ValueError, match=r"NODE\.PARAM=VALUE"):
        write_overrides(replace_overrides(opts, "score_threshold"), specs, tmp_path)


def replace_overrides(opts, item):
    from dataclasses import replace

    return replace(opts, overrides=(item,))


def test_segments_pool_scenes_with_repeating_stamps():
    from dataclasses import replace

    from qd_perception.eval.streaming import evaluate_segments

    gt_a, out_a = sequence(car_speed=0.0, latency_ms=0.0)
    gt_b, _ = sequence(car_speed=0.0, latency_ms=0.0)
    gt_b = [replace(f, token="b" + f.token) for f in gt_b]  # same stamps, another scene
    # Scene b produced nothing: pooled recall 0.5 (paired within each scene, not across).
    r = evaluate_segments([(gt_a, out_a), (gt_b, [])])
    assert r.offline.num_samples == 20 and r.offline_missing == 10
    assert r.offline.per_class_ap["car"] == pytest.approx(40 / 90, abs=1e-6)
    with pytest.raises(ValueError, match="tokens repeat"):
        evaluate_segments([(gt_a, out_a), (gt_a, out_a)])
