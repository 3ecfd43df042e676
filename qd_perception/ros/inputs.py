"""Subscriptions to the synchronised sensor inputs, shared by the detector and calibration nodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qd_perception.data.types import CameraInput
from qd_perception.topics import ODOM_INPUT, POINTCLOUD_INPUT, camera_info_input, image_input

#: Stream name of the lidar in the nodes' synchronisation policies (the cameras use their names).
LIDAR = "lidar"


def subscribe_sensor_inputs(
    node: Any, cameras: Sequence[str], lidar: bool, use_cameras: bool, odometry: bool
) -> list[Any]:
    """Subscribe ``node`` to its private input topics with sensor-data QoS.

    Topics (:data:`qd_perception.topics.SENSOR_PORTS`): ``~/input/pointcloud`` (PointCloud2),
    ``~/input/<cam>/image`` and ``~/input/<cam>/camera_info`` per camera, ``~/input/odom``
    (Odometry). Callbacks are the
    node's ``_on_cloud(msg)``, ``_on_image(camera, msg)``, ``_on_info(camera, msg)`` and
    ``_on_odom(msg)``. Returns the subscriptions (keep them alive).
    """
    from nav_msgs.msg import Odometry
    from rclpy.qos import qos_profile_sensor_data as qos
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    subs = []
    if lidar:
        subs.append(node.create_subscription(PointCloud2, POINTCLOUD_INPUT, node._on_cloud, qos))
    if use_cameras:
        for cam in cameras:
            subs.append(
                node.create_subscription(Image, image_input(cam), lambda m, c=cam: node._on_image(c, m), qos)
            )
            subs.append(
                node.create_subscription(
                    CameraInfo, camera_info_input(cam), lambda m, c=cam: node._on_info(c, m), qos
                )
            )
    if odometry:
        subs.append(node.create_subscription(Odometry, ODOM_INPUT, node._on_odom, qos))
    return subs


def camera_inputs(
    streams: Sequence[str], stamps_ns: Sequence[int | None], msgs: dict[str, Any], camera_K: dict, rig: Any
) -> tuple[CameraInput, ...]:
    """The cameras of one synchronised set as model inputs.

    ``streams``/``stamps_ns``: the policy's required streams and their matched stamps (the lidar
    stream and the missing cameras of the set, stamp None, are skipped); ``msgs[cam]``: (H, W, 3)
    image; ``camera_K[cam]``: (K, (H, W)) from its CameraInfo, used when it matches the image
    size, else the rig's K scaled to the image.
    """
    cams = []
    for cam, stamp in zip(streams, stamps_ns):
        if cam == LIDAR or stamp is None:
            continue
        img = msgs[cam]
        K_res = camera_K.get(cam)
        K = K_res[0] if K_res and K_res[1] == img.shape[:2] else rig.intrinsics(cam, img.shape[:2])
        cams.append(CameraInput(cam, img, K, rig.cam2ego(cam), stamp // 1000))
    return tuple(cams)
