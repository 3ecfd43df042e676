"""Reading rosbag2 files without ROS (``rosbags``): messages, ego poses, detections.

The replay evaluation reads the bags the simulator writes (and the recordings of the nodes'
outputs) with these: :func:`read_bag` deserializes the requested topics, :class:`PoseTrack`
interpolates the ``/odom`` ego poses at any stamp, :func:`detections_from_msg` turns a
``qd_perception/msg/Detection3DArray`` (a rosbags or an rclpy object) into :class:`Detections`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qd_perception.classes import CLASS_NAMES
from qd_perception.data.types import Detections


def open_reader(bag: str | Path):
    """An opened ``rosbags`` rosbag2 reader; clear error for a missing or non-bag path."""
    from rosbags.rosbag2 import Reader

    bag = Path(bag)
    if not (bag / "metadata.yaml").exists():
        raise FileNotFoundError(f"{bag} is not a rosbag2 directory (no metadata.yaml)")
    reader = Reader(bag)
    reader.open()
    return reader


def bag_topics(bag: str | Path) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count) of a bag."""
    reader = open_reader(bag)
    try:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
    finally:
        reader.close()


def stamp_us(header: Any) -> int:
    """A ``std_msgs/Header`` stamp in microseconds."""
    return int(header.stamp.sec) * 1_000_000 + int(header.stamp.nanosec) // 1000


def detections_from_msg(msg: Any) -> Detections:
    """``qd_perception/msg/Detection3DArray`` (a rosbags or an rclpy object) -> :class:`Detections`.

    The one message -> detections conversion (replay evaluation, the calibration recorder's
    object mix). Boxes are ``(N, 9)`` ``[x, y, z, l, w, h, yaw, vx, vy]`` in the message's
    ``header.frame_id`` (metres, radians, m/s). Raises ``ValueError`` on a ``class_id`` outside
    :data:`~qd_perception.classes.CLASS_NAMES` or a non-finite box value or score.
    """
    d = msg.detections
    boxes = np.array(
        [
            [x.box.center.x, x.box.center.y, x.box.center.z, x.box.size.x, x.box.size.y, x.box.size.z,
             x.box.yaw, x.velocity.x, x.velocity.y]
            for x in d
        ],
        np.float64,
    ).reshape(-1, 9)  # fmt: skip
    labels = np.array([x.class_id for x in d], np.int64)
    scores = np.array([x.score for x in d], np.float32)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError(f"class_id out of range in a Detection3DArray: {sorted(set(labels.tolist()))}")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError("non-finite box value or score in a Detection3DArray")
    return Detections(
        boxes,
        labels,
        scores,
        tuple(x.attribute for x in d),
        num_lidar_pts=np.array([x.num_lidar_points for x in d], np.int64),
    )


class PoseTrack:
    """Ego poses (``map`` <- ``base_link``) from ``/odom``, interpolated at any stamp (linear
    translation, slerp rotation; clamped at the ends). Identity when the bag has no odometry."""

    def __init__(self, stamps_us: np.ndarray, poses: np.ndarray) -> None:
        order = np.argsort(stamps_us, kind="stable")
        self.t = np.asarray(stamps_us, np.int64)[order]
        self.T = np.asarray(poses, np.float64)[order]
        if len(self.t) > 1:
            from scipy.spatial.transform import Rotation, Slerp

            self._slerp = Slerp(self.t.astype(np.float64), Rotation.from_matrix(self.T[:, :3, :3]))

    def __len__(self) -> int:
        return len(self.t)

    def at(self, t_us: int) -> np.ndarray:
        if len(self.t) == 0:
            return np.eye(4)
        if len(self.t) == 1:
            return self.T[0].copy()
        tc = float(np.clip(t_us, self.t[0], self.t[-1]))
        out = np.eye(4)
        out[:3, :3] = self._slerp([tc]).as_matrix()[0]
        for k in range(3):
            out[k, 3] = np.interp(tc, self.t, self.T[:, k, 3])
        return out


def read_bag(bag: Path, topics: set[str], keep: Any = None) -> dict[str, list[tuple[int, Any]]]:
    """topic -> [(log time ns, item)] for the requested topics; ``item`` is the deserialized
    message, or ``keep(topic, msg)`` when given (to keep only what is needed of large messages)."""
    from qd_perception.sim.rosmsgs import deserialize

    reader = open_reader(bag)
    out: dict[str, list[tuple[int, Any]]] = {t: [] for t in topics}
    try:
        conns = [c for c in reader.connections if c.topic in topics]
        for c, t, raw in reader.messages(connections=conns):
            msg = deserialize(raw, c.msgtype)
            out[c.topic].append((t, msg if keep is None else keep(c.topic, msg)))
    finally:
        reader.close()
    return out


def pose_track(odom_msgs: list[tuple[int, Any]]) -> PoseTrack:
    from qd_perception.geometry.transforms import transform_from_pose

    stamps, poses = [], []
    for _, m in odom_msgs:
        p, q = m.pose.pose.position, m.pose.pose.orientation
        stamps.append(stamp_us(m.header))
        poses.append(transform_from_pose(np.array([p.x, p.y, p.z]), np.array([q.w, q.x, q.y, q.z])))
    return PoseTrack(np.array(stamps, np.int64), np.array(poses).reshape(-1, 4, 4))
