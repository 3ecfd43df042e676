"""The contract between the simulated world (``sim.world``) and its writers (``sim.writers``).

A scene is rendered lazily, on demand, at any timestamp: the writers decide the schedule
(lidar at ``rig.lidar.rate_hz``, cameras at ``rig.camera_rate_hz``, keyframes at 2 Hz) and pull
sensor data from a :class:`SceneSource`, so a long scene never has to fit in memory.

Timestamps are integer microseconds (nuScenes convention). Boxes follow
:mod:`qd_perception.geometry.boxes` (``(N, 9) [x, y, z, dx, dy, dz, yaw, vx, vy]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from qd_perception.geometry.rig import Rig


@dataclass(frozen=True)
class Annotations:
    """Ground-truth objects at one instant, **global** frame."""

    boxes: np.ndarray  # (N, 9) global frame, velocity in global frame (m/s)
    class_names: tuple[str, ...]  # (N,) detection class names (qd_perception.classes)
    instance_ids: np.ndarray  # (N,) int64, stable over the scene
    attributes: tuple[str, ...]  # (N,) nuScenes attribute name or "" (barrier, cone)
    visibility: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) 1..4

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True)
class LidarSweep:
    """One lidar revolution. Points in the **lidar sensor** frame of ``timestamp_us``."""

    timestamp_us: int
    ego2global: np.ndarray  # (4, 4) ego pose at timestamp_us
    points: np.ndarray  # (P, 5) float32 [x, y, z, intensity 0..255, ring index]
    point_time: np.ndarray  # (P,) float32 seconds relative to timestamp_us (scan time)
    instance_ids: np.ndarray  # (P,) int64 id of the object hit, -1 for static world


@dataclass(frozen=True)
class CameraImage:
    """One camera exposure."""

    camera: str  # rig camera name, e.g. "CAM_FRONT"
    timestamp_us: int
    ego2global: np.ndarray  # (4, 4) ego pose at timestamp_us
    image: np.ndarray  # (H, W, 3) uint8 RGB
    instance_ids: np.ndarray  # (H, W) int64 id of the object seen per pixel, -1 elsewhere
    depth: np.ndarray | None = None  # (H, W) float32 metres along the optical axis, inf = sky


@dataclass(frozen=True)
class EgoState:
    """Ego odometry at one instant (``nav_msgs/Odometry`` content)."""

    timestamp_us: int
    ego2global: np.ndarray  # (4, 4)
    linear_velocity: np.ndarray  # (3,) m/s in the ego frame
    angular_velocity: np.ndarray  # (3,) rad/s in the ego frame


class SceneSource(Protocol):
    """A simulated scene that renders sensors at any time in [start_us, end_us]."""

    name: str
    description: str  # conditions, e.g. "day, clear" / "night, rain"
    rig: Rig
    resolution: tuple[int, int]  # camera (H, W)
    start_us: int
    end_us: int

    def ego(self, t_us: int) -> EgoState: ...

    def annotations(self, t_us: int) -> Annotations: ...

    def lidar(self, t_us: int) -> LidarSweep: ...

    def cameras(self, t_us: int) -> list[CameraImage]: ...
