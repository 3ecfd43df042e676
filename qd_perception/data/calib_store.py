"""A bounded, diverse, crash-safe calibration set on disk for post-training quantization.

PTQ calibrates activation ranges on a few hundred frames; what matters is that those frames cover
the conditions the model meets (empty roads and crowded junctions, dense and sparse clouds, day and
night images). A plain FIFO or reservoir over a drive keeps whatever was most common. This store
keeps a fixed number of frames chosen by **scene statistics**:

* each offered :class:`~qd_perception.data.types.Frame` is summarised by a small feature vector
  (:func:`scene_features`: point count and range distribution, intensity, height spread, image
  brightness and contrast, class histogram of the detections seen in the frame);
* until the store is full every (sampled) frame is kept;
* once full, a candidate competes with the members: the store keeps the set whose closest pair is
  farthest apart (greedy max-min / farthest-point diversity). The member of the closest pair that
  is also closer to the rest is evicted — or the candidate is rejected when it is the redundant one.
  Features are standardised with running statistics over everything offered so far, so no single
  unit (points vs. brightness) dominates.

On disk (``root/``)::

    index.json               the members, their features and the running statistics (atomic)
    frames/<id>.npz          one frame each (atomic: written to a temporary name, then os.replace)
    recorder.json            the input layout the frames were written with (:func:`input_layout`)

The index is rewritten after every accepted frame (and at most once a second otherwise); a restart
(:meth:`CalibrationStore.open`) reloads it, deletes stray temporary files and frames the index
does not list, and drops index entries whose file vanished. :class:`CalibrationSet` is the
read-only view PTQ uses: a sequence of :class:`Frame`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qd_perception.classes import CLASS_NAMES
from qd_perception.config import ConfigError
from qd_perception.data.types import CameraInput, Detections, Frame
from qd_perception.fileio import atomic_output, atomic_write_json

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
#: The input layout the set was written with (:func:`input_layout`), beside the index.
LAYOUT_NAME = "recorder.json"
#: Columns of every stored frame's points, ego frame (what the lidar models read).
POINT_FEATURES: tuple[str, ...] = ("x", "y", "z", "intensity", "time_lag")
FRAMES_DIR = "frames"
INDEX_VERSION = 1
#: Names of the files the store writes under frames/ (frames, and their temporary files): the
#: only ones it ever deletes.
_OWN_FRAME = re.compile(r"^\d{8}\.npz$|^\.\d{8}\.npz\..*\.tmp$")
#: Largest |coordinate| (m, ego frame) of a calibration point. Calibration takes max-min ranges:
#: one point at 1e29 m would make every activation range garbage, so such frames are refused.
MAX_POINT_COORD_M = 1e4

#: Names of the entries of :func:`scene_features`, in order (documented in the index file too).
FEATURE_NAMES: tuple[str, ...] = (
    "log_points",
    "frac_near_0_20m",
    "frac_mid_20_40m",
    "frac_far_40m",
    "mean_intensity",
    "height_std",
    "image_brightness",
    "image_contrast",
    "log_objects",
    *(f"class_{n}" for n in CLASS_NAMES),
)


@dataclass(frozen=True)
class CalibStoreConfig:
    """How the calibration set is selected and stored.

    capacity: number of frames kept.
    sample_every: consider one offered frame in ``sample_every`` (sampling rate: 10 Hz input and
        ``sample_every: 5`` considers 2 Hz).
    min_interval_s: also skip frames closer than this to the last considered one (sensor time).
    store_images: keep camera images (needed for camera models; large).
    class_weight: weight of the class-histogram block in the feature distance relative to the
        point/image statistics block (0 ignores the object mix).
    compress: np.savez_compressed instead of np.savez (smaller, slower).
    """

    capacity: int = 128
    sample_every: int = 1
    min_interval_s: float = 0.0
    store_images: bool = True
    class_weight: float = 1.0
    compress: bool = False

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}")
        if self.sample_every < 1:
            raise ValueError(f"sample_every must be >= 1, got {self.sample_every}")
        if self.min_interval_s < 0 or self.class_weight < 0:
            raise ValueError("min_interval_s and class_weight must be >= 0")


def scene_features(frame: Frame, detections: Detections | None = None) -> np.ndarray:
    """Scene statistics of one frame, shape ``(len(FEATURE_NAMES),)`` float64.

    ``detections`` (ego frame) give the object mix; without them the frame's ground truth is used
    when present, else the class block is zero. Missing modalities give zeros for their entries.
    """
    f = np.zeros(len(FEATURE_NAMES), np.float64)
    pts = frame.points
    if pts is not None and len(pts):
        pts = np.asarray(pts)
        r = np.hypot(pts[:, 0], pts[:, 1])
        f[0] = np.log1p(len(pts))
        f[1] = np.mean(r < 20.0)
        f[2] = np.mean((r >= 20.0) & (r < 40.0))
        f[3] = np.mean(r >= 40.0)
        f[4] = float(np.mean(pts[:, 3])) / 255.0
        f[5] = float(np.std(pts[:, 2]))
    if frame.cameras:
        # Luma of a strided subsample: brightness statistics do not need every pixel.
        lumas = [
            c.image[::8, ::8].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            for c in frame.cameras
        ]
        f[6] = float(np.mean([lu.mean() for lu in lumas])) / 255.0
        f[7] = float(np.mean([lu.std() for lu in lumas])) / 255.0
    dets = detections if detections is not None else frame.gt
    if dets is not None and len(dets):
        hist = np.bincount(np.asarray(dets.labels, np.int64), minlength=len(CLASS_NAMES))
        hist = hist[: len(CLASS_NAMES)].astype(np.float64)
        f[8] = np.log1p(len(dets))
        f[9:] = hist / max(hist.sum(), 1.0)
    return f


# ------------------------------------------------------------------------------------------- files


def _atomic_write_bytes(path: Path, write) -> None:
    """Write through ``write(fileobj)`` atomically, flushed to disk (a set recorded on a vehicle
    must survive a power cut)."""
    with atomic_output(path, fsync=True) as tmp, open(tmp, "wb") as fh:
        write(fh)


def save_frame(path: Path, frame: Frame, store_images: bool = True, compress: bool = False) -> None:
    """Write one :class:`Frame` as an ``.npz`` atomically (see :func:`load_frame` for the keys)."""
    arrays: dict[str, np.ndarray] = {
        "token": np.array(frame.token),
        "scene_token": np.array(frame.scene_token),
        "timestamp_us": np.array(frame.timestamp_us, np.int64),
        "ego2global": np.asarray(frame.ego2global, np.float64),
    }
    if frame.points is not None:
        arrays["points"] = np.asarray(frame.points, np.float32)
    if frame.ego_velocity is not None:
        arrays["ego_velocity"] = np.asarray(frame.ego_velocity, np.float64)
    if store_images:
        arrays["camera_names"] = np.array([c.name for c in frame.cameras], dtype=str)
        for i, c in enumerate(frame.cameras):
            arrays[f"cam{i}_image"] = np.asarray(c.image, np.uint8)
            arrays[f"cam{i}_K"] = np.asarray(c.intrinsics, np.float64)
            arrays[f"cam{i}_cam2ego"] = np.asarray(c.cam2ego, np.float64)
            arrays[f"cam{i}_stamp"] = np.array(c.timestamp_us, np.int64)
    if frame.gt is not None:
        arrays["gt_boxes"] = np.asarray(frame.gt.boxes, np.float64)
        arrays["gt_labels"] = np.asarray(frame.gt.labels, np.int64)
        arrays["gt_scores"] = np.asarray(frame.gt.scores, np.float32)
    saver = np.savez_compressed if compress else np.savez
    _atomic_write_bytes(path, lambda fh: saver(fh, **arrays))


def check_frame(frame: Frame) -> str:
    """Why ``frame`` cannot be calibration data ("" when it can): non-finite points, poses or
    intrinsics, or coordinates beyond :data:`MAX_POINT_COORD_M`."""
    if frame.points is not None:
        pts = np.asarray(frame.points)
        if not np.isfinite(pts).all():
            return "points are not all finite"
        if pts.size and np.abs(pts[:, :3]).max() > MAX_POINT_COORD_M:
            return (
                f"points lie beyond {MAX_POINT_COORD_M:g} m (max |coordinate| {np.abs(pts[:, :3]).max():.3g})"
            )
    if not np.isfinite(np.asarray(frame.ego2global, np.float64)).all():
        return "ego2global is not finite"
    for c in frame.cameras:
        if not (np.isfinite(c.intrinsics).all() and np.isfinite(c.cam2ego).all()):
            return f"camera {c.name}: intrinsics or cam2ego not finite"
    return ""


def load_frame(path: Path) -> Frame:
    """Read a frame written by :func:`save_frame`; a frame :func:`check_frame` refuses is a
    ValueError naming the file (a calibration set must not calibrate on garbage)."""
    frame = _read_frame(path)
    why = check_frame(frame)
    if why:
        raise ValueError(f"calibration frame {path}: {why}; remove it (or re-record the set)")
    return frame


def _read_frame(path: Path) -> Frame:
    with np.load(path, allow_pickle=False) as z:
        cams: list[CameraInput] = []
        if "camera_names" in z:
            for i, name in enumerate(z["camera_names"].tolist()):
                cams.append(
                    CameraInput(
                        name=str(name),
                        image=z[f"cam{i}_image"],
                        intrinsics=z[f"cam{i}_K"],
                        cam2ego=z[f"cam{i}_cam2ego"],
                        timestamp_us=int(z[f"cam{i}_stamp"]),
                    )
                )
        gt = None
        if "gt_boxes" in z:
            gt = Detections(z["gt_boxes"], z["gt_labels"], z["gt_scores"])
        return Frame(
            token=str(z["token"]),
            scene_token=str(z["scene_token"]),
            timestamp_us=int(z["timestamp_us"]),
            ego2global=z["ego2global"],
            points=z["points"] if "points" in z else None,
            cameras=tuple(cams),
            ego_velocity=z["ego_velocity"] if "ego_velocity" in z else None,
            gt=gt,
        )


# ------------------------------------------------------------------------------------------- store


@dataclass
class _Entry:
    id: int
    file: str
    timestamp_us: int
    token: str
    features: np.ndarray  # raw (unstandardised) scene_features


@dataclass
class _RunningStats:
    """Welford mean/variance per feature over every frame offered (not only the kept ones)."""

    n: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(len(FEATURE_NAMES)))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(len(FEATURE_NAMES)))

    def update(self, x: np.ndarray) -> None:
        self.n += 1
        d = x - self.mean
        self.mean = self.mean + d / self.n
        self.m2 = self.m2 + d * (x - self.mean)

    def std(self) -> np.ndarray:
        var = self.m2 / max(self.n - 1, 1)
        # Constant features carry no information: unit scale keeps them inert instead of exploding.
        return np.where(var > 1e-12, np.sqrt(var), 1.0)


@dataclass(frozen=True)
class OfferResult:
    """What :meth:`CalibrationStore.offer` did with a frame."""

    considered: bool  # passed the sampling-rate gate
    stored: bool  # written to disk (now a member)
    evicted_id: int | None = None  # member removed to make room
    reason: str = ""


def input_layout(
    max_sweeps: int,
    modalities: Sequence[str] = ("lidar",),
    cameras: Sequence[str] = (),
    max_age_s: float | None = None,
    frame_id: str = "base_link",
) -> dict[str, Any]:
    """The input layout of a set's frames (``recorder.json``), written by every writer (the
    calibration node, ``qd-perception calibrate``) and read back by ``quantize``: the point
    columns (:data:`POINT_FEATURES`) and their frame, the lidar sweeps merged per frame (at most
    ``max_age_s`` seconds old; None: as the data set merges them), the modalities, and the
    cameras whose images are stored (``[]``: none)."""
    return {
        "points": list(POINT_FEATURES),
        "frame_id": frame_id,
        "max_sweeps": int(max_sweeps),
        "max_age_s": max_age_s,
        "modalities": list(modalities),
        "cameras": list(cameras),
    }


def check_and_write_layout(root: str | Path, layout: dict[str, Any], stored: int) -> None:
    """Refuse to add to a non-empty set written with another layout (frames of both would be
    mixed; a key the stored record lacks, from an older writer, is not compared), else write
    ``layout`` to ``root/recorder.json``. Raises :class:`~qd_perception.config.ConfigError`."""
    path = Path(root) / LAYOUT_NAME
    if stored and path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path} is unreadable ({e}); move the set away or delete {path}") from e
        diff = {k: (old[k], v) for k, v in layout.items() if k in old and old[k] != v}
        if diff:
            text = ", ".join(f"{k}: {a!r} stored, {b!r} now" for k, (a, b) in diff.items())
            raise ConfigError(
                f"calibration set {root} ({stored} frames) was recorded with another layout ({text}); "
                "frames of both would be mixed: use another directory or delete this set"
            )
    Path(root).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, layout)


class CalibrationStore:
    """Writer side: offer frames, keep a bounded diverse subset on disk. Not thread-safe."""

    def __init__(self, root: str | Path, cfg: CalibStoreConfig | None = None) -> None:
        self.root = Path(root)
        self.cfg = cfg or CalibStoreConfig()
        self._entries: list[_Entry] = []
        self._stats = _RunningStats()
        self._next_id = 0
        self._offered = 0
        self._considered = 0
        self._last_considered_us: int | None = None
        self._invalid = 0  # frames refused by check_frame (this session)
        self._last_index_write = -1e9
        self._check_root()
        (self.root / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
        self._load()

    @classmethod
    def open(cls, root: str | Path, cfg: CalibStoreConfig | None = None) -> CalibrationStore:
        """Open (or create) a store, resuming from its index when one exists."""
        return cls(root, cfg)

    def _check_root(self) -> None:
        """Refuse a non-empty directory that is not a calibration set (a mistyped ``out_dir``):
        the index is the store's marker (written when the store is created). An empty
        ``frames/`` alone is a store that crashed before its first index write."""
        if not self.root.exists() or (self.root / INDEX_NAME).exists():
            return
        if not self.root.is_dir():
            raise ValueError(f"calibration store {self.root} is not a directory")
        others = [p.name for p in self.root.iterdir() if not (p.name == FRAMES_DIR and p.is_dir())]
        frames = self.root / FRAMES_DIR
        if others or (frames.is_dir() and any(frames.iterdir())):
            shown = sorted(others)[:5] or [FRAMES_DIR]
            raise ValueError(
                f"{self.root} is not empty and is not a calibration set (no {INDEX_NAME}; holds "
                f"{shown}): refusing to write there. Choose another out_dir or an empty directory"
            )

    # ---- state
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        return len(self._entries) >= self.cfg.capacity

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self._entries]

    @property
    def counters(self) -> dict[str, int]:
        """Offered / considered counts since creation (persisted) and current size."""
        return {
            "offered": self._offered,
            "considered": self._considered,
            "stored": len(self._entries),
            "invalid": self._invalid,
        }

    def features(self) -> np.ndarray:
        """(M, F) raw scene features of the members, in member order."""
        if not self._entries:
            return np.zeros((0, len(FEATURE_NAMES)))
        return np.stack([e.features for e in self._entries])

    def standardized_features(self, extra: np.ndarray | None = None) -> np.ndarray:
        """Members' features (plus ``extra`` rows) standardised by the running statistics, with
        the class-histogram block scaled by ``class_weight``."""
        f = self.features()
        if extra is not None:
            f = np.concatenate([f, np.atleast_2d(extra)], 0)
        z = (f - self._stats.mean) / self._stats.std()
        z[:, 9:] *= self.cfg.class_weight
        return z

    # ---- writing
    def offer(self, frame: Frame, detections: Detections | None = None) -> OfferResult:
        """Offer one frame; keep it if it is valid (:func:`check_frame`) and the sampling gate
        and the diversity rule allow."""
        why = check_frame(frame)
        if why:
            self._invalid += 1
            return OfferResult(False, False, reason=f"invalid: {why}")
        self._offered += 1
        if (self._offered - 1) % self.cfg.sample_every != 0:
            return OfferResult(False, False, reason="sampling rate")
        if (
            self._last_considered_us is not None
            and self.cfg.min_interval_s > 0
            and 0 <= frame.timestamp_us - self._last_considered_us < self.cfg.min_interval_s * 1e6
        ):
            return OfferResult(False, False, reason="min interval")
        self._considered += 1
        self._last_considered_us = frame.timestamp_us
        x = scene_features(frame, detections)
        self._stats.update(x)
        if not self.full:
            self._add(frame, x)
            return OfferResult(True, True, reason="filling")
        victim = self._choose_victim(x)
        if victim is None:
            # Counters and statistics survive restarts; at most one index write per second for
            # rejections (a member change always writes it).
            if time.monotonic() - self._last_index_write > 1.0:
                self._write_index()
            return OfferResult(True, False, reason="redundant")
        old = self._entries.pop(victim)
        self._add(frame, x)  # index now lists the newcomer and no longer the victim
        (self.root / old.file).unlink(missing_ok=True)
        return OfferResult(True, True, evicted_id=old.id, reason="more diverse")

    def flush(self) -> None:
        """Write the index now (counters and statistics of rejected offers are written at most
        once a second otherwise). Call when done offering."""
        self._write_index()

    def _choose_victim(self, x: np.ndarray) -> int | None:
        """Index of the member to evict for candidate ``x``, or None to reject the candidate.

        Among members + candidate, take the closest pair; of its two elements drop the one whose
        second-nearest neighbour is closer (it is the more redundant). Ties keep the incumbent.
        """
        z = self.standardized_features(extra=x)
        d = np.linalg.norm(z[:, None, :] - z[None, :, :], axis=-1)
        np.fill_diagonal(d, np.inf)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        second = np.sort(d, axis=1)[:, 1] if len(d) > 2 else np.zeros(len(d))
        cand = len(d) - 1
        if cand in (i, j):
            other = j if i == cand else i
            drop = cand if second[cand] <= second[other] else other
        else:
            drop = i if second[i] < second[j] else j
        return None if drop == cand else int(drop)

    def _add(self, frame: Frame, x: np.ndarray) -> None:
        eid = self._next_id
        self._next_id += 1
        rel = f"{FRAMES_DIR}/{eid:08d}.npz"
        save_frame(self.root / rel, frame, self.cfg.store_images, self.cfg.compress)
        self._entries.append(_Entry(eid, rel, int(frame.timestamp_us), frame.token, x))
        self._write_index()

    def _write_index(self) -> None:
        data = {
            "version": INDEX_VERSION,
            "feature_names": list(FEATURE_NAMES),
            "capacity": self.cfg.capacity,
            "next_id": self._next_id,
            "offered": self._offered,
            "considered": self._considered,
            "last_considered_us": self._last_considered_us,
            "stats": {"n": self._stats.n, "mean": self._stats.mean.tolist(), "m2": self._stats.m2.tolist()},
            "frames": [
                {
                    "id": e.id,
                    "file": e.file,
                    "timestamp_us": e.timestamp_us,
                    "token": e.token,
                    "features": e.features.tolist(),
                }
                for e in self._entries
            ],
        }
        text = json.dumps(data, indent=1).encode()
        _atomic_write_bytes(self.root / INDEX_NAME, lambda fh: fh.write(text))
        self._last_index_write = time.monotonic()

    def _load(self) -> None:
        index = self.root / INDEX_NAME
        frames_dir = self.root / FRAMES_DIR
        if index.exists():
            data = _read_index(index)
            self._next_id = int(data["next_id"])
            self._offered = int(data.get("offered", 0))
            self._considered = int(data.get("considered", 0))
            self._last_considered_us = data.get("last_considered_us")
            st = data["stats"]
            self._stats = _RunningStats(int(st["n"]), np.asarray(st["mean"]), np.asarray(st["m2"]))
            for fr in data["frames"]:
                if not (self.root / fr["file"]).exists():
                    log.warning("calibration store %s: %s listed but missing; dropped", self.root, fr["file"])
                    continue
                self._entries.append(
                    _Entry(
                        int(fr["id"]),
                        fr["file"],
                        int(fr["timestamp_us"]),
                        fr["token"],
                        np.asarray(fr["features"], np.float64),
                    )
                )
        # A crash between writing a frame and the index (or between the index and deleting an
        # evicted frame) leaves files the index does not list: remove them, and temp files;
        # only names the store writes (anything else is not ours to delete).
        listed = {self.root / e.file for e in self._entries}
        for p in frames_dir.iterdir():
            if p in listed:
                continue
            if p.is_file() and _OWN_FRAME.match(p.name):
                p.unlink(missing_ok=True)
            else:
                log.warning("calibration store %s: %s is not the store's; left in place", self.root, p)
        for p in self.root.glob(f".{INDEX_NAME}.*.tmp"):
            p.unlink(missing_ok=True)
        if len(self._entries) > self.cfg.capacity:
            # Reopened with a smaller capacity: shrink by the same diversity rule.
            while len(self._entries) > self.cfg.capacity:
                z = self.standardized_features()
                d = np.linalg.norm(z[:, None] - z[None], axis=-1)
                np.fill_diagonal(d, np.inf)
                i, j = np.unravel_index(np.argmin(d), d.shape)
                second = np.sort(d, axis=1)[:, 1] if len(d) > 2 else np.zeros(len(d))
                old = self._entries.pop(int(i if second[i] < second[j] else j))
                (self.root / old.file).unlink(missing_ok=True)
        self._write_index()  # also the marker of a new store (see _check_root)


def _read_index(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"calibration index {path} is unreadable: {e}") from e
    if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
        raise ValueError(f"calibration index {path}: unsupported version {data.get('version')!r}")
    if list(data.get("feature_names", [])) != list(FEATURE_NAMES):
        raise ValueError(f"calibration index {path}: written with other scene features")
    return data


class CalibrationSet(Sequence[Frame]):
    """Read-only view of a calibration directory: ``len(cs)``, ``cs[i] -> Frame`` (ego frame points
    ``(P, 5)``, cameras when stored), in acquisition order. Frames are loaded on access."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index = self.root / INDEX_NAME
        if not index.exists():
            raise FileNotFoundError(f"{self.root} is not a calibration set (no {INDEX_NAME})")
        data = _read_index(index)
        entries = sorted(data["frames"], key=lambda f: (f["timestamp_us"], f["id"]))
        entries = [f for f in entries if (self.root / f["file"]).exists()]
        self._files = [self.root / f["file"] for f in entries]
        self.timestamps_us = [int(f["timestamp_us"]) for f in entries]
        #: (N, F) scene statistics of the frames (FEATURE_NAMES), in this set's order
        self.features = np.array([f["features"] for f in entries], np.float64).reshape(-1, len(FEATURE_NAMES))

    def diverse_indices(self, n: int) -> list[int]:
        """Indices of ``n`` frames spread over the set's scene statistics (greedy farthest-point
        on standardised features, starting from the frame closest to the mean), sorted. For a
        PTQ run that uses fewer frames than the set holds: better than the first ``n``."""
        if n >= len(self):
            return list(range(len(self)))
        if n <= 0:
            return []
        z = (self.features - self.features.mean(0)) / np.where(
            self.features.std(0) > 1e-12, self.features.std(0), 1.0
        )
        chosen = [int(np.argmin(np.linalg.norm(z, axis=1)))]
        d = np.linalg.norm(z - z[chosen[0]], axis=1)
        while len(chosen) < n:
            k = int(np.argmax(d))
            chosen.append(k)
            d = np.minimum(d, np.linalg.norm(z - z[k], axis=1))
        return sorted(chosen)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return load_frame(self._files[i])

    def __iter__(self) -> Iterator[Frame]:
        for p in self._files:
            yield load_frame(p)
