"""Training data for CenterPoint: frames from the nuScenes-format reader, global augmentation,
CenterPoint targets.

Augmentation (CenterPoint's nuScenes recipe, applied to points and boxes together, ego frame):
random flips about the x and y axes, a global rotation about +z, a global scale. Velocities
follow the same transform. GT-database sampling (copy-paste of objects) is not implemented.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qd_perception.data.types import Frame
from qd_perception.models.centerpoint.config import CenterPointConfig
from qd_perception.models.centerpoint.targets import TaskTargets, build_targets, collate_targets


@dataclass(frozen=True)
class AugmentConfig:
    flip_x: bool = True  # mirror y -> -y
    flip_y: bool = True  # mirror x -> -x
    rotate_rad: float = math.pi / 8  # uniform in [-r, r] (CenterPoint nuScenes: 0.3925)
    scale: tuple[float, float] = (0.95, 1.05)
    translate_std: float = 0.0  # m, per axis


def augment(
    points: np.ndarray, boxes: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random global transform of (P, >=3) points and (N, 9) boxes -> augmented copies."""
    pts = np.array(points, dtype=np.float32, copy=True)
    b = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 9)
    if cfg.flip_x and rng.random() < 0.5:
        pts[:, 1] *= -1
        b[:, 1] *= -1
        b[:, 6] = -b[:, 6]
        b[:, 8] *= -1
    if cfg.flip_y and rng.random() < 0.5:
        pts[:, 0] *= -1
        b[:, 0] *= -1
        b[:, 6] = np.pi - b[:, 6]
        b[:, 7] *= -1
    if cfg.rotate_rad > 0:
        a = rng.uniform(-cfg.rotate_rad, cfg.rotate_rad)
        c, s = math.cos(a), math.sin(a)
        rot = np.array([[c, -s], [s, c]])
        pts[:, :2] = pts[:, :2] @ rot.T.astype(np.float32)
        b[:, :2] = b[:, :2] @ rot.T
        b[:, 7:9] = b[:, 7:9] @ rot.T
        b[:, 6] += a
    lo, hi = cfg.scale
    if hi > lo or lo != 1.0:
        k = rng.uniform(lo, hi)
        pts[:, :3] *= k
        b[:, :6] *= k
        b[:, 7:9] *= k
    if cfg.translate_std > 0:
        t = rng.normal(0, cfg.translate_std, 3)
        pts[:, :3] += t.astype(np.float32)
        b[:, :3] += t
    b[:, 6] = (b[:, 6] + np.pi) % (2 * np.pi) - np.pi
    return pts, b


@dataclass(frozen=True)
class LidarSample:
    token: str
    points: torch.Tensor  # (P, 5) ego frame
    boxes: np.ndarray  # (N, 9) ground truth after augmentation
    labels: np.ndarray  # (N,)
    targets: list[TaskTargets]  # numpy, per task group


@dataclass(frozen=True)
class LidarBatch:
    tokens: list[str]
    points: list[torch.Tensor]
    targets: list[TaskTargets]  # batched torch tensors
    boxes: list[np.ndarray]
    labels: list[np.ndarray]

    def pin_memory(self) -> LidarBatch:
        """Page-locked copies of the tensors (``DataLoader(pin_memory=True)`` calls this)."""
        return dataclasses.replace(
            self,
            points=[p.pin_memory() for p in self.points],
            targets=map_targets(self.targets, torch.Tensor.pin_memory),
        )

    def targets_on(self, device: torch.device) -> list[TaskTargets]:
        """The batched targets on ``device`` (the points stay: voxelisation runs on the CPU)."""
        if device.type == "cpu":
            return self.targets
        return map_targets(self.targets, lambda x: x.to(device, non_blocking=True))


def map_targets(targets: list[TaskTargets], fn: Callable[[torch.Tensor], torch.Tensor]) -> list[TaskTargets]:
    """``fn`` applied to every tensor of batched targets."""
    return [TaskTargets(*(fn(getattr(t, n)) for n in TaskTargets.__annotations__)) for t in targets]


def gt_arrays(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of a frame, without boxes that no lidar point hits (nuScenes drops them too)."""
    if frame.gt is None or len(frame.gt) == 0:
        return np.zeros((0, 9)), np.zeros(0, np.int64)
    keep = np.ones(len(frame.gt), bool)
    if frame.gt.num_lidar_pts is not None:
        keep = np.asarray(frame.gt.num_lidar_pts) > 0
    return np.asarray(frame.gt.boxes)[keep], np.asarray(frame.gt.labels)[keep]


class LidarDataset(torch.utils.data.Dataset):
    """Frames (any indexable of :class:`Frame`, e.g. ``NuScenesReader``) -> :class:`LidarSample`."""

    def __init__(
        self,
        frames: Sequence[Frame],
        cfg: CenterPointConfig,
        augmentation: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.frames = frames
        self.cfg = cfg
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Different augmentation per epoch, reproducible across resumes."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> LidarSample:
        frame = self.frames[i]
        if frame.points is None:
            raise ValueError(f"frame {frame.token} has no lidar points")
        points = np.asarray(frame.points, np.float32)[:, : self.cfg.num_point_features]
        boxes, labels = gt_arrays(frame)
        if self.augmentation is not None:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            points, boxes = augment(points, boxes, self.augmentation, rng)
        return LidarSample(
            frame.token, torch.from_numpy(points), boxes, labels, build_targets(boxes, labels, self.cfg)
        )


def collate(samples: list[LidarSample]) -> LidarBatch:
    return LidarBatch(
        [s.token for s in samples],
        [s.points for s in samples],
        collate_targets([s.targets for s in samples]),
        [s.boxes for s in samples],
        [s.labels for s in samples],
    )
