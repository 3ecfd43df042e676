"""Training data for the camera BEV detector: Frames -> cached, resized samples with their
temporal history (previous keyframes of the same scene)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qd_perception.data.types import Frame
from qd_perception.fileio import atomic_output
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


def history_of(dataset, i: int, length: int) -> list[BEVSample]:
    """Up to ``length - 1`` previous keyframes of sample ``i`` of ``dataset`` (indexable, samples
    in scene/time order), oldest first, stopping at a scene change or a time gap."""
    out: list[BEVSample] = []
    cur = dataset[i]
    j = i - 1
    while j >= 0 and len(out) < length - 1:
        prev = dataset[j]
        if not history_valid(prev, cur, dataset.cfg.max_time_gap_s):
            break
        out.append(prev)
        cur, j = prev, j - 1
    return out[::-1]


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
        """Up to ``length - 1`` previous keyframes of sample ``i`` (see :func:`history_of`)."""
        return history_of(self, i, length)


# -- image cache, augmentation and temporal batches (training throughput) ------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """BEV-space and photometric augmentation of training samples.

    The BEV transform (rotation about the ego z axis, mirror of y) is applied to every frame of a
    sample's history alike, as a change of the ego frame: ``cam2ego`` and ``ego2global`` are
    re-expressed in it and the boxes moved with it, so the images stay untouched and the
    projection geometry stays exact. Photometric jitter is per camera.
    """

    rotate_deg: float = 22.5  # uniform in [-rotate_deg, rotate_deg]
    flip_y: float = 0.5  # probability of mirroring y (left <-> right)
    brightness: float = 0.2  # multiplicative, uniform in [1 - b, 1 + b]
    contrast: float = 0.2

    @property
    def enabled(self) -> bool:
        return any((self.rotate_deg, self.flip_y, self.brightness, self.contrast))


NO_AUGMENT = AugmentConfig(0.0, 0.0, 0.0, 0.0)


def bev_transform(rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """(4, 4) float64 ego' <- ego: rotation about z, then an optional mirror of y (det -1)."""
    a = np.deg2rad(rng.uniform(-aug.rotate_deg, aug.rotate_deg)) if aug.rotate_deg else 0.0
    T = np.eye(4)
    c, s = np.cos(a), np.sin(a)
    T[:2, :2] = [[c, -s], [s, c]]
    if aug.flip_y and rng.random() < aug.flip_y:
        T = np.diag([1.0, -1.0, 1.0, 1.0]) @ T
    return T


def transform_boxes(boxes: np.ndarray, T: np.ndarray) -> np.ndarray:
    """(M, 9) boxes [x, y, z, l, w, h, yaw, vx, vy] in ego -> in ego' = T @ ego (T rotation about z,
    possibly mirrored). Sizes are unchanged; yaw and velocity turn (and mirror) with the frame."""
    out = boxes.astype(np.float64, copy=True)
    R = T[:3, :3]
    out[:, 0:3] = boxes[:, 0:3] @ R.T + T[:3, 3]
    v = np.concatenate([boxes[:, 7:9], np.zeros((len(boxes), 1))], axis=1) @ R.T
    out[:, 7:9] = v[:, :2]
    heading = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), np.zeros(len(boxes))], axis=1) @ R.T
    out[:, 6] = np.arctan2(heading[:, 1], heading[:, 0])
    return out.astype(boxes.dtype)


def augment_sample(s: BEVSample, T: np.ndarray, photometric: np.ndarray | None) -> BEVSample:
    """``s`` seen in the ego frame ego' = T @ ego; ``photometric`` (N, 2) per-camera (gain, contrast)
    or None."""
    Ti = np.linalg.inv(T)
    images = s.images
    if photometric is not None:
        x = images.astype(np.float32)
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        g = photometric[:, 0, None, None, None].astype(np.float32)
        c = photometric[:, 1, None, None, None].astype(np.float32)
        images = np.clip((x - mean) * c + mean * g, 0, 255).astype(np.uint8)
    return BEVSample(
        s.token, s.scene_token, s.timestamp_us, images, s.intrinsics,
        (T[None] @ s.cam2ego.astype(np.float64)).astype(np.float32), s.ego2global @ Ti,
        transform_boxes(s.gt_boxes, T), s.gt_labels,
    )  # fmt: skip


