"""Message <-> numpy conversions: layouts, endianness, padding, validation errors; identical to
sensor_msgs_py / cv_bridge where those exist (full ROS installs; skipped here with a reason)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from qd_perception.data.rosbag import detections_from_msg
from qd_perception.data.types import Detections
from qd_perception.ros import convert as C
from qd_perception.ros.markers import detections_to_markers

LAYOUTS = {
    "packed": np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")]),
    "padded": np.dtype(
        {
            "names": ["x", "y", "z", "intensity", "ring"],
            "formats": ["<f4"] * 4 + ["<u2"],
            "offsets": [0, 4, 8, 16, 20],
            "itemsize": 32,
        }
    ),
    "big_endian_f8": np.dtype([("z", ">f8"), ("x", ">f8"), ("y", ">f8"), ("i", ">u1")]),
    "vector_field": np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u1", (3,))]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_pointcloud2_roundtrip_any_layout(layout):
    dt = LAYOUTS[layout]
    rng = np.random.default_rng(0)
    arr = np.zeros(100, dt)
    for name in dt.names:
        arr[name] = rng.uniform(0, 50, arr[name].shape)
    msg = C.array_to_pointcloud2(arr, 123_456_789_000, "lidar_top")
    assert msg.point_step == dt.itemsize and msg.is_bigendian == (layout == "big_endian_f8")
    back = C.pointcloud2_to_array(msg)
    for name in dt.names:
        np.testing.assert_array_equal(back[name], arr[name])
    xyzi, n_bad = C.pointcloud2_to_xyzi(msg)
    np.testing.assert_allclose(xyzi[:, :3], np.stack([arr["x"], arr["y"], arr["z"]], 1), rtol=1e-6)
    assert n_bad == 0
    assert C.stamp_to_ns(msg.header.stamp) == 123_456_789_000


def test_pointcloud2_row_padding_and_organised_cloud():
    dt = LAYOUTS["packed"]
    grid = np.zeros((4, 5), dt)
    grid["x"] = np.arange(20).reshape(4, 5)
    msg = C.array_to_pointcloud2(grid.reshape(-1), 0, "l")
    row = 5 * dt.itemsize
    padded = b"".join(bytes(msg.data)[r * row : (r + 1) * row] + b"\xee" * 8 for r in range(4))
    msg.height, msg.width, msg.row_step = 4, 5, row + 8
    msg.data = padded
    np.testing.assert_array_equal(C.pointcloud2_to_array(msg)["x"], np.arange(20))


def test_pointcloud2_validation_errors():
    arr = np.zeros(10, LAYOUTS["packed"])
    good = C.array_to_pointcloud2(arr, 0, "l")
    cases = []
    m = C.array_to_pointcloud2(arr, 0, "l")
    m.data = bytes(m.data)[:-5]
    cases.append((m, "truncated"))
    m = C.array_to_pointcloud2(arr, 0, "l")
    m.point_step = 12
    cases.append((m, "beyond point_step"))
    m = C.array_to_pointcloud2(arr, 0, "l")
    m.fields[1].datatype = 42
    cases.append((m, "unknown datatype"))
    m = C.array_to_pointcloud2(arr, 0, "l")
    m.row_step = 8
    cases.append((m, "row_step"))
    m = C.array_to_pointcloud2(arr[["x", "y", "intensity"]], 0, "l")
    cases.append((m, "no field 'z'"))
    for msg, text in cases:
        with pytest.raises(C.ConvertError, match=text):
            C.pointcloud2_to_xyzi(msg)
    assert len(C.pointcloud2_to_xyzi(good)[0]) == 10


def test_nonfinite_points_are_removed_and_counted():
    arr = np.zeros(6, LAYOUTS["packed"])
    arr["x"][[1, 4]] = [np.nan, np.inf]
    xyzi, n_bad = C.pointcloud2_to_xyzi(C.array_to_pointcloud2(arr, 0, "l"))
    assert n_bad == 2 and len(xyzi) == 4


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1"])
def test_image_roundtrip_and_rgb(enc):
    ch, code = C.IMAGE_ENCODINGS[enc]
    rng = np.random.default_rng(1)
    shape = (7, 9) if ch == 1 else (7, 9, ch)
    arr = (rng.uniform(0, 200, shape)).astype(code)
    msg = C.numpy_to_image(arr, enc, 5, "cam")
    np.testing.assert_array_equal(C.image_to_numpy(msg), arr)
    if enc in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        rgb = C.image_to_rgb8(msg)
        assert rgb.shape == (7, 9, 3) and rgb.dtype == np.uint8
        expect = {
            "rgb8": arr,
            "bgr8": arr[..., ::-1],
            "rgba8": arr[..., :3],
            "bgra8": arr[..., 2::-1],
            "mono8": np.repeat(arr[..., None], 3, 2),
        }[enc]
        np.testing.assert_array_equal(rgb, expect)
    else:
        with pytest.raises(C.ConvertError, match="not a colour image"):
            C.image_to_rgb8(msg)


def test_image_step_padding_big_endian_and_errors():
    arr = np.arange(12, dtype=">u2").reshape(3, 4)
    msg = C.numpy_to_image(arr, "16UC1", 0, "c")
    assert msg.is_bigendian == 1
    np.testing.assert_array_equal(C.image_to_numpy(msg), arr)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = C.numpy_to_image(rgb, "rgb8", 0, "c")
    msg.data = b"".join(rgb[r].tobytes() + b"\0\0\0" for r in range(2))
    msg.step = 12
    np.testing.assert_array_equal(C.image_to_rgb8(msg), rgb)
    bad = C.numpy_to_image(rgb, "rgb8", 0, "c")
    bad.encoding = "yuv422"
    with pytest.raises(C.ConvertError, match="unsupported image encoding"):
        C.image_to_numpy(bad)
    bad = C.numpy_to_image(rgb, "rgb8", 0, "c")
    bad.data = bytes(bad.data)[:-1]
    with pytest.raises(C.ConvertError, match="expected height"):
        C.image_to_numpy(bad)
    with pytest.raises(C.ConvertError, match="does not match encoding"):
        C.numpy_to_image(rgb, "mono8", 0, "c")


def test_camera_info_odometry_and_detections():
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(height=450, width=800)
    info.k = [600.0, 0.0, 400.0, 0.0, 600.0, 225.0, 0.0, 0.0, 1.0]
    K, hw = C.camera_info_to_K(info)
    assert hw == (450, 800) and K[0, 2] == 400
    info.k = [0.0] * 9
    with pytest.raises(C.ConvertError, match="invalid K"):
        C.camera_info_to_K(info)
    od = Odometry()
    od.pose.pose.position.x = 3.0
    od.pose.pose.orientation.z, od.pose.pose.orientation.w = np.sin(0.25), np.cos(0.25)
    od.twist.twist.linear.x = 5.0
    T, v, _w = C.odometry_to_pose(od)
    assert T[0, 3] == 3.0 and np.arctan2(T[1, 0], T[0, 0]) == pytest.approx(0.5) and v[0] == 5.0
    od.pose.pose.orientation.w = 0.0
    od.pose.pose.orientation.z = 0.0
    with pytest.raises(C.ConvertError, match="quaternion"):
        C.odometry_to_pose(od)

    boxes = np.array([[10, 2, 1, 4.5, 1.9, 1.7, 0.3, 5, 0], [3, -4, 0.9, 0.7, 0.7, 1.8, -2, 0, 1]], float)
    dets = Detections(boxes, np.array([0, 8]), np.array([0.9, 0.4], np.float32), ("vehicle.moving", ""))
    msg = C.detections_to_msg(dets, 7_000_000_123, "base_link")
    assert msg.header.frame_id == "base_link" and C.stamp_to_ns(msg.header.stamp) == 7_000_000_123
    assert [d.class_name for d in msg.detections] == ["car", "pedestrian"]
    back = detections_from_msg(msg)
    np.testing.assert_allclose(back.boxes, boxes)
    assert back.attributes == dets.attributes and list(back.labels) == [0, 8]
    # the one conversion's checks, also for the rclpy message objects the recorder receives
    msg.detections[1].class_id = 99
    with pytest.raises(ValueError, match="class_id out of range"):
        detections_from_msg(msg)
    msg.detections[1].class_id = 8
    msg.detections[0].box.yaw = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        detections_from_msg(msg)
    mk = detections_to_markers(dets, msg.header.stamp).markers
    assert mk[0].action == 3 and len(mk) == 1 + 2 * 2  # DELETEALL, then box + label per detection
    assert mk[1].type == mk[1].LINE_LIST and len(mk[1].points) == 24
    assert mk[2].text == "car 0.90 | 5.0 m/s"
    assert len(detections_to_markers(Detections.empty(), msg.header.stamp).markers) == 1


@pytest.mark.skipif(
    importlib.util.find_spec("sensor_msgs_py") is None,
    reason="sensor_msgs_py is not on PyPI (full ROS 2 installs only)",
)
def test_identical_to_sensor_msgs_py():
    from sensor_msgs_py import point_cloud2

    for dt in LAYOUTS.values():
        if any(dt[n].shape for n in dt.names):
            continue  # count > 1 fields: read_points_numpy does not support them
        arr = np.zeros(20, dt)
        for n in dt.names:
            arr[n] = np.arange(20)
        msg = C.array_to_pointcloud2(arr, 0, "l")
        theirs = point_cloud2.read_points(msg, skip_nans=False)
        ours = C.pointcloud2_to_array(msg)
        for n in dt.names:
            np.testing.assert_array_equal(np.asarray(theirs[n]), ours[n])


@pytest.mark.skipif(
    importlib.util.find_spec("cv_bridge") is None or importlib.util.find_spec("cv_bridge.boost") is None,
    reason="ROS 2 cv_bridge is not on PyPI (the PyPI 'cv-bridge' is ROS 1 code)",
)
def test_identical_to_cv_bridge():
    from cv_bridge import CvBridge

    bridge = CvBridge()
    rng = np.random.default_rng(2)
    for enc in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1"):
        ch, code = C.IMAGE_ENCODINGS[enc]
        arr = rng.uniform(0, 200, (5, 6) if ch == 1 else (5, 6, ch)).astype(code)
        ours = C.numpy_to_image(arr, enc, 0, "c")
        theirs = bridge.cv2_to_imgmsg(arr, encoding=enc)
        assert bytes(ours.data) == bytes(theirs.data) and ours.step == theirs.step
        np.testing.assert_array_equal(C.image_to_numpy(theirs), bridge.imgmsg_to_cv2(ours))


def test_message_filters_style_synchronizer_over_real_topics(driver):
    """Our Subscriber + ApproximateTimeSynchronizer (message_filters' interface) on real topics;
    message_filters.Subscriber is accepted the same way where it exists."""
    from sensor_msgs.msg import Image

    from qd_perception.ros.sync import ApproximateTimeSynchronizer, Subscriber

    subs = [Subscriber(driver.node, Image, f"/t/mf/in{k}") for k in range(3)]
    sync = ApproximateTimeSynchronizer(subs, queue_size=5, slop=0.01)
    sets: list[tuple] = []
    sync.registerCallback(lambda *msgs: sets.append(tuple(C.stamp_to_ns(m.header.stamp) for m in msgs)))
    img = np.zeros((2, 2, 3), np.uint8)
    for k in range(3):
        driver.publish(f"/t/mf/in{k}", C.numpy_to_image(img, "rgb8", 1, "c"))
        assert driver.wait_for_subscribers(f"/t/mf/in{k}")
    driver.spin(0.3)
    want = [(t, t + 1_000_000, t + 2_000_000) for t in (1_000_000_000, 2_000_000_000)]
    for t in want:
        for k in range(3):
            driver.publish(f"/t/mf/in{k}", C.numpy_to_image(img, "rgb8", t[k], "c"))
        driver.spin(0.2)
    assert driver.spin_until(lambda: all(w in sets for w in want), 5), sets
    assert sync.policy.counters.sets >= 2
