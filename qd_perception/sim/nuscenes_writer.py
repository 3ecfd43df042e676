"""Write simulated scenes in the real nuScenes format (tables + ``.pcd.bin`` + ``.jpg``).

Layout under ``dataroot`` (as nuScenes)::

    <version>/{scene,sample,sample_data,ego_pose,calibrated_sensor,sensor,log,map,
               category,attribute,visibility,instance,sample_annotation}.json
    <version>/splits.json                      custom splits (see below)
    maps/<token>.png                            map image (ego trajectories)
    samples/LIDAR_TOP/<scene>__LIDAR_TOP__<t>.pcd.bin   keyframe sweeps, float32 x5
    sweeps/LIDAR_TOP/...                        the sweeps between keyframes
    samples/CAM_*/<scene>__CAM_*__<t>.jpg       keyframe images
    sweeps/CAM_*/...                            images between keyframes (optional)

``.pcd.bin`` rows are ``[x, y, z, intensity 0..255, ring]`` float32 in the lidar sensor frame.

**Splits.** nuscenes-devkit 1.2.0 treats ``train``/``val``/``test``/``mini_*`` as the official
nuScenes scene lists (and asserts the version ends with ``trainval``/``mini``); any other split
name is looked up in ``<dataroot>/<version>/splits.json``. So the synthetic set writes its
splits as ``synthetic_train`` / ``synthetic_val`` (see :data:`SPLIT_ALIASES`) and the project's
reader and evaluator map ``train``/``val`` to them when the version has a ``splits.json``. The
devkit itself accepts any version string (it only checks that ``<dataroot>/<version>`` exists).

A sweep's ``sample_token`` is the nearest keyframe in time (as in nuScenes). Annotation
``visibility_token`` is the world's visibility level (1..4); a scene source that gives none
gets level 4. ``num_lidar_pts`` counts the keyframe sweep's points carrying the object's
instance id; ``num_radar_pts`` is 0 (no radar).

Tokens are 32-hex-digit hashes of (seed, scene, record kind, index): the same seed gives the
same tokens and the same bytes.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from qd_perception import fileio
from qd_perception.classes import ATTRIBUTE_NAMES, CATEGORY_OF_CLASS, CLASS_NAMES
from qd_perception.data.nuscenes import SPLIT_ALIASES
from qd_perception.fileio import atomic_write_bytes
from qd_perception.geometry.rig import Rig
from qd_perception.geometry.transforms import matrix_to_quat, yaw_to_quat
from qd_perception.sim.types import Annotations, CameraImage, LidarSweep

DEFAULT_VERSION = "v1.0-synthetic"
LIDAR_CHANNEL = "LIDAR_TOP"
TABLE_NAMES: tuple[str, ...] = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)
#: nuScenes visibility levels (fraction of the object visible in all six images).
VISIBILITY_LEVELS: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)

Record = dict[str, object]


def make_token(*parts: object) -> str:
    """Deterministic nuScenes-style token (32 hex digits) from the given parts."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def atomic_write_json(path: Path, obj: object) -> None:
    """A nuScenes table (or other JSON) written atomically, one value per line as the devkit's."""
    fileio.atomic_write_json(path, obj, indent=0)


def _floats(a: np.ndarray) -> list[float]:
    return [float(x) for x in np.asarray(a, dtype=np.float64).reshape(-1)]


@dataclass
class Tables:
    """The 13 nuScenes tables as lists of records (JSON-ready dicts)."""

    rows: dict[str, list[Record]] = field(default_factory=lambda: {n: [] for n in TABLE_NAMES})

    def extend(self, other: Tables) -> None:
        for n in TABLE_NAMES:
            self.rows[n].extend(other.rows[n])

    def write(self, dataroot: Path, version: str) -> None:
        for n in TABLE_NAMES:
            atomic_write_json(Path(dataroot) / version / f"{n}.json", self.rows[n])


def static_tables(camera_names: tuple[str, ...]) -> Tables:
    """Tables shared by all scenes: category, attribute, visibility, sensor."""
    t = Tables()
    for c in CLASS_NAMES:
        t.rows["category"].append(
            {"token": make_token("category", CATEGORY_OF_CLASS[c]), "name": CATEGORY_OF_CLASS[c],
             "description": f"synthetic {c}", "index": len(t.rows["category"])}
        )  # fmt: skip
    for a in ATTRIBUTE_NAMES:
        t.rows["attribute"].append({"token": make_token("attribute", a), "name": a, "description": a})
    for tok, level, desc in VISIBILITY_LEVELS:
        t.rows["visibility"].append({"token": tok, "level": level, "description": desc})
    for ch, modality in [(LIDAR_CHANNEL, "lidar"), *[(c, "camera") for c in camera_names]]:
        t.rows["sensor"].append({"token": sensor_token(ch), "channel": ch, "modality": modality})
    return t


