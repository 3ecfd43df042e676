"""Write one simulated scene as a rosbag2 (MCAP storage) with ``rosbags``.

Topics, types and frame ids are those of :mod:`qd_perception.sim.rosmsgs`. Every message's bag
timestamp equals its header stamp (the sensor time), so a replay at original timing delivers
data as the sensors would have. Messages must be added in non-decreasing time order.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import TracebackType

import numpy as np

from qd_perception.classes import CLASS_ID
from qd_perception.geometry.boxes import transform_boxes
from qd_perception.geometry.rig import Rig
from qd_perception.geometry.transforms import invert
from qd_perception.sim import rosmsgs as rm
from qd_perception.sim.types import Annotations, CameraImage, EgoState, LidarSweep


class BagSceneWriter:
    """Context manager writing ``<path>`` (a rosbag2 directory, MCAP, format version 9).

    The bag is written into ``<parent>/.partial/<name>`` and moved to ``<path>`` on a clean
    exit, so an interrupted run never leaves a bag that looks complete.
    """

    def __init__(self, path: Path, rig: Rig, resolution: tuple[int, int], cameras: bool = True) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; remove it or choose another --out")
        self.tmp = self.path.parent / ".partial" / self.path.name
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.rig = rig
        self.resolution = resolution
        self.cameras = cameras
        self._writer = Writer(self.tmp, version=9, storage_plugin=StoragePlugin.MCAP)
        self._conns: dict[str, object] = {}
        self._last_t = -1

    def __enter__(self) -> BagSceneWriter:
        self._writer.open()
        ts = rm.typestore()
        topics = [
            (rm.LIDAR_TOPIC, rm.POINTCLOUD2),
            (rm.ODOM_TOPIC, rm.ODOMETRY),
            (rm.GT_TOPIC, rm.DETECTION3D_ARRAY),
        ]
        for cam in self.rig.camera_names if self.cameras else ():
            topics += [(rm.image_topic(cam), rm.IMAGE), (rm.camera_info_topic(cam), rm.CAMERA_INFO)]
        for topic, msgtype in topics:
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=ts)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._writer.close()
        if exc_type is None:
            self.tmp.rename(self.path)
            try:
                self.tmp.parent.rmdir()
            except OSError:  # other scenes still being written
                pass

    def _write(self, topic: str, msgtype: str, t_us: int, msg: object) -> None:
        if t_us < self._last_t:
            raise ValueError(f"{topic}: time {t_us} us before the previous message ({self._last_t} us)")
        self._last_t = t_us
        self._writer.write(self._conns[topic], int(t_us) * 1000, rm.serialize(msg, msgtype))

    def add_odometry(self, ego: EgoState) -> None:
        msg = rm.odometry(ego.timestamp_us, ego.ego2global, ego.linear_velocity, ego.angular_velocity)
        self._write(rm.ODOM_TOPIC, rm.ODOMETRY, ego.timestamp_us, msg)

    def add_lidar(self, sweep: LidarSweep) -> None:
        msg = rm.pointcloud2(sweep.timestamp_us, sweep.points, sweep.point_time, rm.LIDAR_FRAME)
        self._write(rm.LIDAR_TOPIC, rm.POINTCLOUD2, sweep.timestamp_us, msg)

    def add_cameras(self, images: list[CameraImage]) -> None:
        for im in images:
            frame = rm.camera_frame(im.camera)
            K = self.rig.intrinsics(im.camera, self.resolution)
            info = rm.camera_info(im.timestamp_us, K, self.resolution, frame)
            self._write(rm.camera_info_topic(im.camera), rm.CAMERA_INFO, im.timestamp_us, info)
            self._write(
                rm.image_topic(im.camera),
                rm.IMAGE,
                im.timestamp_us,
                rm.image(im.timestamp_us, im.image, frame),
            )

    def add_ground_truth(
        self, t_us: int, ego2global: np.ndarray, ann: Annotations, lidar: LidarSweep
    ) -> None:
        """Ground truth at ``t_us`` (a lidar stamp) in ``base_link``; point counts from ``lidar``."""
        boxes = transform_boxes(ann.boxes, invert(ego2global))
        labels = np.array([CLASS_ID[c] for c in ann.class_names], np.int64)
        ids, counts = np.unique(lidar.instance_ids[lidar.instance_ids >= 0], return_counts=True)
        npts = dict(zip(ids.tolist(), counts.tolist()))
        n = np.array([npts.get(int(i), 0) for i in ann.instance_ids], np.int64)
        msg = rm.detection3d_array(
            t_us, boxes, labels, None, tuple(ann.attributes), tuple(str(int(i)) for i in ann.instance_ids), n
        )
        self._write(rm.GT_TOPIC, rm.DETECTION3D_ARRAY, t_us, msg)
