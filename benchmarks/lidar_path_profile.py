"""Per-stage cost of the ``lidar_detector`` path on the sweeps of a real (synthetic) rosbag2.

Runs, in this one process and on one core, exactly what the node does per sweep, stage by stage,
on every ``PointCloud2`` of the bag (raw CDR as the executor receives it) and prints p50 / p95 /
max per stage in milliseconds plus a markdown row for docs/benchmarks.md:

``deserialize`` (rclpy CDR -> Python message, the executor's share), ``convert``
(:func:`pointcloud2_to_xyzi` + lidar -> ego), ``sweeps`` (:class:`SweepAccumulator`), ``detect``
(the classical baseline), ``to_msg`` (``Detection3DArray``), ``markers`` (``MarkerArray``), both
composed as the CDR bytes the node publishes (``serialize`` is kept as a column: nothing is left
to serialise, it stays ~0). ``--cprofile`` adds the top functions.

``detect`` runs the detector the flags describe (default: the classical baseline on single
sweeps); the lidar node's shipped configuration is ``--detector centerpoint --model
weights/centerpoint_pillar_cpu.pt --sweeps 5`` (``--backend onnxruntime --model <export or
quantize lidar dir>`` for ORT FP32 / INT8).

::

    .venv/bin/python -m qd_perception.cli sim --out .cache/bench/rf/sim --scenes 1 --samples 8 --seed 5 --bag
    nice -n 10 .venv/bin/python benchmarks/lidar_path_profile.py --bag .cache/bench/rf/sim/bags/<scene>
    nice -n 10 .venv/bin/python benchmarks/lidar_path_profile.py --bag .cache/bench/rf/sim/bags/<scene> \
        --detector centerpoint --model weights/centerpoint_pillar_cpu.pt --sweeps 5 --threads 1
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("deserialize", "convert", "sweeps", "detect", "to_msg", "markers", "serialize")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bag", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=1, help="passes over the bag's sweeps")
    ap.add_argument("--cprofile", action="store_true", help="print the top functions by cumulative time")
    ap.add_argument("--detector", default="classical", help="detector name (classical, centerpoint)")
    ap.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"))
    ap.add_argument("--model", default="", help="detector model path (checkpoint or export dir)")
    ap.add_argument("--sweeps", type=int, default=1, help="sweeps merged, as the node's sweeps.max_sweeps")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU time (shared machine)",
    )
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from nav_msgs.msg import Odometry
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    from qd_perception.geometry.rig import load_rig
    from qd_perception.ros.bag_player import open_reader
    from qd_perception.ros.convert import (
        detections_to_cdr,
        odometry_to_pose,
        pointcloud2_to_xyzi,
        stamp_to_ns,
    )
    from qd_perception.ros.markers import detections_to_markers_cdr
    from qd_perception.runtime.factory import DetectorConfig, build_detector
    from qd_perception.runtime.sweeps import SweepAccumulator, SweepConfig
    from qd_perception.topics import LIDAR_TOPIC, ODOM_TOPIC

    reader = open_reader(args.bag)
    raw_clouds, odoms = [], []
    try:
        conns = [c for c in reader.connections if c.topic in (LIDAR_TOPIC, ODOM_TOPIC)]
        for c, _t, raw in reader.messages(connections=conns):
            if c.topic == LIDAR_TOPIC:
                raw_clouds.append(bytes(raw))
            else:
                m = deserialize_message(bytes(raw), Odometry)
                odoms.append((stamp_to_ns(m.header.stamp), odometry_to_pose(m)[0]))
    finally:
        reader.close()
    if not raw_clouds:
        raise SystemExit(f"{args.bag} has no {LIDAR_TOPIC}")
    odom_t = np.array([t for t, _ in odoms], np.int64)

    lidar2ego = load_rig().lidar2ego().astype(np.float32)
    if args.threads and args.detector == "centerpoint" and args.backend == "onnxruntime":
        from qd_perception.runtime.centerpoint import OrtCenterPointDetector

        det = OrtCenterPointDetector(args.model, threads=args.threads)  # the factory uses ORT's default
    else:
        det = build_detector(DetectorConfig(name=args.detector, model_path=args.model, backend=args.backend))
    sweeps = SweepAccumulator(SweepConfig(max_sweeps=args.sweeps))
    times = {s: [] for s in STAGES}
    n_points, n_merged, n_dets = [], [], []
    from qd_perception.data.types import Frame

    # The node warms its detector up at start-up (first call: lazy imports); so does this.
    warm = pointcloud2_to_xyzi(deserialize_message(raw_clouds[0], PointCloud2))[0]
    det.detect(Frame("warmup", "warmup", 0, np.eye(4), np.concatenate([warm, 0 * warm[:, :1]], 1)))
    prof = cProfile.Profile() if args.cprofile else None
    for _ in range(args.repeat):
        det.reset()
        sweeps.reset()
        for raw in raw_clouds:
            t0 = clock()
            msg = deserialize_message(raw, PointCloud2)
            t1 = clock()
            if prof:
                prof.enable()
            xyzi, _ = pointcloud2_to_xyzi(msg)
            xyzi[:, :3] = xyzi[:, :3] @ lidar2ego[:3, :3].T + lidar2ego[:3, 3]
            t2 = clock()
            stamp = stamp_to_ns(msg.header.stamp)
            k = int(np.argmin(np.abs(odom_t - stamp))) if len(odoms) else -1
            pose = odoms[k][1] if k >= 0 else None
            pts = sweeps.add(xyzi, stamp // 1000, pose)
            t3 = clock()
            frame = Frame(str(stamp), "live", stamp // 1000, pose if pose is not None else np.eye(4), pts)
            dets = det.detect(frame)
            t4 = clock()
            detections_to_cdr(dets, stamp, "base_link")
            t5 = clock()
            detections_to_markers_cdr(dets, stamp, "base_link")
            t6 = clock()
            if prof:
                prof.disable()
            t7 = clock()  # the node publishes those bytes as they are
            for s, a, b in zip(STAGES, (t0, t1, t2, t3, t4, t5, t6), (t1, t2, t3, t4, t5, t6, t7)):
                times[s].append((b - a) * 1e3)
            n_points.append(len(xyzi))
            n_merged.append(len(pts))
            n_dets.append(len(dets))
    total = np.sum([times[s] for s in STAGES], axis=0)
    print(
        f"{args.detector} ({args.backend}), {len(raw_clouds)} sweeps x {args.repeat}, "
        f"{np.median(n_points):.0f} points/sweep (median), {args.sweeps} sweep(s) merged, "
        f"{np.median(n_merged):.0f} points/frame (median), {np.median(n_dets):.0f} detections/sweep "
        f"(median), {args.clock} clock, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'stage':<12} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    row = []
    for s, v in [*times.items(), ("total", total)]:
        p50, p95, mx = np.percentile(v, 50), np.percentile(v, 95), np.max(v)
        print(f"{s:<12} {p50:8.2f} {p95:8.2f} {mx:8.2f}")
        row.append(f"{p50:.1f} / {p95:.1f}")
    print("| " + " | ".join(row) + " |")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