def sensor_token(channel: str) -> str:
    return make_token("sensor", channel)


def map_record(dataroot: Path, seed: int, log_tokens: list[str], trajectories: list[np.ndarray]) -> Record:
    """Write ``maps/<token>.png`` (the ego trajectories of all logs, north up) and its record."""
    token = make_token(seed, "map")
    size = 512
    img = np.full((size, size), 255, np.uint8)
    pts = np.concatenate([t[:, :2] for t in trajectories]) if trajectories else np.zeros((1, 2))
    lo, hi = pts.min(0) - 20.0, pts.max(0) + 20.0
    scale = (size - 1) / max(float((hi - lo).max()), 1.0)
    for t in trajectories:
        px = ((t[:, :2] - lo) * scale).astype(int)
        img[size - 1 - px[:, 1], px[:, 0]] = 0
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    filename = f"maps/{token}.png"
    atomic_write_bytes(Path(dataroot) / filename, buf.getvalue())
    return {"token": token, "log_tokens": log_tokens, "category": "semantic_prior", "filename": filename}


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class NuScenesSceneWriter:
    """Collects one scene's records and writes its sensor files.

    Call :meth:`add_lidar` for every lidar sweep and :meth:`add_cameras` for every camera
    frame that should be stored, in time order, with ``keyframe`` set on the sweeps/frames that
    make a sample, then :meth:`add_annotations` once per keyframe, then :meth:`finish`.
    """

    def __init__(
        self,
        dataroot: Path,
        *,
        seed: int,
        scene_name: str,
        description: str,
        rig: Rig,
        resolution: tuple[int, int],
        keyframe_times: tuple[int, ...],
        jpeg_quality: int = 90,
    ) -> None:
        self.root = Path(dataroot)
        self.seed = seed
        self.name = scene_name
        self.description = description
        self.rig = rig
        self.resolution = resolution
        self.jpeg_quality = jpeg_quality
        self.keyframe_times = np.asarray(keyframe_times, dtype=np.int64)
        self.t = Tables()
        self.scene_token = self._tok("scene")
        self.log_token = self._tok("log")
        self._samples: list[Record] = []
        self._last_sd: dict[str, Record] = {}
        self._last_ann: dict[int, Record] = {}
        self._instances: dict[int, Record] = {}
        self.trajectory: list[np.ndarray] = []
        self._calib: dict[str, str] = {}
        for ch in (LIDAR_CHANNEL, *rig.camera_names):
            self._calib[ch] = self._tok("calibrated_sensor", ch)
            if ch == LIDAR_CHANNEL:
                T, K = rig.lidar2ego(), []
            else:
                T, K = rig.cam2ego(ch), rig.intrinsics(ch, resolution).tolist()
            self.t.rows["calibrated_sensor"].append(
                {"token": self._calib[ch], "sensor_token": sensor_token(ch), "translation": _floats(T[:3, 3]),
                 "rotation": _floats(matrix_to_quat(T[:3, :3])), "camera_intrinsic": K}
            )  # fmt: skip

    def _tok(self, *parts: object) -> str:
        return make_token(self.seed, self.name, *parts)

    def sample_token(self, keyframe: int) -> str:
        return self._tok("sample", keyframe)

    # -- sensor data -------------------------------------------------------------------------
    def _sample_data(
        self, channel: str, t_us: int, ego2global: np.ndarray, keyframe: int | None, ext: str, data: bytes
    ) -> Record:
        folder = "samples" if keyframe is not None else "sweeps"
        filename = f"{folder}/{channel}/{self.name}__{channel}__{t_us}.{ext}"
        atomic_write_bytes(self.root / filename, data)
        token = self._tok("sample_data", channel, t_us)
        self.t.rows["ego_pose"].append(
            {"token": token, "timestamp": int(t_us), "rotation": _floats(matrix_to_quat(ego2global[:3, :3])),
             "translation": _floats(ego2global[:3, 3])}
        )  # fmt: skip
        is_cam = channel != LIDAR_CHANNEL
        H, W = self.resolution if is_cam else (0, 0)
        # A sweep's sample is the nearest keyframe in time, as in nuScenes.
        k = keyframe if keyframe is not None else int(np.argmin(np.abs(self.keyframe_times - t_us)))
        rec: Record = {
            "token": token, "sample_token": self.sample_token(k), "ego_pose_token": token,
            "calibrated_sensor_token": self._calib[channel], "timestamp": int(t_us),
            "fileformat": "jpg" if is_cam else "pcd", "is_key_frame": keyframe is not None,
            "height": H, "width": W, "filename": filename, "prev": "", "next": "",
        }  # fmt: skip
        prev = self._last_sd.get(channel)
        if prev is not None:
            prev["next"] = token
            rec["prev"] = prev["token"]
        self._last_sd[channel] = rec
        self.t.rows["sample_data"].append(rec)
        return rec

    def add_lidar(self, sweep: LidarSweep, keyframe: int | None) -> None:
        if keyframe is not None:
            self._add_sample(keyframe, sweep.timestamp_us)
        self.trajectory.append(sweep.ego2global[:3, 3].copy())
        pts = np.ascontiguousarray(sweep.points[:, :5], dtype=np.float32)
        self._sample_data(
            LIDAR_CHANNEL, sweep.timestamp_us, sweep.ego2global, keyframe, "pcd.bin", pts.tobytes()
        )

    def add_cameras(self, images: list[CameraImage], keyframe: int | None) -> None:
        for im in images:
            if im.image.shape[:2] != tuple(self.resolution):
                raise ValueError(f"{im.camera}: image {im.image.shape[:2]} != resolution {self.resolution}")
            data = encode_jpeg(im.image, self.jpeg_quality)
            self._sample_data(im.camera, im.timestamp_us, im.ego2global, keyframe, "jpg", data)

    def _add_sample(self, keyframe: int, t_us: int) -> None:
        if keyframe != len(self._samples):
            raise ValueError(f"keyframes must come in order: got {keyframe}, expected {len(self._samples)}")
        rec: Record = {"token": self.sample_token(keyframe), "timestamp": int(t_us), "prev": "", "next": "",
                       "scene_token": self.scene_token}  # fmt: skip
        if self._samples:
            self._samples[-1]["next"] = rec["token"]
            rec["prev"] = self._samples[-1]["token"]
        self._samples.append(rec)
        self.t.rows["sample"].append(rec)

    # -- annotations ---------------------------------------------------------------------------
    def add_annotations(self, keyframe: int, ann: Annotations, lidar: LidarSweep) -> None:
        """Ground truth of keyframe ``keyframe``; ``lidar`` is its keyframe sweep (for point counts)."""
        if keyframe >= len(self._samples):
            raise ValueError(f"add the keyframe lidar sweep of sample {keyframe} before its annotations")
        ids, counts = np.unique(lidar.instance_ids[lidar.instance_ids >= 0], return_counts=True)
        npts = dict(zip(ids.tolist(), counts.tolist()))
        vis = np.asarray(ann.visibility)
        for i in range(len(ann)):
            iid = int(ann.instance_ids[i])
            cls = ann.class_names[i]
            b = np.asarray(ann.boxes[i], dtype=np.float64)
            inst = self._instances.get(iid)
            token = self._tok("sample_annotation", iid, keyframe)
            if inst is None:
                inst = {"token": self._tok("instance", iid),
                        "category_token": make_token("category", CATEGORY_OF_CLASS[cls]),
                        "nbr_annotations": 0, "first_annotation_token": token,
                        "last_annotation_token": ""}  # fmt: skip
                self._instances[iid] = inst
                self.t.rows["instance"].append(inst)
            attr = ann.attributes[i]
            rec: Record = {
                "token": token, "sample_token": self.sample_token(keyframe), "instance_token": inst["token"],
                "visibility_token": str(int(vis[i])) if len(vis) == len(ann) else "4",
                "attribute_tokens": [make_token("attribute", attr)] if attr else [],
                "translation": _floats(b[0:3]), "size": _floats([b[4], b[3], b[5]]),
                "rotation": _floats(yaw_to_quat(float(b[6]))), "prev": "", "next": "",
                "num_lidar_pts": int(npts.get(iid, 0)), "num_radar_pts": 0,
            }  # fmt: skip
            prev = self._last_ann.get(iid)
            if prev is not None:
                prev["next"] = token
                rec["prev"] = prev["token"]
            self._last_ann[iid] = rec
            inst["nbr_annotations"] = int(inst["nbr_annotations"]) + 1
            inst["last_annotation_token"] = token
            self.t.rows["sample_annotation"].append(rec)

    def finish(self) -> Tables:
        """Scene and log records; returns this scene's tables (map/static tables are global)."""
        if not self._samples:
            raise ValueError(f"scene {self.name} has no keyframe")
        self.t.rows["log"].append(
            {"token": self.log_token, "logfile": self.name, "vehicle": "qd-sim",
             "date_captured": "2026-01-01", "location": "synthetic"}
        )  # fmt: skip
        self.t.rows["scene"].append(
            {"token": self.scene_token, "log_token": self.log_token, "nbr_samples": len(self._samples),
             "first_sample_token": self._samples[0]["token"], "last_sample_token": self._samples[-1]["token"],
             "name": self.name, "description": self.description}
        )  # fmt: skip
        return self.t


def write_splits(dataroot: Path, version: str, train: list[str], val: list[str]) -> None:
    """``<dataroot>/<version>/splits.json`` with the custom split names the devkit can evaluate."""
    atomic_write_json(
        Path(dataroot) / version / "splits.json",
        {SPLIT_ALIASES["train"]: list(train), SPLIT_ALIASES["val"]: list(val)},
    )
