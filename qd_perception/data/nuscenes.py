"""nuScenes-format reader, for real nuScenes and the synthetic set alike -> :class:`Frame`.

Reads the JSON tables directly (not through ``nuscenes.NuScenes``: lighter, and the same code
path serves both data sets); the devkit is only used for its category -> detection-class map
and split lists, so labels and splits are exactly the official ones.

Per sample (keyframe) a :class:`~qd_perception.data.types.Frame` holds:

* ``points``: the keyframe lidar sweep plus up to ``nsweeps - 1`` previous sweeps, merged in
  the **ego frame of the keyframe**, as CenterPoint builds its nuScenes input: each sweep goes
  lidar -> ego(sweep time) -> global -> ego(keyframe), points within ``min_sweep_distance`` of
  the sensor are removed from the past sweeps (ego-vehicle returns), and the 5th column is the
  time lag in seconds (0 for the keyframe). Scenes' first keyframes have fewer sweeps (no
  padding by repetition).
* ``cameras``: the images with K and ``cam2ego`` = ego(keyframe) <- camera, which folds in the
  ego motion between the camera's and the keyframe's timestamps (zero for the synthetic set,
  whose keyframe images are taken at the lidar time).
* ``gt``: annotations of the 10 detection classes in the keyframe ego frame, with velocities
  estimated from the neighbouring annotations exactly as ``NuScenes.box_velocity`` does
  (unknown velocities are 0, as mmdetection3d stores them), attributes and ``num_lidar_pts``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from qd_perception.classes import CLASS_ID
from qd_perception.data.types import CameraInput, Detections, Frame
from qd_perception.geometry.boxes import transform_boxes
from qd_perception.geometry.rig import DEFAULT_CAMERAS
from qd_perception.geometry.transforms import invert, quat_to_yaw, transform_from_pose

#: nuScenes camera order (as the official tables and most BEV models use it): the default rig's.
NUSCENES_CAMERAS: tuple[str, ...] = DEFAULT_CAMERAS
LIDAR_CHANNEL = "LIDAR_TOP"
#: The project's split names -> custom split names in ``<version>/splits.json`` (synthetic set).
SPLIT_ALIASES: dict[str, str] = {"train": "synthetic_train", "val": "synthetic_val"}


class DatasetError(ValueError):
    """The data set on disk is missing, incomplete or does not have the requested split."""


def resolve_split(dataroot: Path, version: str, split: str) -> tuple[str, list[str] | None]:
    """(devkit eval-set name, scene names) of ``split``; scene names ``None`` means all scenes.

    Custom splits in ``<dataroot>/<version>/splits.json`` win (``train``/``val`` are looked up
    under their :data:`SPLIT_ALIASES` names, because the devkit reserves those names for the
    official nuScenes lists); otherwise the devkit's official splits (``train``, ``val``,
    ``mini_val``, ...) are used; ``"all"`` is every scene.
    """
    if split == "all":
        return "all", None
    custom = Path(dataroot) / version / "splits.json"
    if custom.is_file():
        splits = json.loads(custom.read_text())
        for name in (split, SPLIT_ALIASES.get(split, "")):
            if name in splits:
                return name, list(splits[name])
    from nuscenes.utils.splits import create_splits_scenes

    official = create_splits_scenes()
    if split in official:
        return split, list(official[split])
    known = sorted(set(official) | (set(json.loads(custom.read_text())) if custom.is_file() else set()))
    raise DatasetError(f"unknown split {split!r} for {dataroot}/{version}; known: {known}")


@dataclass(frozen=True)
class _Sweep:
    filename: str
    timestamp_us: int
    sensor2ego: np.ndarray
    ego2global: np.ndarray


class NuScenesReader:
    """Random access to the keyframes of one split of a nuScenes-format data set.

    Args:
        dataroot: folder holding ``<version>/``, ``samples/``, ``sweeps/``.
        version: table folder name, e.g. ``v1.0-trainval``, ``v1.0-mini``, ``v1.0-synthetic``.
        split: ``train``/``val`` (official or the synthetic set's), any custom split, or ``all``.
        nsweeps: lidar sweeps merged per frame (CenterPoint uses 10); 0 loads no points.
        load_images: decode the camera images (``False``: ``Frame.cameras`` is empty).
        cameras: camera channels to load, in this order (default: the nuScenes six present).
        min_sweep_distance: past-sweep points closer than this to the sensor are dropped (m).
    """

    def __init__(
        self,
        dataroot: str | Path,
        version: str = "v1.0-synthetic",
        split: str = "val",
        nsweeps: int = 10,
        load_images: bool = True,
        cameras: tuple[str, ...] | None = None,
        min_sweep_distance: float = 1.0,
    ) -> None:
        self.dataroot = Path(dataroot)
        self.version = version
        self.nsweeps = nsweeps
        self.load_images = load_images
        self.min_sweep_distance = min_sweep_distance
        table_dir = self.dataroot / version
        if not table_dir.is_dir():
            raise DatasetError(f"no nuScenes tables at {table_dir} (dataroot={dataroot}, version={version})")
        self.split = split
        self.eval_set, scene_names = resolve_split(self.dataroot, version, split)
        t = {n: self._load(table_dir, n) for n in _TABLES}
        self._by_token = {n: {r["token"]: r for r in rows} for n, rows in t.items()}
        self._channel = {
            r["token"]: self._by_token["sensor"][r["sensor_token"]]["channel"] for r in t["calibrated_sensor"]
        }
        self._category = {r["token"]: r["name"] for r in t["category"]}
        self._attribute = {r["token"]: r["name"] for r in t["attribute"]}
        self._key_data: dict[str, dict[str, str]] = {}
        for r in t["sample_data"]:
            if r["is_key_frame"]:
                self._key_data.setdefault(r["sample_token"], {})[
                    self._channel[r["calibrated_sensor_token"]]
                ] = r["token"]
        self._anns: dict[str, list[dict]] = {}
        for r in t["sample_annotation"]:
            self._anns.setdefault(r["sample_token"], []).append(r)
        wanted = None if scene_names is None else set(scene_names)
        self._scene_of: dict[str, str] = {}
        tokens: list[str] = []
        for scene in t["scene"]:
            if wanted is not None and scene["name"] not in wanted:
                continue
            tok = scene["first_sample_token"]
            while tok:
                tokens.append(tok)
                self._scene_of[tok] = scene["token"]
                tok = self._by_token["sample"][tok]["next"]
        if not tokens:
            raise DatasetError(
                f"split {split!r} of {table_dir} has no samples (scenes listed: {scene_names})"
            )
        self.sample_tokens: list[str] = tokens
        present = {ch for d in self._key_data.values() for ch in d}
        self.cameras = cameras if cameras is not None else tuple(c for c in NUSCENES_CAMERAS if c in present)

    @staticmethod
    def _load(table_dir: Path, name: str) -> list[dict]:
        path = table_dir / f"{name}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as e:
            raise DatasetError(f"missing nuScenes table {path}") from e
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path} is not valid JSON: {e}") from e

    # -- public --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sample_tokens)

    def __getitem__(self, i: int) -> Frame:
        return self.frame(self.sample_tokens[i])

    def index_of(self, token: str) -> int:
        return self._index[token]

    @cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.sample_tokens)}

    def scene_of(self, token: str) -> str:
        """Scene token of sample ``token``."""
        return self._scene_of[token]

    def scene_name(self, token: str) -> str:
        """Scene name (e.g. ``scene-0003``) of sample ``token``."""
        return self._by_token["scene"][self._scene_of[token]]["name"]

    def timestamp(self, token: str) -> int:
        return int(self._by_token["sample"][token]["timestamp"])

    def ego2global(self, token: str) -> np.ndarray:
        """(4, 4) ego pose at the keyframe lidar sweep of sample ``token``."""
        return self._sweep(self._key_data[token][LIDAR_CHANNEL]).ego2global

    def frame(self, token: str) -> Frame:
        if token not in self._scene_of:
            raise KeyError(f"sample {token} is not in split {self.split!r}")
        key = self._sweep(self._key_data[token][LIDAR_CHANNEL])
        return Frame(
            token=token,
            scene_token=self._scene_of[token],
            timestamp_us=key.timestamp_us,
            ego2global=key.ego2global,
            points=self.points(token) if self.nsweeps > 0 else None,
            cameras=self.camera_inputs(token) if self.load_images else (),
            ego_velocity=self.ego_velocity(token),
            gt=self.gt(token),
        )

    # -- lidar ---------------------------------------------------------------------------------
    def _sweep(self, sd_token: str) -> _Sweep:
        sd = self._by_token["sample_data"][sd_token]
        cs = self._by_token["calibrated_sensor"][sd["calibrated_sensor_token"]]
        ep = self._by_token["ego_pose"][sd["ego_pose_token"]]
        return _Sweep(
            sd["filename"],
            int(sd["timestamp"]),
            transform_from_pose(cs["translation"], cs["rotation"]),
            transform_from_pose(ep["translation"], ep["rotation"]),
        )

    def _read_bin(self, filename: str) -> np.ndarray:
        path = self.dataroot / filename
        try:
            raw = np.fromfile(path, dtype=np.float32)
        except FileNotFoundError as e:
            raise DatasetError(f"missing lidar file {path}") from e
        if raw.size % 5:
            raise DatasetError(f"{path}: {raw.size} floats is not a multiple of 5 (x, y, z, intensity, ring)")
        return raw.reshape(-1, 5)

    def points(self, token: str) -> np.ndarray:
        """(P, 5) float32 [x, y, z, intensity, time_lag] in the keyframe's ego frame."""
        sd_token = self._key_data[token][LIDAR_CHANNEL]
        key = self._sweep(sd_token)
        global2key = invert(key.ego2global)
        out = []
        for n in range(self.nsweeps):
            if n:
                sd_token = self._by_token["sample_data"][sd_token]["prev"]
                if not sd_token:
                    break
            sw = self._sweep(sd_token)
            raw = self._read_bin(sw.filename)
            xyz = raw[:, :3].astype(np.float64)
            if n:
                keep = np.linalg.norm(xyz[:, :2], axis=1) >= self.min_sweep_distance
                xyz, raw = xyz[keep], raw[keep]
            T = sw.sensor2ego if n == 0 else global2key @ sw.ego2global @ sw.sensor2ego
            pts = np.empty((len(raw), 5), np.float32)
            pts[:, :3] = xyz @ T[:3, :3].T + T[:3, 3]
            pts[:, 3] = raw[:, 3]
            pts[:, 4] = (key.timestamp_us - sw.timestamp_us) * 1e-6
            out.append(pts)
        return np.concatenate(out)

    def ego_velocity(self, token: str) -> np.ndarray | None:
        """(3,) ego velocity (m/s, keyframe ego frame) from the neighbouring lidar ego poses."""
        sd = self._by_token["sample_data"][self._key_data[token][LIDAR_CHANNEL]]
        a = sd["prev"] or sd["token"]
        b = sd["next"] or sd["token"]
        if a == b:
            return None
        sa, sb = self._sweep(a), self._sweep(b)
        dt = (sb.timestamp_us - sa.timestamp_us) * 1e-6
        v_global = (sb.ego2global[:3, 3] - sa.ego2global[:3, 3]) / dt
        return self._sweep(sd["token"]).ego2global[:3, :3].T @ v_global

    # -- cameras -------------------------------------------------------------------------------
    def camera_inputs(self, token: str) -> tuple[CameraInput, ...]:
        from PIL import Image

        key = self.ego2global(token)
        global2key = invert(key)
        out = []
        for cam in self.cameras:
            sd_token = self._key_data[token].get(cam)
            if sd_token is None:
                raise DatasetError(f"sample {token} has no {cam} keyframe image")
            sd = self._by_token["sample_data"][sd_token]
            cs = self._by_token["calibrated_sensor"][sd["calibrated_sensor_token"]]
            sw = self._sweep(sd_token)
            path = self.dataroot / sd["filename"]
            try:
                with Image.open(path) as im:
                    img = np.asarray(im.convert("RGB"))
            except FileNotFoundError as e:
                raise DatasetError(f"missing image {path}") from e
            out.append(
                CameraInput(
                    name=cam,
                    image=img,
                    intrinsics=np.asarray(cs["camera_intrinsic"], dtype=np.float64),
                    cam2ego=global2key @ sw.ego2global @ sw.sensor2ego,
                    timestamp_us=sw.timestamp_us,
                )
            )
        return tuple(out)

    # -- ground truth --------------------------------------------------------------------------
    def _velocity(self, ann: dict, max_time_diff: float = 1.5) -> np.ndarray:
        """Global (vx, vy) as ``NuScenes.box_velocity`` computes it; NaN when unknown."""
        get = self._by_token["sample_annotation"]
        first = get[ann["prev"]] if ann["prev"] else ann
        last = get[ann["next"]] if ann["next"] else ann
        if first is last:
            return np.array([np.nan, np.nan])
        ts = self._by_token["sample"]
        dt = (ts[last["sample_token"]]["timestamp"] - ts[first["sample_token"]]["timestamp"]) * 1e-6
        limit = 2 * max_time_diff if (ann["prev"] and ann["next"]) else max_time_diff
        if dt > limit:
            return np.array([np.nan, np.nan])
        return (np.asarray(last["translation"][:2]) - np.asarray(first["translation"][:2])) / dt

    def gt(self, token: str) -> Detections:
        """Ground truth of the 10 detection classes in the keyframe ego frame."""
        from nuscenes.eval.detection.utils import category_to_detection_name

        boxes, labels, attrs, ids, npts = [], [], [], [], []
        for a in self._anns.get(token, []):
            inst = self._by_token["instance"][a["instance_token"]]
            name = category_to_detection_name(self._category[inst["category_token"]])
            if name is None:
                continue
            w, l, h = a["size"]
            v = self._velocity(a)
            boxes.append(
                [*a["translation"], l, w, h, quat_to_yaw(np.asarray(a["rotation"])), *np.nan_to_num(v)]
            )
            labels.append(CLASS_ID[name])
            attrs.append(self._attribute[a["attribute_tokens"][0]] if a["attribute_tokens"] else "")
            ids.append(a["instance_token"])
            npts.append(a["num_lidar_pts"])
        if not boxes:
            return Detections.empty()
        ego = transform_boxes(np.asarray(boxes, dtype=np.float64), invert(self.ego2global(token)))
        return Detections(
            boxes=ego,
            labels=np.asarray(labels, np.int64),
            scores=np.ones(len(labels), np.float32),
            attributes=tuple(attrs),
            instance_ids=np.asarray(ids),
            num_lidar_pts=np.asarray(npts, np.int64),
        )


_TABLES = (
    "category",
    "attribute",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
)
