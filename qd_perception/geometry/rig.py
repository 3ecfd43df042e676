"""Sensor rig: camera intrinsics/extrinsics and the lidar pose, loaded from ``config/rig/*.yaml``.

Frames (REP-103): ego ``base_link`` is x forward, y left, z up, origin on the ground under the
rear axle (as nuScenes' ego pose). Camera optical frames are x right, y down, z forward.
``cam2ego`` maps optical-frame points into the ego frame (nuScenes ``calibrated_sensor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qd_perception.config import load_yaml
from qd_perception.geometry.transforms import make_transform
from qd_perception.paths import config_dir

# Columns: the optical x (right), y (down), z (forward) axes expressed in ego for a camera
# looking along ego +x.
_OPTICAL_IN_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@dataclass(frozen=True)
class CameraSpec:
    """One camera. Intrinsics in pixels at the rig's ``reference_resolution``."""

    name: str
    translation: tuple[float, float, float]  # metres, ego frame
    yaw_deg: float  # optical axis heading, CCW from ego +x
    fx: float
    fy: float
    cx: float
    cy: float
    pitch_deg: float = 0.0  # positive tilts the optical axis down
    roll_deg: float = 0.0

    def rotation(self) -> np.ndarray:
        """(3, 3) rotation ego <- optical."""
        r, p, y = np.deg2rad([self.roll_deg, self.pitch_deg, self.yaw_deg])
        return _rz(y) @ _ry(p) @ _rx(r) @ _OPTICAL_IN_EGO


@dataclass(frozen=True)
class LidarSpec:
    """Spinning lidar. ``yaw_deg`` of the sensor frame in ego (nuScenes' LIDAR_TOP is about -90)."""

    translation: tuple[float, float, float]
    yaw_deg: float = 0.0
    beams: int = 32
    elevation_min_deg: float = -30.67
    elevation_max_deg: float = 10.67
    azimuth_steps: int = 1100
    rate_hz: float = 20.0
    max_range: float = 70.0


@dataclass(frozen=True)
class Rig:
    name: str
    reference_resolution: tuple[int, int]  # (H, W) pixels the intrinsics are given at
    camera_rate_hz: float
    cameras: tuple[CameraSpec, ...]
    lidar: LidarSpec

    def __post_init__(self) -> None:
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate camera names {names}")

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def camera(self, name: str) -> CameraSpec:
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(f"rig {self.name!r} has no camera {name!r}; cameras: {self.camera_names}")

    def intrinsics(self, name: str, resolution: tuple[int, int] | None = None) -> np.ndarray:
        """(3, 3) K of camera ``name`` for images of ``resolution`` (H, W) (default: reference)."""
        c = self.camera(name)
        H0, W0 = self.reference_resolution
        H, W = resolution or (H0, W0)
        sx, sy = W / W0, H / H0
        return np.array([[c.fx * sx, 0.0, c.cx * sx], [0.0, c.fy * sy, c.cy * sy], [0.0, 0.0, 1.0]])

    def cam2ego(self, name: str) -> np.ndarray:
        """(4, 4) transform ego <- camera optical frame."""
        c = self.camera(name)
        return make_transform(c.rotation(), np.asarray(c.translation, dtype=np.float64))

    def lidar2ego(self) -> np.ndarray:
        """(4, 4) transform ego <- lidar sensor frame."""
        L = self.lidar
        return make_transform(_rz(np.deg2rad(L.yaw_deg)), np.asarray(L.translation, dtype=np.float64))


#: The vehicle every default refers to: ``config/rig/nuscenes_like.yaml``, a nuScenes-like car.
DEFAULT_RIG = "nuscenes_like"


def load_rig(name_or_path: str | Path = DEFAULT_RIG) -> Rig:
    """Load a rig by name (``config/rig/<name>.yaml``) or by path."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = config_dir() / "rig" / f"{name_or_path}.yaml"
    return load_yaml(Rig, p)


#: The default rig's cameras in its file's order, the nuScenes order most BEV models use
#: (CAM_FRONT, CAM_FRONT_RIGHT, CAM_FRONT_LEFT, CAM_BACK, CAM_BACK_LEFT, CAM_BACK_RIGHT). The one
#: definition of the camera list: node defaults, the nuScenes reader and the camera model's
#: config take it from here, so the rig file is the only place that names the cameras.
DEFAULT_CAMERAS: tuple[str, ...] = load_rig(DEFAULT_RIG).camera_names
