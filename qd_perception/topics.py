"""Topic names and frame ids of the vehicle interface: the one place both the simulator (bags) and
the ROS nodes (subscriptions, publications, launch remaps, replay) take them from.

Pure (no ROS, no rosbags). Sensing topics, as on a nuScenes-like vehicle:

* ``/sensing/lidar/top/points``: ``sensor_msgs/PointCloud2`` in frame ``lidar_top`` (the lidar
  sensor frame, ``rig.lidar2ego()``); fields x, y, z, intensity (float32), ring (uint16),
  time (float32, seconds relative to the header stamp).
* ``/sensing/camera/<cam_front>/image_raw`` (``Image``, rgb8) and ``.../camera_info``
  (``CameraInfo``) in frame ``<cam_front>_optical`` (x right, y down, z forward; ``rig.cam2ego``).
* ``/odom``: ``nav_msgs/Odometry``, frame ``map`` (nuScenes' global frame), child ``base_link``;
  twist in ``base_link`` as REP-105 says.
* ``/ground_truth/detections``: ``qd_perception/msg/Detection3DArray`` in ``base_link`` stamped
  with the lidar sweep time (simulated bags only).

A detector node publishes on its private ``~/output/*`` topics (:data:`DETECTIONS_OUTPUT`, ...);
who listens to a node (the replay, the calibration recorder) resolves them with
:func:`qd_perception.ros.graph.output_topic`, which honours the graph's remaps.
"""

from __future__ import annotations

LIDAR_TOPIC = "/sensing/lidar/top/points"
ODOM_TOPIC = "/odom"
GT_TOPIC = "/ground_truth/detections"
MAP_FRAME = "map"
EGO_FRAME = "base_link"
LIDAR_FRAME = "lidar_top"

#: A detector node's outputs, relative to the node (``~`` = ``/<node name>``).
DETECTIONS_OUTPUT = "~/output/detections"
MARKERS_OUTPUT = "~/output/markers"
DIAGNOSTICS_OUTPUT = "~/output/diagnostics"


def camera_topic_prefix(camera: str) -> str:
    """``CAM_FRONT`` -> ``/sensing/camera/cam_front``."""
    return f"/sensing/camera/{camera.lower()}"


def image_topic(camera: str) -> str:
    """``CAM_FRONT`` -> ``/sensing/camera/cam_front/image_raw``."""
    return f"{camera_topic_prefix(camera)}/image_raw"


def camera_info_topic(camera: str) -> str:
    """``CAM_FRONT`` -> ``/sensing/camera/cam_front/camera_info``."""
    return f"{camera_topic_prefix(camera)}/camera_info"


def camera_frame(camera: str) -> str:
    """Optical frame id of a rig camera: ``CAM_FRONT`` -> ``cam_front_optical``."""
    return f"{camera.lower()}_optical"


def node_topic(node: str, private: str) -> str:
    """A private topic of ``node`` as an absolute name: ``("lidar_detector", "~/output/x")`` ->
    ``/lidar_detector/output/x`` (node in the root namespace)."""
    if not private.startswith("~/"):
        raise ValueError(f"not a private topic name: {private!r}")
    return f"/{node}/{private[2:]}"
