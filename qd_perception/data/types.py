"""What a detector consumes and what it produces, independent of where the data came from.

The nuScenes reader (real or synthetic data), the ROS nodes (live sensors, bag replay) and the
calibration store all produce :class:`Frame`; every ``Detector`` returns :class:`Detections`.

**Detection frame = ego frame (``base_link``) at the frame's timestamp.** Lidar points are
delivered already transformed into the ego frame; boxes are in the ego frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qd_perception.classes import CLASS_NAMES


@dataclass(frozen=True)
class CameraInput:
    name: str  # rig camera name
    image: np.ndarray  # (H, W, 3) uint8 RGB
    intrinsics: np.ndarray  # (3, 3) K for this image's resolution
    cam2ego: np.ndarray  # (4, 4) ego <- optical frame
    timestamp_us: int


@dataclass(frozen=True)
class Frame:
    """One synchronised input set.

    ``points`` is the multi-sweep cloud in the ego frame of ``timestamp_us``::

        (P, 5) float32 [x, y, z, intensity, time_lag]

    ``time_lag`` in seconds (0 for the current sweep, > 0 for older sweeps), as CenterPoint's
    multi-sweep input. ``intensity`` is 0..255.
    """

    token: str  # sample token (nuScenes) or "<stamp>" for live data
    scene_token: str
    timestamp_us: int
    ego2global: np.ndarray  # (4, 4)
    points: np.ndarray | None = None  # (P, 5) ego frame, see above
    cameras: tuple[CameraInput, ...] = ()
    ego_velocity: np.ndarray | None = None  # (3,) m/s, ego frame, from odometry
    gt: Detections | None = None  # ground truth in the ego frame, when known
    #: rig cameras known to be absent (a failed or silent sensor): camera models run without
    #: them instead of refusing the frame (see ``models.bevformer.inputs.camera_tensors``)
    missing_cameras: tuple[str, ...] = ()


@dataclass(frozen=True)
class Detections:
    """Detected (or ground-truth) objects, ego frame of the frame they belong to.

    boxes: (N, 9) [x, y, z, dx, dy, dz, yaw, vx, vy] (see geometry.boxes)
    labels: (N,) int64 index into qd_perception.classes.CLASS_NAMES
    scores: (N,) float32 in [0, 1] (1 for ground truth)
    attributes: (N,) nuScenes attribute names ("" where none)
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    attributes: tuple[str, ...] = ()
    instance_ids: np.ndarray | None = None  # (N,) ground-truth / tracking ids when known
    num_lidar_pts: np.ndarray | None = None  # (N,) ground truth only

    def __post_init__(self) -> None:
        n = len(self.boxes)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 9:
            raise ValueError(f"boxes must be (N, 9), got {self.boxes.shape}")
        if len(self.labels) != n or len(self.scores) != n:
            raise ValueError("boxes, labels and scores must have the same length")
        if self.attributes and len(self.attributes) != n:
            raise ValueError("attributes must be empty or one per box")

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(CLASS_NAMES[int(i)] for i in self.labels)

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 9)), np.zeros(0, np.int64), np.zeros(0, np.float32))


@dataclass(frozen=True)
class Timing:
    """Per-frame timings in milliseconds."""

    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
