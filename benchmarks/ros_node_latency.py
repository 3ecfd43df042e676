"""Detector node latency and sustained input rate: 6 cameras at 450x800 + a 35k-point sweep.

A real ``lidar_detector`` process synchronises the lidar sweep with all six camera images
(``inputs: [lidar, cameras]``, the input set of the full graph) plus odometry, runs the classical
baseline and publishes detections. This script publishes the inputs at each ``--rates`` value
over loopback DDS (Fast DDS with the project's large shared-memory profile) and measures, per
frame, *pipeline latency* = detections received - input stamp (the stamp is the wall-clock time
the frame was published), i.e. transport of 6.5 MB, conversion, synchronisation, detection and
publishing. A rate is *sustained* when >= 95 % of the frames come out and p95 latency stays
below 1 s. Prints markdown rows for docs/benchmarks.md::

    nice -n 10 .venv/bin/python benchmarks/ros_node_latency.py --rates 2,5,10,15 --duration 10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
os.environ["ROS_DOMAIN_ID"] = str(200 + os.getpid() % 30)
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds.xml"))
os.environ.setdefault("ROS_LOG_DIR", str(ROOT / ".cache" / "ros_log"))

from qd_perception.geometry.rig import DEFAULT_CAMERAS, load_rig  # noqa: E402
from qd_perception.geometry.transforms import invert  # noqa: E402

NODE = "bench_detector"


def scene_cloud(n_points: int, seed: int = 0) -> np.ndarray:
    """(n, 4) lidar-frame points: ground ring + a dozen car-sized blocks, like one sweep."""
    rng = np.random.default_rng(seed)
    n_obj = n_points // 3
    cars = rng.uniform([-40, -20], [40, 20], size=(12, 2))
    k = rng.integers(0, 12, n_obj)
    obj = np.stack(
        [
            cars[k, 0] + rng.uniform(-2.3, 2.3, n_obj),
            cars[k, 1] + rng.uniform(-1, 1, n_obj),
            rng.uniform(0.2, 1.7, n_obj),
        ],
        1,
    )
    r = rng.uniform(3, 60, n_points - n_obj)
    a = rng.uniform(-np.pi, np.pi, n_points - n_obj)
    ground = np.stack([r * np.cos(a), r * np.sin(a), rng.normal(0, 0.02, len(r))], 1)
    xyz = np.concatenate([obj, ground])
    T = invert(load_rig().lidar2ego())
    xyz = xyz @ T[:3, :3].T + T[:3, 3]
    return np.concatenate([xyz, rng.uniform(0, 100, (len(xyz), 1))], 1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="2,5,10,15")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per rate")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--points", type=int, default=35_000)
    ap.add_argument("--resolution", default="450x800")
    args = ap.parse_args()
    H, W = (int(v) for v in args.resolution.split("x"))

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from qd_perception.msg import Detection3DArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image, PointCloud2

    from qd_perception.ros.convert import array_to_pointcloud2, ns_to_stamp, numpy_to_image

    cams = DEFAULT_CAMERAS
    node_cmd = [
        sys.executable, "-m", "qd_perception.ros.nodes.lidar_detector", "--ros-args",
        "-r", f"__node:={NODE}", "-r", "~/input/pointcloud:=/bench/points", "-r", "~/input/odom:=/bench/odom",
        "-p", "inputs:=[lidar, cameras]", "-p", f"image_size:=[{H}, {W}]", "-p", "sync.slop_s:=0.02",
        "-p", "latency_window:=20", "-p", "detector.name:=classical", "-p", "sweeps.max_sweeps:=1",
    ]  # fmt: skip
    for c in cams:
        node_cmd += ["-r", f"~/input/{c.lower()}/image:=/bench/{c.lower()}/image"]
    log = open(ROOT / ".cache" / "bench_node.log", "wb")
    proc = subprocess.Popen(node_cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    rclpy.init()
    pub_node = rclpy.create_node("bench_publisher")
    sub_node = rclpy.create_node("bench_subscriber")
    recv: dict[int, int] = {}

    def on_det(msg: Detection3DArray) -> None:
        recv[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = time.time_ns()

    sub_node.create_subscription(
        Detection3DArray, f"/{NODE}/output/detections", on_det, QoSProfile(depth=100)
    )
    diag: dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        diag.update({kv.key: kv.value for kv in msg.status[0].values})

    sub_node.create_subscription(DiagnosticArray, f"/{NODE}/output/diagnostics", on_diag, 10)
    ex = SingleThreadedExecutor()
    ex.add_node(sub_node)
    stop = threading.Event()
    spin = threading.Thread(target=lambda: [ex.spin_once(timeout_sec=0.05) for _ in iter(stop.is_set, True)])
    spin.start()

    qos = qos_profile_sensor_data
    pub_cloud = pub_node.create_publisher(PointCloud2, "/bench/points", qos)
    pub_odom = pub_node.create_publisher(Odometry, "/bench/odom", qos)
    pub_img = {c: pub_node.create_publisher(Image, f"/bench/{c.lower()}/image", qos) for c in cams}
    pts = scene_cloud(args.points)
    arr = np.zeros(len(pts), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    arr["x"], arr["y"], arr["z"], arr["intensity"] = pts.T
    cloud = array_to_pointcloud2(arr, 0, "lidar_top")
    rng = np.random.default_rng(1)
    images = {
        c: numpy_to_image(rng.integers(0, 255, (H, W, 3), np.uint8), "rgb8", 0, c.lower()) for c in cams
    }
    odom = Odometry()
    odom.pose.pose.orientation.w = 1.0

    end = time.monotonic() + 60
    while (
        pub_cloud.get_subscription_count() < 1 or sub_node.count_publishers(f"/{NODE}/output/detections") < 1
    ):
        if time.monotonic() > end or proc.poll() is not None:
            raise SystemExit("detector node did not come up; see .cache/bench_node.log")
        time.sleep(0.1)
    time.sleep(1.0)

    def publish_frame() -> int:
        t = time.time_ns()
        stamp = ns_to_stamp(t)
        odom.header.stamp = stamp
        pub_odom.publish(odom)
        for c in cams:
            images[c].header.stamp = stamp
            pub_img[c].publish(images[c])
        cloud.header.stamp = stamp
        pub_cloud.publish(cloud)
        return t

    print(f"# {os.cpu_count()} cores; node: lidar_detector (classical) syncing lidar + 6 cameras + odom")
    print(
        f"# inputs per frame: 6 x {H}x{W} rgb8 ({6 * H * W * 3 / 1e6:.1f} MB) + {len(pts)}-point PointCloud2"
    )
    print(f"# load average (1 min) at start: {os.getloadavg()[0]:.1f}")
    cols = [
        "input rate Hz",
        "frames in",
        "frames out",
        "out %",
        "latency p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "node processing p50 ms (last 20)",
        "inputs dropped (total)",
        "sets dropped busy (total)",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    sustained = 0.0
    for rate in [float(r) for r in args.rates.split(",")]:
        period = 1.0 / rate
        sent: list[int] = []
        t_next = time.monotonic()
        t_end_warm = t_next + args.warmup
        t_end = t_end_warm + args.duration
        while time.monotonic() < t_end:
            t = publish_frame()
            if time.monotonic() >= t_end_warm:
                sent.append(t)
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
        time.sleep(2.0)  # drain
        lat = np.array([(recv[t] - t) / 1e6 for t in sent if t in recv])
        out = len(lat) / max(len(sent), 1)
        p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if len(lat) else (np.nan,) * 3
        mx = lat.max() if len(lat) else np.nan
        cells = [f"{rate:g}", len(sent), len(lat), f"{100 * out:.0f}", f"{p50:.0f}", f"{p95:.0f}"]
        cells += [f"{p99:.0f}", f"{mx:.0f}"]
        cells += [f"{float(diag.get('processing_ms.p50', 'nan')):.0f}", diag.get("sync.dropped", "?")]
        cells += [diag.get("dropped_busy", "?")]
        print("| " + " | ".join(str(c) for c in cells) + " |")
        sys.stdout.flush()
        if out >= 0.95 and p95 < 1000:
            sustained = max(sustained, rate)
    print(f"\nmax sustained input rate (>= 95 % out, p95 < 1 s) among those tried: {sustained:g} Hz")
    stop.set()
    spin.join()
    proc.send_signal(2)
    proc.wait(15)
    log.close()
    tail = (ROOT / ".cache" / "bench_node.log").read_text().strip().splitlines()[-1:]
    print("# node: " + " ".join(tail))
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
