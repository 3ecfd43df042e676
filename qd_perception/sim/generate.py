"""Generate a synthetic data set: N scenes x M keyframes -> nuScenes format (+ rosbag2 per scene).

Schedule of one scene (timestamps in integer microseconds from the scene's ``start_us``):

* keyframes (samples) every 0.5 s (2 Hz, as nuScenes), ``M`` of them: duration = M / 2 s;
* lidar sweeps at ``rig.lidar.rate_hz`` (a keyframe is the sweep at the keyframe time);
* cameras at ``rig.camera_rate_hz`` inside each keyframe interval, the first at the keyframe
  time (keyframe images); the frames between keyframes are rendered only when they are stored
  (``camera_sweeps`` for nuScenes ``sweeps/``, or a bag);
* odometry at ``odom_rate_hz`` (bag only); ground truth at every lidar sweep (bag) and at every
  keyframe (nuScenes ``sample_annotation``).

Scenes are independent: they run in a process pool (``workers``), each worker writes its sensor
files and returns its table records, the parent merges them in scene order. Tokens and files
depend only on (seed, scene index), never on the worker count, so the output is byte-identical
for the same seed.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

from qd_perception.config import to_dict
from qd_perception.sim.bag_writer import BagSceneWriter
from qd_perception.sim.nuscenes_writer import (
    DEFAULT_VERSION,
    NuScenesSceneWriter,
    Tables,
    atomic_write_bytes,
    make_token,
    map_record,
    static_tables,
    write_splits,
)
from qd_perception.sim.types import SceneSource

KEYFRAME_PERIOD_US = 500_000


@dataclass(frozen=True)
class GenerateConfig:
    scenes: int = 4
    samples: int = 8  # keyframes per scene (duration = samples / 2 s)
    seed: int = 0
    resolution: tuple[int, int] = (450, 800)  # camera (H, W)
    version: str = DEFAULT_VERSION
    bag: bool = False  # also write bags/<scene>/ (rosbag2 MCAP)
    # camera frames in the bag: every frame (12 Hz), keyframes only (2 Hz) or none (lidar-only
    # replay; rendering the 12 Hz cameras dominates the generation time)
    bag_cameras: Literal["all", "keyframes", "none"] = "all"
    camera_sweeps: bool = False  # store camera frames between keyframes in sweeps/
    # lidar between keyframes: every sweep at the rig's rate, or none (camera training sets: the
    # keyframe sweep still gives the devkit its point counts and the depth targets their points)
    lidar_sweeps: Literal["all", "keyframes"] = "all"
    val_fraction: float = 0.2  # last scenes go to val (at least one)
    workers: int = 2
    jpeg_quality: int = 90
    odom_rate_hz: float = 50.0
    world_config: str = ""  # SimConfig YAML (e.g. config/sim/default.yaml); "" = SimConfig() defaults

    def __post_init__(self) -> None:
        if self.scenes < 1 or self.samples < 1:
            raise ValueError(f"need at least 1 scene and 1 sample, got {self.scenes} x {self.samples}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lidar_sweeps not in ("all", "keyframes"):
            raise ValueError(f"lidar_sweeps must be all or keyframes, got {self.lidar_sweeps!r}")
        if self.lidar_sweeps == "keyframes" and self.bag:
            raise ValueError("lidar_sweeps=keyframes writes no bag (a bag replays the lidar at its rate)")
        if self.bag_cameras not in ("all", "keyframes", "none"):
            raise ValueError(f"bag_cameras must be all, keyframes or none, got {self.bag_cameras!r}")
        if min(self.resolution) < 8:
            raise ValueError(f"resolution {self.resolution} too small")


@dataclass(frozen=True)
class Schedule:
    keyframes: tuple[int, ...]  # us
    lidar: tuple[int, ...]
    cameras: tuple[int, ...]  # camera frames to render
    odom: tuple[int, ...]


def scene_name(index: int) -> str:
    return f"scene-{index:04d}"


def split_scenes(n: int, val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, val) scene names: the last ``max(1, round(n * val_fraction))`` scenes are val."""
    n_val = max(1, round(n * val_fraction))
    names = [scene_name(i) for i in range(n)]
    return names[: n - n_val], names[n - n_val :]


