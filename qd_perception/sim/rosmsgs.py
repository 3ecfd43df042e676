"""ROS 2 messages without ROS: a ``rosbags`` typestore and builders for the project's topics.

Pure Python (``rosbags``, no ``rclpy``): used by the bag writer and by the replay tool, which
publishes the raw CDR bytes through rclpy. The typestore holds the ROS 2 Kilted standard types
plus the package's own ``qd_perception/msg/*`` registered from the ``msg/*.msg`` text, so their
RIHS01 type hashes equal the ones ``rosidl`` generates (checked by the tests against the built
``share/qd_perception/msg/*.json``).

Topic names and frame ids: :mod:`qd_perception.topics` (re-exported here for the writers).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from qd_perception.classes import CLASS_NAMES
from qd_perception.geometry.transforms import matrix_to_quat
from qd_perception.paths import msg_dir
from qd_perception.topics import (  # noqa: F401  (re-exported: the bag writer's and tests' names)
    EGO_FRAME,
    GT_TOPIC,
    LIDAR_FRAME,
    LIDAR_TOPIC,
    MAP_FRAME,
    ODOM_TOPIC,
    camera_frame,
    camera_info_topic,
    camera_topic_prefix,
    image_topic,
)

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
ODOMETRY = "nav_msgs/msg/Odometry"
DETECTION3D_ARRAY = "qd_perception/msg/Detection3DArray"

#: PointCloud2 point layout: 24 bytes per point (2 bytes of padding keep ``time`` aligned).
POINT_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "intensity", "ring", "time"],
        "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
        "offsets": [0, 4, 8, 12, 16, 20],
        "itemsize": 24,
    }
)
# sensor_msgs/PointField datatype constants.
_POINTFIELD_TYPE = {"<f4": 7, "<u2": 4}


@lru_cache(maxsize=1)
def typestore() -> Any:
    """ROS 2 Kilted types + ``qd_perception/msg/*`` from the package's ``msg/`` files."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict = {}
    files = sorted(msg_dir().glob("*.msg"))
    if not files:
        raise FileNotFoundError(f"no .msg files in {msg_dir()}")
    for f in files:
        types.update(get_types_from_msg(f.read_text(), f"qd_perception/msg/{f.stem}"))
    store.register(types)
    return store


def _T(name: str) -> Any:
    return typestore().types[name]


def _stamp(t_us: int) -> Any:
    return _T("builtin_interfaces/msg/Time")(sec=int(t_us // 1_000_000), nanosec=int(t_us % 1_000_000) * 1000)


def header(t_us: int, frame_id: str) -> Any:
    return _T("std_msgs/msg/Header")(stamp=_stamp(t_us), frame_id=frame_id)


def stamp_us(msg_header: Any) -> int:
    """Header stamp -> integer microseconds."""
    return int(msg_header.stamp.sec) * 1_000_000 + int(msg_header.stamp.nanosec) // 1000


def pointcloud2(t_us: int, points: np.ndarray, point_time: np.ndarray, frame_id: str = LIDAR_FRAME) -> Any:
    """(P, 5) [x, y, z, intensity, ring] + (P,) time (s) -> ``PointCloud2`` (unordered, dense)."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 5:
        raise ValueError(f"points must be (P, 5) [x, y, z, intensity, ring], got {points.shape}")
    if len(point_time) != len(points):
        raise ValueError("point_time must have one entry per point")
    arr = np.zeros(len(points), POINT_DTYPE)
    for i, k in enumerate(("x", "y", "z", "intensity")):
        arr[k] = points[:, i]
    arr["ring"] = points[:, 4]
    arr["time"] = point_time
    PointField = _T("sensor_msgs/msg/PointField")
    fields = [
        PointField(
            name=n,
            offset=POINT_DTYPE.fields[n][1],
            datatype=_POINTFIELD_TYPE[POINT_DTYPE.fields[n][0].str],
            count=1,
        )
        for n in POINT_DTYPE.names
    ]
    return _T(POINTCLOUD2)(
        header=header(t_us, frame_id),
        height=1,
        width=len(arr),
        fields=fields,
        is_bigendian=False,
        point_step=POINT_DTYPE.itemsize,
        row_step=POINT_DTYPE.itemsize * len(arr),
        data=np.frombuffer(arr.tobytes(), np.uint8),
        is_dense=True,
    )


def pointcloud2_to_array(msg: Any) -> np.ndarray:
    """``PointCloud2`` written by :func:`pointcloud2` -> structured array of :data:`POINT_DTYPE`."""
    if msg.point_step != POINT_DTYPE.itemsize:
        raise ValueError(f"point_step {msg.point_step} != {POINT_DTYPE.itemsize}: not this layout")
    return np.frombuffer(bytes(msg.data), POINT_DTYPE)


def image(t_us: int, rgb: np.ndarray, frame_id: str) -> Any:
    """(H, W, 3) uint8 RGB -> ``Image`` (rgb8)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {rgb.shape}")
    H, W = rgb.shape[:2]
    return _T(IMAGE)(
        header=header(t_us, frame_id),
        height=H,
        width=W,
        encoding="rgb8",
        is_bigendian=0,
        step=3 * W,
        data=rgb.reshape(-1),
    )


def camera_info(t_us: int, K: np.ndarray, resolution: tuple[int, int], frame_id: str) -> Any:
    """Pinhole ``CameraInfo`` without distortion (plumb_bob, D = 0), P = [K | 0], R = I."""
    H, W = resolution
    K = np.asarray(K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    RoI = _T("sensor_msgs/msg/RegionOfInterest")
    return _T(CAMERA_INFO)(
        header=header(t_us, frame_id),
        height=H,
        width=W,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=K.reshape(-1).copy(),
        r=np.eye(3).reshape(-1),
        p=P.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def odometry(
    t_us: int, ego2global: np.ndarray, linear_velocity: np.ndarray, angular_velocity: np.ndarray
) -> Any:
    """Ego pose (``map`` <- ``base_link``) and twist in ``base_link``."""
    geo = "geometry_msgs/msg/"
    q = matrix_to_quat(ego2global[:3, :3])
    t = ego2global[:3, 3]
    pose = _T(geo + "Pose")(
        position=_T(geo + "Point")(x=float(t[0]), y=float(t[1]), z=float(t[2])),
        orientation=_T(geo + "Quaternion")(x=float(q[1]), y=float(q[2]), z=float(q[3]), w=float(q[0])),
    )
    v, w = np.asarray(linear_velocity, float), np.asarray(angular_velocity, float)
    twist = _T(geo + "Twist")(
        linear=_T(geo + "Vector3")(x=float(v[0]), y=float(v[1]), z=float(v[2])),
        angular=_T(geo + "Vector3")(x=float(w[0]), y=float(w[1]), z=float(w[2])),
    )
    return _T(ODOMETRY)(
        header=header(t_us, MAP_FRAME),
        child_frame_id=EGO_FRAME,
        pose=_T(geo + "PoseWithCovariance")(pose=pose, covariance=np.zeros(36)),
        twist=_T(geo + "TwistWithCovariance")(twist=twist, covariance=np.zeros(36)),
    )


def detection3d_array(
    t_us: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray | None = None,
    attributes: tuple[str, ...] = (),
    instance_ids: tuple[str, ...] = (),
    num_lidar_points: np.ndarray | None = None,
    frame_id: str = EGO_FRAME,
) -> Any:
    """(N, 9) boxes in ``frame_id`` + class indices -> ``qd_perception/msg/Detection3DArray``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    n = len(boxes)
    scores = np.ones(n) if scores is None else np.asarray(scores)
    geo = "geometry_msgs/msg/"
    Point, Vector3 = _T(geo + "Point"), _T(geo + "Vector3")
    Box, Det = _T("qd_perception/msg/BoundingBox3D"), _T("qd_perception/msg/Detection3D")
    dets = []
    for i in range(n):
        b = boxes[i]
        label = int(labels[i])
        dets.append(
            Det(
                box=Box(
                    center=Point(x=float(b[0]), y=float(b[1]), z=float(b[2])),
                    size=Vector3(x=float(b[3]), y=float(b[4]), z=float(b[5])),
                    yaw=float(b[6]),
                ),
                velocity=Vector3(x=float(b[7]), y=float(b[8]), z=0.0),
                class_id=label,
                class_name=CLASS_NAMES[label],
                score=float(scores[i]),
                attribute=attributes[i] if attributes else "",
                instance_id=instance_ids[i] if instance_ids else "",
                num_lidar_points=int(num_lidar_points[i]) if num_lidar_points is not None else 0,
            )
        )
    return _T(DETECTION3D_ARRAY)(header=header(t_us, frame_id), detections=dets)


def serialize(msg: Any, msgtype: str) -> bytes:
    """Message -> CDR bytes (what a bag stores and rclpy publishes raw)."""
    return bytes(typestore().serialize_cdr(msg, msgtype))


def deserialize(data: bytes, msgtype: str) -> Any:
    return typestore().deserialize_cdr(data, msgtype)