def dataset_key(dataroot: str | Path, version: str, split: str, cfg: BEVFormerConfig) -> str:
    """A short hash naming an image cache: the tables (size and mtime of every table file), the
    split, the network image size and the camera order. Any change gives a new cache."""
    import hashlib

    table = Path(dataroot) / version
    h = hashlib.sha256()
    for f in sorted(table.glob("*.json")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(f"{Path(dataroot).resolve()}|{version}|{split}|{cfg.image_size}|{cfg.camera_names}".encode())
    return h.hexdigest()[:16]


class CachedBEVDataset:
    """Every keyframe of a split decoded and resized once into a uint8 memmap.

    Layout of ``cache_dir``: ``images.u8`` (n, N_cam, 3, H, W) uint8 at the network resolution and
    ``meta.npz`` (tokens, scenes, stamps, intrinsics, cam2ego, ego2global, boxes + per-sample
    offsets, labels), written atomically, ``meta.npz`` last, so a half-built cache is never used.
    Reading a sample is a memmap slice: no JPEG decoding in the training loop.
    """

    def __init__(self, cache_dir: str | Path, cfg: BEVFormerConfig) -> None:
        cache_dir = Path(cache_dir)
        meta = np.load(cache_dir / "meta.npz", allow_pickle=False)
        self.cfg = cfg
        self.tokens = [str(t) for t in meta["tokens"]]
        self.scenes = [str(t) for t in meta["scenes"]]
        self.stamps = meta["stamps"].astype(np.int64)
        self.intrinsics = meta["intrinsics"]
        self.cam2ego = meta["cam2ego"]
        self.ego2global = meta["ego2global"]
        self.box_offsets = meta["box_offsets"]
        self.boxes = meta["boxes"]
        self.labels = meta["labels"]
        n = len(self.tokens)
        H, W = cfg.image_size
        self.images = np.memmap(cache_dir / "images.u8", np.uint8, "r", shape=(n, cfg.num_cams, 3, H, W))

    @classmethod
    def build(
        cls, frames: Sequence[Frame], cfg: BEVFormerConfig, cache_dir: str | Path, progress: bool = True
    ):
        """Decode ``frames`` (e.g. a ``NuScenesReader`` with images) into ``cache_dir`` unless a
        complete cache is there already; returns the dataset."""
        from tqdm import tqdm

        cache_dir = Path(cache_dir)
        if (cache_dir / "meta.npz").is_file():
            return cls(cache_dir, cfg)
        cache_dir.mkdir(parents=True, exist_ok=True)
        n = len(frames)
        H, W = cfg.image_size
        rows: dict[str, list] = {
            k: [] for k in ("tokens", "scenes", "stamps", "K", "E", "e2g", "boxes", "labels")
        }
        with atomic_output(cache_dir / "images.u8") as tmp_img:
            mm = np.memmap(tmp_img, np.uint8, "w+", shape=(n, cfg.num_cams, 3, H, W))
            for i in tqdm(range(n), desc="cache images", unit="keyframe", disable=not progress):
                s = frame_to_sample(frames[i], cfg)
                mm[i] = s.images
                for k, v in zip(rows, (s.token, s.scene_token, s.timestamp_us, s.intrinsics, s.cam2ego,
                                       s.ego2global, s.gt_boxes, s.gt_labels)):  # fmt: skip
                    rows[k].append(v)
            mm.flush()
            del mm
        counts = np.array([len(b) for b in rows["boxes"]], np.int64)
        with atomic_output(cache_dir / "meta.npz") as tmp:
            np.savez(
                tmp, tokens=np.array(rows["tokens"]), scenes=np.array(rows["scenes"]),
                stamps=np.array(rows["stamps"], np.int64), intrinsics=np.stack(rows["K"]),
                cam2ego=np.stack(rows["E"]), ego2global=np.stack(rows["e2g"]),
                box_offsets=np.concatenate([[0], np.cumsum(counts)]),
                boxes=np.concatenate(rows["boxes"]) if n else np.zeros((0, 9), np.float32),
                labels=np.concatenate(rows["labels"]) if n else np.zeros(0, np.int64),
            )  # fmt: skip
        return cls(cache_dir, cfg)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> BEVSample:
        a, b = self.box_offsets[i], self.box_offsets[i + 1]
        return BEVSample(
            self.tokens[i], self.scenes[i], int(self.stamps[i]), np.asarray(self.images[i]),
            self.intrinsics[i], self.cam2ego[i], self.ego2global[i], self.boxes[a:b], self.labels[a:b],
        )  # fmt: skip

    def history(self, i: int, length: int) -> list[BEVSample]:
        """Up to ``length - 1`` previous keyframes of sample ``i`` (see :func:`history_of`)."""
        return history_of(self, i, length)


@dataclass(frozen=True)
class TemporalBatch:
    """A training batch with its history.

    current: the frames trained on. history[k]: the k-th previous frame of every sample (oldest
    first, ``queue_length - 1`` entries), with ``valid[k]`` (B,) 1.0 where sample b has that frame
    (a sample with a shorter history repeats its own frame there, masked out);
    ``motion[k]`` (B, 4, 4) ego_{k} <- ego_{k+1} (the last: ego_prev <- ego_current).
    """

    current: Batch
    history: list[Batch]
    valid: list[torch.Tensor]
    motion: list[torch.Tensor]


class TemporalSamples(torch.utils.data.Dataset):
    """Map-style dataset of (current, history) for a ``DataLoader``; augmentation drawn per sample
    from a generator seeded by (seed, epoch, index), so a resumed or re-run epoch is identical."""

    def __init__(self, base, queue_length: int, aug: AugmentConfig, seed: int = 0) -> None:
        self.base = base
        self.queue_length = queue_length
        self.aug = aug
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> list[BEVSample]:
        frames = [*self.base.history(i, self.queue_length), self.base[i]]
        if not self.aug.enabled:
            return frames
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        T = bev_transform(rng, self.aug)
        n = self.base.cfg.num_cams
        out = []
        for s in frames:
            photo = None
            if self.aug.brightness or self.aug.contrast:
                photo = np.stack(
                    [1 + rng.uniform(-self.aug.brightness, self.aug.brightness, n),
                     1 + rng.uniform(-self.aug.contrast, self.aug.contrast, n)], axis=1,
                )  # fmt: skip
            out.append(augment_sample(s, T, photo))
        return out


def collate_temporal(items: list[list[BEVSample]]) -> TemporalBatch:
    """DataLoader collate: per-sample frame lists (history oldest first, current last) ->
    :class:`TemporalBatch` with the history padded to the longest one in the batch."""
    L = max(len(f) for f in items) - 1
    history, valid, motion = [], [], []
    for k in range(L):
        frames, v = [], []
        for f in items:
            j = len(f) - 1 - L + k  # this sample's frame at history slot k (negative: missing)
            frames.append(f[j] if j >= 0 else f[-1])
            v.append(1.0 if j >= 0 else 0.0)
        history.append(collate(frames))
        valid.append(torch.tensor(v))
    for k in range(L):
        pairs = []
        for f in items:
            j = len(f) - 1 - L + k
            nxt = f[j + 1] if j >= 0 else f[-1]
            pairs.append(ego_motion(f[j], nxt) if j >= 0 else np.eye(4, dtype=np.float32))
        motion.append(torch.from_numpy(np.stack(pairs)))
    return TemporalBatch(collate([f[-1] for f in items]), history, valid, motion)
