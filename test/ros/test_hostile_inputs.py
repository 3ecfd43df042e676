"""Bounded fuzz of the real detector node processes with hostile messages (docs/ros.md, bad
inputs): hundreds of malformed clouds, odometry, images and camera infos; the nodes stay alive,
count what they drop, keep their logs small, and still detect on the valid frames that follow."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ros_harness import NodeProcess, diag_values
from test_detector_node import (
    LIDAR_T,
    ODOM_T,
    Harness,
    car_cloud,
    cloud_msg,
    image_msg,
    node_args,
    odom_msg,
)

S = 10**9


def _publish_paced(driver, topic: str, msgs: list) -> None:
    """Publish with a little spinning in between (best-effort QoS: a burst would overflow queues)."""
    for k, m in enumerate(msgs):
        driver.publish(topic, m)
        if k % 10 == 9:
            driver.spin(0.01)


def _hostile_clouds(rng: np.random.Generator, t0: int, n: int) -> list:
    """``n`` malformed clouds of every kind, stamps from ``t0`` on (each gets its own)."""
    from sensor_msgs.msg import PointField

    pts = car_cloud(rng)
    out = []
    for k in range(n):
        stamp = t0 + k * 1_000_000
        kind = k % 8
        m = cloud_msg(pts[:10], stamp)
        if kind == 0:  # the count that made numpy raise ValueError
            m.fields = [PointField(name="x", offset=0, datatype=7, count=4294967295)]
            m.width, m.point_step, m.row_step, m.data = 10, 12, 120, bytes(120)
        elif kind == 1:  # random layout: datatypes, offsets, counts, steps, sizes
            m.fields = [
                PointField(name=nm, offset=int(rng.integers(0, 64)), datatype=int(rng.integers(0, 12)),
                           count=int(rng.integers(0, 2**32)))
                for nm in ("x", "y", "z")
            ]  # fmt: skip
            m.height, m.width = int(rng.integers(0, 2**31)), int(rng.integers(0, 2**31))
            m.point_step, m.row_step = int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))
            m.data = rng.bytes(int(rng.integers(0, 512)))
        elif kind == 2:  # truncated
            m.data = bytes(m.data)[: int(rng.integers(0, len(m.data)))]
        elif kind == 3:
            m = cloud_msg(pts[:10], stamp, drop_field="z")
        elif kind == 4:  # all NaN
            m = cloud_msg(np.full((20, 4), np.nan, np.float32), stamp, frame="base_link")
        elif kind == 5:  # coordinates of ~8.8e29 m
            m = cloud_msg(np.full((20, 4), 8.8e29, np.float32), stamp, frame="base_link")
        elif kind == 6:  # a 10 kB frame id (echoed in the warning: truncated)
            m = cloud_msg(pts[:10], stamp, frame="x" * 10_000)
        else:  # more points than input_checks.max_points (set to 6000 below)
            m = cloud_msg(np.tile(pts[:1], (7000, 1)), stamp)
        out.append(m)
    return out


def _hostile_odometry(t0: int, n: int) -> list:
    out = []
    for k in range(n):
        m = odom_msg(t0 + k * 1_000_000)
        kind = k % 5
        if kind == 0:
            m.pose.pose.position.x = 1e300
        elif kind == 1:
            m.twist.twist.linear.x = float("nan")
        elif kind == 2:
            m.twist.twist.angular.z = float("inf")
        elif kind == 3:  # norm overflows to inf (was silently the identity)
            m.pose.pose.orientation.w = m.pose.pose.orientation.x = 1e200
        else:
            m.pose.pose.orientation.w = 0.0
        out.append(m)
    return out


@pytest.fixture(scope="module")
def fuzz_lidar(driver, tmp_path_factory):
    log = tmp_path_factory.mktemp("fuzz") / "lidar.log"
    proc = NodeProcess.module(
        "qd_perception.ros.nodes.lidar_detector",
        node_args(["-p", "input_checks.max_points:=6000"], name="fuzz_lidar"),
        log,
    )
    h = Harness(driver, proc, name="fuzz_lidar")
    driver.publisher(type(odom_msg(0)), ODOM_T)
    assert driver.wait_for_subscribers(ODOM_T)
    yield h, log
    assert proc.stop() == 0, proc.output()[-2000:]


def test_lidar_node_survives_hundreds_of_hostile_messages(fuzz_lidar):
    h, log = fuzz_lidar
    h.good_frame()
    size0 = os.path.getsize(log)
    rng = np.random.default_rng(16)
    clouds = _hostile_clouds(rng, h.t + S // 2, 400)
    odoms = _hostile_odometry(h.t + S // 2, 200)
    _publish_paced(h.d, LIDAR_T, clouds)
    _publish_paced(h.d, ODOM_T, odoms)
    assert h.proc.alive(), h.proc.output()[-3000:]
    # every kind is counted under its own reason; best effort may lose a few, never invent any
    want = ["pointcloud_malformed", "pointcloud_missing_field", "pointcloud_empty", "pointcloud_frame",
            "pointcloud_too_large", "odometry_malformed", "odometry_out_of_range"]  # fmt: skip
    assert h.d.spin_until(lambda: all(h.diag(f"bad_input.{r}") > 0 for r in want), 20), h.diags[-1]
    d = diag_values(h.diags[-1])
    total = sum(int(v) for k, v in d.items() if k.startswith("bad_input."))
    assert 0.5 * (len(clouds) + len(odoms)) <= total <= len(clouds) + len(odoms)
    assert int(d["out_of_range_points"]) > 0 and int(d["detector_errors"]) == 0
    # throttled, truncated warnings: 600 bad messages cost a few kB of log, not megabytes
    assert os.path.getsize(log) - size0 < 64_000, os.path.getsize(log) - size0
    assert "x" * 100 not in h.proc.output()
    # valid frames (stamps after the hostile ones) still give detections
    h.t += S
    for _ in range(3):
        assert len(h.good_frame().detections) >= 1


def test_future_stamps_do_not_blind_the_lidar_node(fuzz_lidar):
    h, _ = fuzz_lidar
    h.good_frame()
    before = h.diag("bad_input.pointcloud_stamp_future")
    for _ in range(10):  # one cloud +0.9 s ahead before every real sweep
        h.d.publish(LIDAR_T, cloud_msg(car_cloud(h.rng), h.t + 9 * S // 10))
        assert len(h.good_frame().detections) >= 1
    assert h.diag("bad_input.pointcloud_stamp_future") >= before + 5


def test_read_only_parameters_refused(fuzz_lidar):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    h, _ = fuzz_lidar
    client = h.d.node.create_client(SetParameters, "/fuzz_lidar/set_parameters")
    assert client.wait_for_service(timeout_sec=10)
    req = SetParameters.Request(
        parameters=[Parameter(name="detector.name", value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                                          string_value="bev"))]
    )  # fmt: skip
    fut = client.call_async(req)
    assert h.d.spin_until(fut.done, 10)
    result = fut.result().results[0]
    assert not result.successful and "read-only" in result.reason
    h.d.node.destroy_client(client)


def test_camera_node_not_blinded_by_one_bad_camera_info_or_odometry(driver, tmp_path):
    """bev_detector (real camera model): K of 1e300, NaN K, position 1e300 are dropped and
    counted; frames after them still give boxes (they gave 0 boxes until a restart)."""
    torch = pytest.importorskip("torch")
    from diagnostic_msgs.msg import DiagnosticArray
    from qd_perception.msg import Detection3DArray
    from sensor_msgs.msg import CameraInfo

    from qd_perception.models.bevformer import BEVFormer, preset
    from qd_perception.models.bevformer.checkpoint import save_checkpoint
    from qd_perception.ros.node_config import DEFAULT_CAMERAS

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "nano.pt", BEVFormer(preset("nano")).eval())
    args = [
        "-r", "~/input/odom:=/hb/odom", "-p", f"detector.model_path:={ckpt}",
        "-p", "detector.score_threshold:=0.0", "-p", "diagnostics_period_s:=0.3",
    ]  # fmt: skip
    for c in DEFAULT_CAMERAS:
        args += ["-r", f"~/input/{c.lower()}/image:=/hb/{c.lower()}/image"]
        args += ["-r", f"~/input/{c.lower()}/camera_info:=/hb/{c.lower()}/camera_info"]
    proc = NodeProcess.module("qd_perception.ros.nodes.bev_detector", args, tmp_path / "bev.log")
    try:
        dets = driver.record(Detection3DArray, "/bev_detector/output/detections")
        diags = driver.record(DiagnosticArray, "/bev_detector/output/diagnostics")
        assert proc.wait_output("detector 'bev'", 90), proc.output()[-3000:]
        for c in DEFAULT_CAMERAS:
            driver.publish(f"/hb/{c.lower()}/image", image_msg(1, c, hw=(128, 224)))
            driver.publish(f"/hb/{c.lower()}/camera_info", CameraInfo())
            assert driver.wait_for_subscribers(f"/hb/{c.lower()}/image")
            assert driver.wait_for_subscribers(f"/hb/{c.lower()}/camera_info")
        driver.publish("/hb/odom", odom_msg(0))
        assert driver.wait_for_subscribers("/hb/odom")
        driver.spin(0.5)
        # the hostile messages: a few hundred camera infos and odometry
        bad_infos = []
        for k in range(300):
            info = CameraInfo(height=128, width=224)
            K = [1e300, 0.0, 112.0, 0.0, 1e300, 64.0, 0.0, 0.0, 1.0] if k % 3 else [float("nan")] * 9
            if k % 3 == 2:
                K = [100.0, 0.0, 112.0, 0.0, 100.0, 64.0, 0.0, 0.0, 0.0]  # not a pinhole matrix
            info.k = K
            bad_infos.append((f"/hb/{DEFAULT_CAMERAS[k % 6].lower()}/camera_info", info))
        for k, (topic, info) in enumerate(bad_infos):
            driver.publish(topic, info)
            if k % 10 == 9:
                driver.spin(0.01)
        _publish_paced(driver, "/hb/odom", _hostile_odometry(40 * S, 200))

        def bad(reason: str) -> int:
            return int(diag_values(diags[-1]).get(f"bad_input.{reason}", 0)) if diags else 0

        assert driver.spin_until(
            lambda: bad("camera_info_out_of_range") > 0 and bad("camera_info_malformed") > 0
            and bad("odometry_out_of_range") > 0, 20
        ), diags[-1] if diags else proc.output()[-3000:]  # fmt: skip
        stamps, with_boxes = [], []
        for k in range(6):
            t = (50 + k) * S
            driver.publish("/hb/odom", odom_msg(t, x=float(k)))
            for i, c in enumerate(DEFAULT_CAMERAS):
                driver.publish(f"/hb/{c.lower()}/image", image_msg(t + i * 1_000_000, c, hw=(128, 224)))
            stamps.append(t)
            driver.spin_until(lambda t=t: any(m.header.stamp.sec * S == t for m in dets), 10)
            with_boxes = [m for m in dets if m.header.stamp.sec * S in stamps and len(m.detections) > 0]
            if len(with_boxes) >= 2:  # the second one used the temporal state
                break
        assert len(with_boxes) >= 2, proc.output()[-3000:]
        assert proc.alive()
        assert int(diag_values(diags[-1]).get("detector_errors", 0)) == 0
    finally:
        assert proc.stop(timeout=20) == 0, proc.output()[-2000:]


@pytest.mark.parametrize("content", [b"\x00" * 64, b"PK\x03\x04 truncated zip"], ids=["random", "truncated"])
def test_corrupt_model_file_is_a_configuration_error(tmp_path, content):
    bad = tmp_path / "model.pt"
    bad.write_bytes(content)
    proc = NodeProcess.module(
        "qd_perception.ros.nodes.bev_detector", ["-p", f"detector.model_path:={bad}"], tmp_path / "bad.log"
    )
    rc = proc.proc.wait(60)
    proc.stop()
    out = proc.output()
    assert rc == 2, out[-2000:]
    line = [ln for ln in out.splitlines() if "configuration error" in ln]
    assert len(line) == 1 and str(bad) in line[0] and "Traceback" not in out


def test_recorder_applies_the_detector_checks(driver, tmp_path):
    """calibration_recorder: the cloud that killed it and clouds at ~8.8e29 m are dropped or
    cleaned and counted; the stored set holds only plausible frames."""
    import json

    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import String
    from test_calibration_recorder import LIDAR_T as REC_T
    from test_calibration_recorder import NODE as REC
    from test_calibration_recorder import start_node

    from qd_perception.data.calib_store import CalibrationSet

    out_dir = tmp_path / "calib"
    node = start_node(tmp_path, out_dir, "h", **{"sweeps.max_sweeps": 1, "use_odometry": False,
                                                 "detections_wait_s": 0.0})  # fmt: skip
    try:
        status: list = driver.record(String, f"/{REC}/status")
        driver.publisher(PointCloud2, REC_T)
        assert driver.wait_for_subscribers(REC_T, timeout=60), node.output()
        driver.spin(1.0)
        rng = np.random.default_rng(3)
        t0 = 2000 * S
        _publish_paced(driver, REC_T, _hostile_clouds(rng, t0, 200))

        def last() -> dict:
            return json.loads(status[-1].data) if status else {}

        # Best-effort QoS: the burst above may still fill the node's queue, so a frame that must
        # arrive is sent again (new stamp) until the node's counters show it was processed.
        half = car_cloud(rng)
        half[: len(half) // 2, 0] = 8.8e29  # half the points absurd: removed, the rest kept
        t = t0 + S
        assert driver.spin_until(lambda: bool(last()), 20), node.output()[-3000:]

        def far() -> int:
            return int(last().get("out_of_range_points", 0))

        seen = far()
        for _ in range(20):
            t += S // 10
            driver.publish(REC_T, cloud_msg(half, t))
            if driver.spin_until(lambda: far() >= seen + len(half) // 2, 2):
                break
        assert far() >= seen + len(half) // 2, (last(), node.output()[-3000:])
        for _ in range(40):
            t += S // 10
            driver.publish(REC_T, cloud_msg(car_cloud(rng), t))
            if driver.spin_until(lambda: last().get("stored", 0) >= 3, 0.5):
                break
        s = last()
        assert s.get("stored", 0) >= 3, (s, node.output()[-3000:])
        assert node.alive()
        assert s["bad_input.pointcloud_malformed"] > 0 and s["bad_input.pointcloud_empty"] > 0, s
    finally:
        assert node.stop() == 0, node.output()[-2000:]
    cs = CalibrationSet(out_dir)
    assert len(cs) >= 3 and all(np.abs(f.points[:, :3]).max() < 1000 for f in cs)
