"""The shared sensor front-end on hostile messages: every one is a counted drop, never an exception."""

from __future__ import annotations

import numpy as np
import pytest

from qd_perception.ros import convert as C
from qd_perception.ros.frontend import InputChecks, SensorFrontEnd

pytest.importorskip("sensor_msgs")
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, PointField

S = 1_000_000_000


def _cloud(pts: np.ndarray, stamp_ns: int, frame: str = "base_link"):
    a = np.zeros(len(pts), C.xyzi_dtype())
    for i, k in enumerate(("x", "y", "z", "intensity")):
        a[k] = pts[:, i]
    return C.array_to_pointcloud2(a, stamp_ns, frame)


def _frontend(now_ns: int = 0, **checks) -> tuple[SensorFrontEnd, list[str]]:
    logged: list[str] = []
    fe = SensorFrontEnd(
        InputChecks(**checks),
        np.eye(4),
        "lidar_top",
        "base_link",
        lambda k, t: logged.append(t),
        lambda: now_ns,
    )
    return fe, logged


def _odom(stamp_ns: int, pos=(0.0, 0.0, 0.0), quat=(1.0, 0.0, 0.0, 0.0), lin=(0.0, 0.0, 0.0)):
    m = Odometry()
    m.header.stamp = C.ns_to_stamp(stamp_ns)
    p, q, v = m.pose.pose.position, m.pose.pose.orientation, m.twist.twist.linear
    p.x, p.y, p.z = pos
    q.w, q.x, q.y, q.z = quat
    v.x, v.y, v.z = lin
    return m


def test_pointfield_huge_count_is_a_dropped_malformed_cloud():
    fe, logged = _frontend()
    msg = _cloud(np.ones((10, 4), np.float32), S)
    msg.fields = [PointField(name="x", offset=0, datatype=7, count=4294967295)]
    msg.point_step, msg.row_step = 12, 120
    msg.data = bytes(120)
    assert fe.cloud("lidar", msg) is None
    assert fe.bad_input == {"pointcloud_malformed": 1} and "bad_input.pointcloud_malformed=1" in logged[0]


def test_any_exception_while_decoding_is_a_drop():
    class Broken:  # a message whose attributes raise: whatever the decoder meets
        header = property(lambda self: (_ for _ in ()).throw(RuntimeError("boom")))

    fe, _ = _frontend()
    assert fe.cloud("lidar", Broken()) is None and fe.image("CAM_FRONT", Broken()) is None
    assert fe.odometry("odom", Broken()) is None and fe.camera_info("CAM_FRONT", Broken()) is None
    assert fe.bad_input == {"pointcloud_malformed": 1, "image_malformed": 1, "odometry_malformed": 1,
                            "camera_info_malformed": 1}  # fmt: skip


def test_reasons_come_from_exception_types():
    fe, _ = _frontend(max_points=100)
    assert fe.cloud("lidar", _cloud(np.ones((101, 4), np.float32), S)) is None
    msg = _cloud(np.ones((5, 4), np.float32), 2 * S)
    msg.fields = [f for f in msg.fields if f.name != "z"]
    assert fe.cloud("lidar", msg) is None
    assert fe.bad_input == {"pointcloud_too_large": 1, "pointcloud_missing_field": 1}


def test_padded_rows_vectorised():
    pts = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    msg = _cloud(pts, S)
    msg.height, msg.width, msg.row_step = 2, 3, 3 * 16 + 5
    data = bytes(msg.data)
    msg.data = data[:48] + b"\xff" * 5 + data[48:]  # the last row without its padding
    out = C.pointcloud2_to_array(msg)
    np.testing.assert_array_equal(np.stack([out[k] for k in ("x", "y", "z", "intensity")], 1), pts)


