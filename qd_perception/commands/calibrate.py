"""``qd-perception calibrate``: build a PTQ calibration set from a nuScenes-format data set.

Uses the same store as the ``calibration_recorder`` node (:mod:`qd_perception.data.calib_store`):
frames are offered in data-set order and a bounded, diverse subset is kept on disk. Offline, the
object mix comes from the data set's ground truth (the node uses the detector's output instead).
Re-running into the same ``--out`` resumes: frames already offered are offered again but the
store's diversity rule decides, so the set converges instead of duplicating.

Writes ``OUT/index.json``, ``OUT/frames/*.npz``, ``OUT/recorder.json`` (the input layout: sweeps
merged per frame, modalities, cameras; the same record as the calibration node's, which
``quantize`` checks against the model) and ``OUT/selection.png`` (scene statistics of all offered
frames vs. the kept ones). ``--nsweeps`` must be the sweep count of the model the set will
calibrate (5 for the shipped CenterPoints, the default): ``quantize lidar`` refuses a set recorded
with another; re-running into an ``--out`` written with another layout is refused too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from qd_perception.fileio import atomic_output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="nuScenes-format dataroot")
    p.add_argument("--version", default="v1.0-synthetic")
    p.add_argument("--split", default="train", help="split to draw from (train, val, all, ...)")
    p.add_argument("--out", type=Path, required=True, help="calibration set directory")
    p.add_argument("--frames", type=int, default=128, help="size of the calibration set")
    p.add_argument("--sample-every", type=int, default=1, help="consider one frame in K")
    p.add_argument(
        "--nsweeps",
        type=int,
        default=5,
        help="lidar sweeps merged per frame: the model's (the shipped CenterPoints read 5)",
    )
    p.add_argument("--no-images", action="store_true", help="lidar only: do not load or store images")
    p.add_argument("--class-weight", type=float, default=1.0, help="weight of the object mix in diversity")
    p.add_argument("--compress", action="store_true", help="np.savez_compressed frames")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from qd_perception.config import ConfigError
    from qd_perception.data.calib_store import (
        FEATURE_NAMES,
        CalibrationStore,
        CalibStoreConfig,
        check_and_write_layout,
        input_layout,
        scene_features,
    )
    from qd_perception.data.nuscenes import DatasetError, NuScenesReader

    try:
        cfg = CalibStoreConfig(
            capacity=args.frames,
            sample_every=args.sample_every,
            store_images=not args.no_images,
            class_weight=args.class_weight,
            compress=args.compress,
        )
        reader = NuScenesReader(
            args.data, args.version, args.split, nsweeps=args.nsweeps, load_images=not args.no_images
        )
        store = CalibrationStore.open(args.out, cfg)
        cameras = () if args.no_images else reader.cameras
        modalities = ("lidar",) if args.no_images else ("lidar", "cameras")
        check_and_write_layout(args.out, input_layout(args.nsweeps, modalities, cameras), len(store))
    except (DatasetError, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"qd-perception calibrate: {e}", file=sys.stderr)
        return 2
    offered = []
    for i in tqdm(range(len(reader)), desc="calibrate", unit="frame"):
        frame = reader[i]
        store.offer(frame)
        offered.append(scene_features(frame))
    store.flush()
    kept = store.features()
    print(
        f"calibration set {args.out}: {len(store)} frames kept of {len(reader)} offered "
        f"({store.counters['considered']} considered since creation)"
    )
    if offered:
        _plot(np.stack(offered), kept, FEATURE_NAMES, args.out / "selection.png")
        print(f"selection plot: {args.out / 'selection.png'}")
    return 0


def _plot(offered: np.ndarray, kept: np.ndarray, names: tuple[str, ...], path: Path) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [("log_points", "frac_far_40m"), ("image_brightness", "log_objects")]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4))
    for ax, (a, b) in zip(np.atleast_1d(axes), pairs):
        ia, ib = names.index(a), names.index(b)
        ax.scatter(offered[:, ia], offered[:, ib], s=8, c="0.7", label="offered")
        if len(kept):
            ax.scatter(kept[:, ia], kept[:, ib], s=30, facecolors="none", edgecolors="C3", label="kept")
        ax.set_xlabel(a)
        ax.set_ylabel(b)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("calibration set selection (scene statistics)")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
