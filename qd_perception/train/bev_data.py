"""Training data for the camera BEV detector: Frames -> cached, resized samples with their
temporal history (previous keyframes of the same scene)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qd_perception.data.types import Frame
from qd_perception.models.bevformer.config import BEVFormerConfig
from qd_perception.models.bevformer.geometry import relative_ego_motion
from qd_perception.models.bevformer.inputs import camera_tensors
from qd_perception.models.bevformer.losses import Targets


@dataclass(frozen=True)
class BEVSample:
    """One keyframe ready for the network (network resolution, ego frame).

    images (N, 3, H, W) uint8; intrinsics (N, 3, 3); cam2ego (N, 4, 4); ego2global (4, 4) float64;
    gt_boxes (M, 9) float32 inside ``pc_range`` (x, y); gt_labels (M,) int64.
    """

    token: str
    scene_token: str
    timestamp_us: int
    images: np.ndarray
    intrinsics: np.ndarray
    cam2ego: np.ndarray
    ego2global: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray


def frame_to_sample(frame: Frame, cfg: BEVFormerConfig) -> BEVSample:
    cams = camera_tensors(frame, cfg)
    if frame.gt is not None and len(frame.gt):
        b = np.asarray(frame.gt.boxes, np.float64)
        x0, y0, _, x1, y1, _ = cfg.pc_range
        keep = (b[:, 0] >= x0) & (b[:, 0] < x1) & (b[:, 1] >= y0) & (b[:, 1] < y1)
        keep &= np.all(np.isfinite(b), axis=1)
        boxes = b[keep].astype(np.float32)
        labels = np.asarray(frame.gt.labels, np.int64)[keep]
    else:
        boxes, labels = np.zeros((0, 9), np.float32), np.zeros(0, np.int64)
    return BEVSample(
        frame.token, frame.scene_token, int(frame.timestamp_us), cams.images, cams.intrinsics,
        cams.cam2ego, np.asarray(frame.ego2global, np.float64), boxes, labels,
    )  # fmt: skip


@dataclass(frozen=True)
class Batch:
    """Stacked network inputs. images (B, N, 3, H, W) float 0..255; intrinsics (B, N, 3, 3);
    cam2ego (B, N, 4, 4); targets one per sample."""

    images: torch.Tensor
    intrinsics: torch.Tensor
    cam2ego: torch.Tensor
    targets: list[Targets]


def collate(samples: Sequence[BEVSample]) -> Batch:
    return Batch(
        images=torch.from_numpy(np.stack([s.images for s in samples])).float(),
        intrinsics=torch.from_numpy(np.stack([s.intrinsics for s in samples])),
        cam2ego=torch.from_numpy(np.stack([s.cam2ego for s in samples])),
        targets=[Targets(torch.from_numpy(s.gt_boxes), torch.from_numpy(s.gt_labels)) for s in samples],
    )


def history_valid(prev: BEVSample, cur: BEVSample, max_gap_s: float) -> bool:
    """The previous BEV may be used: same scene, and 0 < dt <= ``max_gap_s`` (no clock jump)."""
    dt = (cur.timestamp_us - prev.timestamp_us) * 1e-6
    return prev.scene_token == cur.scene_token and 0.0 < dt <= max_gap_s


def ego_motion(prev: BEVSample, cur: BEVSample) -> np.ndarray:
    """(4, 4) float32 ego_prev <- ego_cur."""
    return relative_ego_motion(prev.ego2global, cur.ego2global).astype(np.float32)


class BEVDataset:
    """Random access to samples of a frame source (e.g. ``NuScenesReader``), decoded once and kept
    in memory at the network resolution (uint8: 6 x 128 x 224 x 3 = 0.5 MB per keyframe)."""

    def __init__(self, frames: Sequence[Frame], cfg: BEVFormerConfig, cache: bool = True) -> None:
        self.frames = frames
        self.cfg = cfg
        self.cache = cache
        self._cache: dict[int, BEVSample] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> BEVSample:
        s = self._cache.get(i)
        if s is None:
            s = frame_to_sample(self.frames[i], self.cfg)
            if self.cache:
                self._cache[i] = s
        return s

    def history(self, i: int, length: int) -> list[BEVSample]:
        """Up to ``length - 1`` previous keyframes of sample ``i``, oldest first, stopping at a
        scene change or a time gap (the frame source is in scene/time order)."""
        out: list[BEVSample] = []
        cur = self[i]
        j = i - 1
        while j >= 0 and len(out) < length - 1:
            prev = self[j]
            if not history_valid(prev, cur, self.cfg.max_time_gap_s):
                break
            out.append(prev)
            cur, j = prev, j - 1
        return out[::-1]