def test_absurd_coordinates_removed_and_counted():
    fe, _ = _frontend()
    pts = np.ones((6, 4), np.float32)
    pts[:4, 0] = 8.8e29
    _, xyzi = fe.cloud("lidar", _cloud(pts, S))
    assert len(xyzi) == 2 and fe.stats["out_of_range_points"] == 4
    all_far = np.full((6, 4), 8.8e29, np.float32)
    assert fe.cloud("lidar", _cloud(all_far, 2 * S)) is None and fe.bad_input["pointcloud_empty"] == 1


@pytest.mark.parametrize(
    "k,reason",
    [((1e300, 0, 800, 0, 1e300, 450, 0, 0, 1), "camera_info_out_of_range"),
     ((float("nan"), 0, 800, 0, 1000, 450, 0, 0, 1), "camera_info_malformed"),
     ((1000, 0, 800, 5, 1000, 450, 0, 0, 1), "camera_info_malformed")],
)  # fmt: skip
def test_camera_info_refused(k, reason):
    fe, _ = _frontend()
    msg = CameraInfo(height=900, width=1600)
    msg.k = [float(v) for v in k]
    assert fe.camera_info("CAM_FRONT", msg) is None and fe.bad_input == {reason: 1}
    msg.k = [1000.0, 0.0, 800.0, 0.0, 1000.0, 450.0, 0.0, 0.0, 1.0]
    K, hw = fe.camera_info("CAM_FRONT", msg)
    assert hw == (900, 1600) and K[0, 0] == 1000.0


@pytest.mark.parametrize(
    "kw,reason",
    [({"pos": (1e300, 0.0, 0.0)}, "odometry_out_of_range"),
     ({"lin": (float("nan"), 0.0, 0.0)}, "odometry_malformed"),
     ({"lin": (float("inf"), 0.0, 0.0)}, "odometry_malformed"),
     ({"lin": (1e4, 0.0, 0.0)}, "odometry_out_of_range"),
     ({"quat": (1e200, 1e200, 0.0, 0.0)}, "odometry_malformed"),  # its norm overflows
     ({"quat": (0.5, 0.0, 0.0, 0.0)}, "odometry_malformed")],
)  # fmt: skip
def test_odometry_refused(kw, reason):
    fe, _ = _frontend()
    assert fe.odometry("odom", _odom(S, **kw)) is None and fe.bad_input == {reason: 1}
    stamp, (T, _, _) = fe.odometry("odom", _odom(S))
    assert np.allclose(T, np.eye(4)) and stamp == S


def test_future_stamp_does_not_move_the_horizon():
    fe, _ = _frontend()
    pts = np.ones((10, 4), np.float32)
    t = 100 * S
    for _ in range(5):
        t += S // 10
        assert fe.cloud("lidar", _cloud(pts, t)) is not None
    assert fe.cloud("lidar", _cloud(pts, t + 9 * S // 10)) is None  # one cloud +0.9 s
    assert fe.bad_input == {"pointcloud_stamp_future": 1}
    assert fe.cloud("lidar", _cloud(pts, t + S // 10)) is not None  # the real next sweep
    # a real shift of the stream (several in a row) is followed after future_resync of them
    t += 8 * S // 10
    got = [fe.cloud("lidar", _cloud(pts, t + i * S // 10)) is not None for i in range(4)]
    assert got == [False, False, True, True]
    # beyond the synchroniser's jump threshold: a clock jump, accepted (the synchroniser resets)
    assert fe.cloud("lidar", _cloud(pts, t + 50 * S)) is not None


def test_stamp_ahead_of_node_clock_refused():
    fe, _ = _frontend(now_ns=1000 * S)
    pts = np.ones((10, 4), np.float32)
    assert fe.cloud("lidar", _cloud(pts, 1000 * S + 9 * S // 10)) is None
    assert fe.cloud("lidar", _cloud(pts, 1000 * S)) is not None
    assert fe.bad_input == {"pointcloud_stamp_future": 1}
    # a sensor clock 2 s ahead of this machine's: refused future_resync - 1 times, then followed
    got = [fe.odometry("odom", _odom(1002 * S + k * S // 10)) is not None for k in range(5)]
    assert got == [False, False, True, True, True]