def make_schedule(
    source: SceneSource, samples: int, all_cameras: bool, odom_rate_hz: float, lidar_sweeps: bool = True
) -> Schedule:
    rig = source.rig
    t0, t_end = source.start_us, source.end_us
    keyframes = tuple(t0 + k * KEYFRAME_PERIOD_US for k in range(samples))
    if keyframes[-1] > t_end:
        raise ValueError(f"scene {source.name} ends at {t_end} us, before keyframe {samples - 1}")
    lidar_period = round(1e6 / rig.lidar.rate_hz)
    if KEYFRAME_PERIOD_US % lidar_period:
        raise ValueError(f"lidar rate {rig.lidar.rate_hz} Hz does not divide the 2 Hz keyframe rate")
    lidar = tuple(range(t0, t_end, lidar_period)) if lidar_sweeps else keyframes
    step = 1e6 / rig.camera_rate_hz
    cams: list[int] = []
    for k in keyframes:
        stop = min(k + KEYFRAME_PERIOD_US, t_end) if all_cameras else k + 1
        cams += [
            t for t in (k + round(i * step) for i in range(int(KEYFRAME_PERIOD_US / step) + 1)) if t < stop
        ]
    odom_period = round(1e6 / odom_rate_hz)
    return Schedule(keyframes, lidar, tuple(sorted(set(cams))), tuple(range(t0, t_end, odom_period)))


# -- one scene ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneResult:
    tables: Tables  # this scene's records
    trajectory: np.ndarray  # (T, 3) ego positions at the lidar sweeps, global frame
    log_token: str
    camera_names: tuple[str, ...]


def write_scene(
    source: SceneSource,
    out: Path,
    cfg: GenerateConfig,
    index: int,
    progress: Callable[[int], None] | None = None,
) -> SceneResult:
    """Render and write one scene (sensor files, bag); returns its records."""
    name = scene_name(index)
    all_cameras = cfg.camera_sweeps or (cfg.bag and cfg.bag_cameras == "all")
    sched = make_schedule(
        source, cfg.samples, all_cameras, cfg.odom_rate_hz, lidar_sweeps=cfg.lidar_sweeps == "all"
    )
    nus = NuScenesSceneWriter(
        out, seed=cfg.seed, scene_name=name, description=source.description, rig=source.rig,
        resolution=source.resolution, keyframe_times=sched.keyframes, jpeg_quality=cfg.jpeg_quality,
    )  # fmt: skip
    key_index = {t: k for k, t in enumerate(sched.keyframes)}
    # Events in time order; at equal times odometry first, then lidar (+ GT), then cameras.
    events = sorted(
        [(t, 0) for t in sched.odom] * cfg.bag
        + [(t, 1) for t in sched.lidar]
        + [(t, 2) for t in sched.cameras]
    )
    bag = (
        BagSceneWriter(out / "bags" / name, source.rig, source.resolution, cfg.bag_cameras != "none")
        if cfg.bag
        else None
    )
    try:
        if bag is not None:
            bag.__enter__()
        for t, kind in events:
            k = key_index.get(t)
            if kind == 0:
                bag.add_odometry(source.ego(t))
            elif kind == 1:
                sweep = source.lidar(t)
                nus.add_lidar(sweep, k)
                ann = source.annotations(t) if (k is not None or bag is not None) else None
                if k is not None:
                    nus.add_annotations(k, ann, sweep)
                if bag is not None:
                    bag.add_lidar(sweep)
                    bag.add_ground_truth(t, sweep.ego2global, ann, sweep)
            else:
                images = source.cameras(t)
                if k is not None or cfg.camera_sweeps:
                    nus.add_cameras(images, k)
                if bag is not None and (
                    cfg.bag_cameras == "all" or (cfg.bag_cameras == "keyframes" and k is not None)
                ):
                    bag.add_cameras(images)
                if k is not None and progress is not None:
                    progress(1)
    except BaseException as e:
        if bag is not None:
            bag.__exit__(type(e), e, None)
        raise
    if bag is not None:
        bag.__exit__(None, None, None)
    return SceneResult(nus.finish(), np.array(nus.trajectory), nus.log_token, source.rig.camera_names)


def _world_scene(cfg: GenerateConfig, index: int) -> SceneSource:
    """The procedural world's scene ``index`` (imported lazily: the writers do not need it)."""
    from dataclasses import replace

    from qd_perception.config import load_yaml
    from qd_perception.sim.config import SimConfig
    from qd_perception.sim.world import make_scene

    base = load_yaml(SimConfig, cfg.world_config) if cfg.world_config else SimConfig()
    duration_s = cfg.samples * KEYFRAME_PERIOD_US / 1e6
    sim = replace(base, resolution=tuple(cfg.resolution), duration_s=duration_s)
    return make_scene(sim, cfg.seed, index)


SceneFactory = Callable[[GenerateConfig, int], SceneSource]

_progress_queue: mp.SimpleQueue | None = None


def _init_worker(q: mp.SimpleQueue) -> None:
    global _progress_queue
    _progress_queue = q


def _run_scene(factory: SceneFactory, out: Path, cfg: GenerateConfig, index: int):
    q = _progress_queue
    report = (lambda n: q.put(n)) if q is not None else None
    return write_scene(factory(cfg, index), out, cfg, index, report)


