"""Per-stage cost of the ``bev_detector`` path on the camera sets of a real (synthetic) rosbag2.

Runs, in this one process, what the camera node does per synchronised camera set, stage by stage,
on every complete set of the bag (the six ``Image`` messages as raw CDR, as the executor
receives them), and prints p50 / p95 / max per stage in milliseconds plus a markdown row for
docs/benchmarks.md:

``deserialize`` (rclpy CDR -> six Python messages, the executor's share), ``convert``
(:func:`image_to_rgb8`), ``prepare`` (resize to the network input + the temporal inputs: the
detector's own ``last_timing``), ``network`` (the ONNX Runtime session or torch forward),
``decode``, ``to_msg`` (``Detection3DArray`` CDR) and ``markers`` (``MarkerArray`` CDR).
``resize_f32`` is the image resize as it was before the uint8 path (through float32), timed on the
same six images beside ``prepare`` and not counted in the total: the before / after of that stage
in one run.

::

    .venv/bin/python -m qd_perception.cli sim --out .cache/bench/cam/sim --scenes 1 --samples 4 --seed 5 --bag
    nice -n 10 .venv/bin/python benchmarks/camera_path_profile.py --bag .cache/bench/cam/sim/bags/<scene> \
        --model weights/bevformer_nano_w4a6_ort --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("deserialize", "convert", "prepare", "network", "decode", "to_msg", "markers")


def resize_f32(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The resize before the uint8 path: through float32 (kept here as the 'before' reference)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=size_hw, mode="bilinear", align_corners=False, antialias=True)
    return t[0].round().clamp(0, 255).to(torch.uint8).numpy()


def main() -> None:
    from benchmarks.common import cpu_line

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bag", type=Path, required=True)
    ap.add_argument("--model", default="weights/bevformer_nano_w4a6_ort", help="checkpoint or ONNX artefact")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and ORT (0: default)")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the bag's camera sets")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: this process's CPU time")
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from qd_perception.data.types import CameraInput, Frame
    from qd_perception.geometry.rig import load_rig
    from qd_perception.ros.bag_player import open_reader
    from qd_perception.ros.convert import detections_to_cdr, image_to_rgb8, stamp_to_ns
    from qd_perception.ros.markers import detections_to_markers_cdr
    from qd_perception.runtime.bev import load_bev_detector
    from qd_perception.topics import image_topic

    det = load_bev_detector(args.model, threads=args.threads)
    cams = det.cfg.camera_names
    by_topic = {image_topic(c): c for c in cams}
    sets: dict[int, dict[str, bytes]] = defaultdict(dict)
    reader = open_reader(args.bag)
    try:
        conns = [c for c in reader.connections if c.topic in by_topic]
        for c, _t, raw in reader.messages(connections=conns):
            m = deserialize_message(bytes(raw), Image)
            sets[stamp_to_ns(m.header.stamp)][by_topic[c.topic]] = bytes(raw)
    finally:
        reader.close()
    complete = [(s, v) for s, v in sorted(sets.items()) if len(v) == len(cams)]
    if not complete:
        raise SystemExit(f"{args.bag} has no complete camera set of {cams}")
    rig = load_rig()
    first = deserialize_message(complete[0][1][cams[0]], Image)
    hw = (int(first.height), int(first.width))
    K = {c: rig.intrinsics(c, hw) for c in cams}
    E = {c: rig.cam2ego(c) for c in cams}

    def frame_of(stamp: int, images: dict[str, np.ndarray]) -> Frame:
        cameras = tuple(CameraInput(c, images[c], K[c], E[c], stamp // 1000) for c in cams)
        return Frame(str(stamp), "live", stamp // 1000, np.eye(4), cameras=cameras)

    warm = {c: image_to_rgb8(deserialize_message(complete[0][1][c], Image)) for c in cams}
    d = det.detect(frame_of(complete[0][0], warm))
    detections_to_cdr(d, 0, "base_link")
    detections_to_markers_cdr(d, 0, "base_link")
    det.reset()
    times = {s: [] for s in (*STAGES, "resize_f32")}
    n_dets = []
    for _ in range(args.repeat):
        det.reset()
        for stamp, raws in complete:
            t0 = clock()
            msgs = {c: deserialize_message(raws[c], Image) for c in cams}
            t1 = clock()
            images = {c: image_to_rgb8(m) for c, m in msgs.items()}
            t2 = clock()
            dets = det.detect(frame_of(stamp, images))
            t3 = clock()
            detections_to_cdr(dets, stamp, "base_link")
            t4 = clock()
            detections_to_markers_cdr(dets, stamp, "base_link")
            t5 = clock()
            for img in images.values():
                resize_f32(img, det.cfg.image_size)
            t6 = clock()
            lt = det.last_timing  # wall clock inside detect(): split detect's own (clock) time by it
            split = np.array([lt.preprocess_ms, lt.inference_ms, lt.postprocess_ms])
            parts = split / max(split.sum(), 1e-9) * (t3 - t2) * 1e3
            for s, v in zip(("deserialize", "convert"), ((t1 - t0), (t2 - t1))):
                times[s].append(v * 1e3)
            for s, v in zip(("prepare", "network", "decode"), parts):
                times[s].append(float(v))
            times["to_msg"].append((t4 - t3) * 1e3)
            times["markers"].append((t5 - t4) * 1e3)
            times["resize_f32"].append((t6 - t5) * 1e3)
            n_dets.append(len(dets))
    total = np.sum([times[s] for s in STAGES], axis=0)
    print(cpu_line())
    print(
        f"{args.model}: {len(complete)} camera sets x {args.repeat}, {len(cams)} cameras at "
        f"{hw[1]}x{hw[0]} -> {det.cfg.image_size[1]}x{det.cfg.image_size[0]}, {np.median(n_dets):.0f} "
        f"detections/set (median), {args.threads} thread(s), {args.clock} clock, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"{'stage':<12} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    row = []
    for s, v in [*((s, times[s]) for s in STAGES), ("total", total), ("resize_f32", times["resize_f32"])]:
        p50, p95, mx = np.percentile(v, 50), np.percentile(v, 95), np.max(v)
        print(f"{s:<12} {p50:8.2f} {p95:8.2f} {mx:8.2f}")
        row.append(f"{p50:.1f} / {p95:.1f}")
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
