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

The nodes subscribe to private ``~/input/*`` topics (:data:`POINTCLOUD_INPUT`, :func:`image_input`,
...) that the launch graphs (:mod:`qd_perception.ros.graph`) remap to the sensing topics, and a
detector node publishes on its private ``~/output/*`` topics (:data:`DETECTIONS_OUTPUT`, ...);
who listens to a node (the replay, the calibration recorder) resolves them with
:func:`qd_perception.ros.graph.output_topic`, which honours the graph's remaps. Each node's
interface (name, type, what it carries) is :data:`DETECTOR_PORTS` / :data:`RECORDER_PORTS`, from
which the topic tables of docs/ros.md are generated (``python -m qd_perception.ros.param_files``).
"""

from __future__ import annotations

from dataclasses import dataclass

LIDAR_TOPIC = "/sensing/lidar/top/points"
ODOM_TOPIC = "/odom"
GT_TOPIC = "/ground_truth/detections"
MAP_FRAME = "map"
EGO_FRAME = "base_link"
LIDAR_FRAME = "lidar_top"

#: A node's sensor inputs, relative to the node (``~`` = ``/<node name>``; cameras:
#: :func:`image_input`, :func:`camera_info_input`).
POINTCLOUD_INPUT = "~/input/pointcloud"
ODOM_INPUT = "~/input/odom"
#: A detector node's outputs, relative to the node.
DETECTIONS_OUTPUT = "~/output/detections"
MARKERS_OUTPUT = "~/output/markers"
DIAGNOSTICS_OUTPUT = "~/output/diagnostics"
#: The calibration recorder's own interface: a detector's output (object mix), status, trigger.
DETECTIONS_INPUT = "~/input/detections"
STATUS_OUTPUT = "~/status"
RUN_PTQ_SERVICE = "~/run_ptq"
#: Stands for a camera's lower-case name in :class:`Port` names (``~/input/<cam>/image``).
CAMERA = "<cam>"


def image_input(camera: str) -> str:
    """A node's image input of ``camera``: ``CAM_FRONT`` -> ``~/input/cam_front/image``."""
    return f"~/input/{camera.lower()}/image"


def camera_info_input(camera: str) -> str:
    """``CAM_FRONT`` -> ``~/input/cam_front/camera_info``."""
    return f"~/input/{camera.lower()}/camera_info"


@dataclass(frozen=True)
class Port:
    """One topic or service of a node, relative to the node (a row of docs/ros.md's tables).

    name: private name; :data:`CAMERA` stands for each camera's lower-case name.
    type: the ROS interface type (``sensor_msgs/msg/PointCloud2``, ``std_srvs/srv/Trigger``).
    role: ``input`` (subscribed), ``output`` (published) or ``service``.
    note: what it carries (frame, encoding, when), markdown.
    """

    name: str
    type: str
    role: str
    note: str = ""


SENSOR_PORTS: tuple[Port, ...] = (
    Port(POINTCLOUD_INPUT, "sensor_msgs/msg/PointCloud2", "input", "frame `lidar_frame` or `frame_id`"),
    Port(
        image_input(CAMERA),
        "sensor_msgs/msg/Image",
        "input",
        "per camera of `cameras` when cameras are an input; rgb8, bgr8, rgba8, bgra8 or mono8",
    ),
    Port(camera_info_input(CAMERA), "sensor_msgs/msg/CameraInfo", "input", "K; else the rig's, scaled"),
    Port(ODOM_INPUT, "nav_msgs/msg/Odometry", "input", "`map` <- `base_link`; optional (`use_odometry`)"),
)
#: ``lidar_detector`` and ``bev_detector`` (inputs as their detector's modalities and ``inputs``).
DETECTOR_PORTS: tuple[Port, ...] = (
    *SENSOR_PORTS,
    Port(
        DETECTIONS_OUTPUT, "qd_perception/msg/Detection3DArray", "output", "`frame_id`, the input set's stamp"
    ),
    Port(MARKERS_OUTPUT, "visualization_msgs/msg/MarkerArray", "output", "DELETEALL, box edges, labels"),
    Port(
        DIAGNOSTICS_OUTPUT, "diagnostic_msgs/msg/DiagnosticArray", "output", "one status: counters, latency"
    ),
)
#: ``calibration_recorder`` (sensor inputs as its ``modalities``).
RECORDER_PORTS: tuple[Port, ...] = (
    *SENSOR_PORTS,
    Port(
        DETECTIONS_INPUT, "qd_perception/msg/Detection3DArray", "input", "a detector's output: the object mix"
    ),
    Port(
        STATUS_OUTPUT,
        "std_msgs/msg/String",
        "output",
        "JSON every `status_period_s`: `stored`, `capacity`, `ready_for_ptq`, `store.considered`, "
        "`with_detections`, `ptq.state` (idle / running / succeeded / failed), `ptq.returncode`",
    ),
    Port(
        RUN_PTQ_SERVICE,
        "std_srvs/srv/Trigger",
        "service",
        "runs `ptq_command` once `min_frames` are stored; answers at once",
    ),
)


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