def generate(
    cfg: GenerateConfig, out: Path, factory: SceneFactory | None = None, show_progress: bool = True
) -> Path:
    """Write the data set to ``out`` (the nuScenes dataroot); returns ``out``.

    Refuses to write into an existing data set of the same version. ``factory(cfg, index)``
    builds a scene (default: the procedural world); it must be picklable when ``workers > 1``.
    """
    from tqdm import tqdm

    out = Path(out)
    if (out / cfg.version).exists():
        raise FileExistsError(f"{out / cfg.version} exists: choose a new --out (nothing was written)")
    if (out / "bags").exists() and cfg.bag:
        raise FileExistsError(f"{out / 'bags'} exists: choose a new --out (nothing was written)")
    out.mkdir(parents=True, exist_ok=True)
    if factory is None:
        # Import the world once here, so forked workers share the parent's code.
        import qd_perception.sim.world  # noqa: F401

        factory = _world_scene
    bar = tqdm(total=cfg.scenes * cfg.samples, unit="keyframe", desc="sim", disable=not show_progress)
    try:
        results = _run_all(cfg, out, factory, bar)
    except BaseException:
        remove_partial(out)
        raise
    finally:
        bar.close()

    tables = static_tables(results[0].camera_names)
    for r in results:
        tables.extend(r.tables)
    logs, trajectories = [r.log_token for r in results], [r.trajectory for r in results]
    tables.rows["map"].append(map_record(out, cfg.seed, logs, trajectories))
    train, val = split_scenes(cfg.scenes, cfg.val_fraction)
    tables.write(out, cfg.version)
    write_splits(out, cfg.version, train, val)
    # The worker count does not change the output, so it is not recorded (same seed => same bytes).
    meta = {
        "generator": "qd_perception.sim.generate",
        "config": {k: v for k, v in to_dict(cfg).items() if k != "workers"},
        "dataset_token": make_token(cfg.seed),
    }
    atomic_write_bytes(out / cfg.version / "sim_config.yaml", yaml.safe_dump(meta, sort_keys=False).encode())
    return out


def remove_partial(out: Path) -> None:
    """Remove bags left in ``bags/.partial`` by an interrupted run (and ``bags/`` if then empty)."""
    bags = Path(out) / "bags"
    shutil.rmtree(bags / ".partial", ignore_errors=True)
    if bags.is_dir() and not any(bags.iterdir()):
        bags.rmdir()


def _run_all(cfg: GenerateConfig, out: Path, factory: SceneFactory, bar) -> list[SceneResult]:
    """Write every scene (in a process pool when ``cfg.workers > 1``); results in scene order."""
    job = partial(_run_scene, factory, out, cfg)
    workers = max(1, min(cfg.workers, cfg.scenes))
    if workers == 1:
        _init_worker(None)
        results = [write_scene(factory(cfg, i), out, cfg, i, bar.update) for i in range(cfg.scenes)]
    else:
        ctx = mp.get_context("fork")
        q = ctx.SimpleQueue()
        with ctx.Pool(workers, initializer=_init_worker, initargs=(q,)) as pool:
            pending = pool.map_async(job, range(cfg.scenes), chunksize=1)
            while not pending.ready():
                while not q.empty():
                    bar.update(q.get())
                pending.wait(0.2)
            results = pending.get()  # re-raises a worker's exception
            while not q.empty():
                bar.update(q.get())
    return results


def visible_class_counts(dataroot: Path, version: str = DEFAULT_VERSION) -> dict[str, dict[str, int]]:
    """split (``train``/``val``) -> class -> annotations with >= 1 lidar point (what the devkit scores)."""
    import json

    from qd_perception.classes import CATEGORY_OF_CLASS, CLASS_NAMES
    from qd_perception.data.nuscenes import SPLIT_ALIASES

    table = Path(dataroot) / version

    def load(name: str) -> list[dict]:
        return json.loads((table / f"{name}.json").read_text())

    class_of = {v: k for k, v in CATEGORY_OF_CLASS.items()}
    category = {c["token"]: class_of.get(c["name"]) for c in load("category")}
    cls_of_inst = {i["token"]: category[i["category_token"]] for i in load("instance")}
    scene_name_of = {s["token"]: s["name"] for s in load("scene")}
    scene_of_sample = {s["token"]: scene_name_of[s["scene_token"]] for s in load("sample")}
    splits = json.loads((table / "splits.json").read_text())
    split_of = {name: split for split, alias in SPLIT_ALIASES.items() for name in splits.get(alias, [])}
    counts = {split: dict.fromkeys(CLASS_NAMES, 0) for split in SPLIT_ALIASES}
    for a in load("sample_annotation"):
        split = split_of.get(scene_of_sample[a["sample_token"]])
        cls = cls_of_inst[a["instance_token"]]
        if split is not None and cls is not None and a["num_lidar_pts"] > 0:
            counts[split][cls] += 1
    return counts
