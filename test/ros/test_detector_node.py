"""The lidar detector node as a real process: good frames, every kind of bad input, clock jumps,
missing odometry, silent/bad cameras, skipped inference, configuration errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ros_harness import Driver, NodeProcess, check_interface, diag_values, expected_interface

from qd_perception.classes import MEAN_SIZE_LWH
from qd_perception.geometry.rig import load_rig
from qd_perception.geometry.transforms import invert
from qd_perception.topics import DETECTOR_PORTS, ODOM_INPUT, POINTCLOUD_INPUT, image_input

LIDAR_T = "/t/points"
ODOM_T = "/t/odom"
CAMS = ("CAM_FRONT", "CAM_BACK")
NODE = "lidar_detector"
CAR = (12.0, 3.0)  # ego frame


def car_cloud(rng: np.random.Generator, car=CAR) -> np.ndarray:
    """(P, 4) ego-frame points: a car's two visible faces, its roof and a ground plane."""
    L, W, H = MEAN_SIZE_LWH["car"]
    x, y = car
    rear = np.stack(np.meshgrid(np.arange(-W / 2, W / 2, 0.1), np.arange(0.05, H, 0.1)), -1).reshape(-1, 2)
    side = np.stack(np.meshgrid(np.arange(-L / 2, L / 2, 0.1), np.arange(0.05, H, 0.1)), -1).reshape(-1, 2)
    roof = np.stack(np.meshgrid(np.arange(-L / 2, L / 2, 0.2), np.arange(-W / 2, W / 2, 0.2)), -1).reshape(
        -1, 2
    )
    pts = [
        np.stack([np.full(len(rear), x - L / 2), y + rear[:, 0], rear[:, 1]], 1),
        np.stack([x + side[:, 0], np.full(len(side), y - W / 2), side[:, 1]], 1),
        np.stack([x + roof[:, 0], y + roof[:, 1], np.full(len(roof), H)], 1),
    ]
    g = rng.uniform(-30, 30, (4000, 2))
    pts.append(np.concatenate([g, np.zeros((len(g), 1))], 1))
    xyz = np.concatenate(pts)
    return np.concatenate([xyz, np.full((len(xyz), 1), 40.0)], 1).astype(np.float32)


def cloud_msg(xyzi_ego: np.ndarray, stamp_ns: int, frame: str = "lidar_top", drop_field: str = ""):
    """PointCloud2 in the lidar frame with the simulator's padded layout (24 bytes per point)."""
    from qd_perception.ros.convert import array_to_pointcloud2
    from qd_perception.sim.rosmsgs import POINT_DTYPE

    pts = xyzi_ego.astype(np.float64)
    if frame == "lidar_top":
        T = invert(load_rig().lidar2ego())
        pts[:, :3] = pts[:, :3] @ T[:3, :3].T + T[:3, 3]
    arr = np.zeros(len(pts), POINT_DTYPE)
    for i, k in enumerate(("x", "y", "z", "intensity")):
        arr[k] = pts[:, i]
    if drop_field:
        names = [n for n in POINT_DTYPE.names if n != drop_field]
        arr = arr[names]
    return array_to_pointcloud2(arr, stamp_ns, frame)


def odom_msg(stamp_ns: int, x: float = 0.0):
    from nav_msgs.msg import Odometry

    from qd_perception.ros.convert import ns_to_stamp

    m = Odometry()
    m.header.stamp = ns_to_stamp(stamp_ns)
    m.header.frame_id = "map"
    m.child_frame_id = "base_link"
    m.pose.pose.position.x = x
    m.pose.pose.orientation.w = 1.0
    return m


def image_msg(stamp_ns: int, cam: str, hw=(90, 160), encoding="rgb8"):
    from qd_perception.ros.convert import numpy_to_image

    arr = np.full((*hw, 3), 100, np.uint8)
    return numpy_to_image(arr, encoding, stamp_ns, f"{cam.lower()}_optical")


def node_args(extra: list[str] = (), cams: bool = False, name: str = NODE, lidar: str = LIDAR_T) -> list[str]:
    # The classical baseline on one sweep (fast and model-free), not the node's default CenterPoint.
    args = [
        *("-p", "detector.name:=classical", "-p", "sweeps.max_sweeps:=1"),
        "-r",
        f"__node:={name}",
        "-r",
        f"~/input/pointcloud:={lidar}",
        "-r",
        f"~/input/odom:={ODOM_T}",
        "-p",
        "diagnostics_period_s:=0.2",
        "-p",
        "stall_warn_s:=1.0",
        "-p",
        "sync.slop_s:=0.03",
    ]
    if cams:
        args += ["-p", "inputs:=[lidar, cameras]", "-p", f"cameras:=[{', '.join(CAMS)}]"]
        args += ["-p", "image_size:=[90, 160]"]
        for c in CAMS:
            args += ["-r", f"~/input/{c.lower()}/image:=/t/{c.lower()}/image"]
    return [*args, *extra]


class Harness:
    def __init__(
        self, driver: Driver, proc: NodeProcess, name: str = NODE, lidar_topic: str = LIDAR_T
    ) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from qd_perception.msg import Detection3DArray

        self.d, self.proc = driver, proc
        self.dets = driver.record(Detection3DArray, f"/{name}/output/detections")
        self.diags = driver.record(DiagnosticArray, f"/{name}/output/diagnostics")
        self.rng = np.random.default_rng(0)
        self.t = 1_000 * 10**9
        assert proc.wait_output("detector 'classical'", 15), proc.output()
        # Wait for the node's subscription before any cloud: best-effort samples sent before the
        # match are lost.
        from sensor_msgs.msg import PointCloud2

        driver.publisher(PointCloud2, lidar_topic)
        assert driver.wait_for_subscribers(lidar_topic), "node did not subscribe"
        assert driver.wait_for_publishers(f"/{name}/output/detections"), "detections not matched"
        driver.spin(0.5)  # discovery of the outputs

    def diag(self, key: str, fresh: bool = True) -> float:
        """Latest diagnostics value of ``key`` (waits for a message newer than now)."""
        n = len(self.diags)
        if fresh:
            assert self.d.spin_until(lambda: len(self.diags) > n + 1, 5), "no diagnostics"
        return float(diag_values(self.diags[-1]).get(key, 0))

    def good_frame(self, odom: bool = True, cams: tuple[str, ...] = ()) -> object:
        """Publish one complete frame; return the detections the node publishes for it."""
        self.t += 100_000_000
        stamp = self.t
        if odom:
            self.d.publish(ODOM_T, odom_msg(stamp))
        for c in cams:
            self.d.publish(f"/t/{c.lower()}/image", image_msg(stamp + 2_000_000, c))
        self.d.publish(LIDAR_T, cloud_msg(car_cloud(self.rng), stamp))
        ok = self.d.spin_until(lambda: any(_stamp(m) == stamp for m in self.dets), 10)
        assert ok, f"no detections for the frame at {stamp}; node output:\n{self.proc.output()[-3000:]}"
        return next(m for m in self.dets if _stamp(m) == stamp)


def _stamp(m) -> int:
    return m.header.stamp.sec * 10**9 + m.header.stamp.nanosec


@pytest.fixture(scope="module")
def lidar_node(driver, tmp_path_factory):
    proc = NodeProcess.module(
        "qd_perception.ros.nodes.lidar_detector", node_args(), tmp_path_factory.mktemp("n") / "node.log"
    )
    h = Harness(driver, proc)
    yield h
    assert proc.stop() == 0, proc.output()[-2000:]
    assert "shutting down" in proc.output()


def test_good_frame_detections_and_markers(lidar_node, driver):
    from visualization_msgs.msg import Marker, MarkerArray

    markers = driver.record(MarkerArray, f"/{NODE}/output/markers")
    driver.spin(0.5)
    msg = lidar_node.good_frame()
    assert msg.header.frame_id == "base_link"
    cars = [d for d in msg.detections if d.class_name == "car"]
    assert cars, [d.class_name for d in msg.detections]
    best = min(cars, key=lambda d: np.hypot(d.box.center.x - CAR[0], d.box.center.y - CAR[1]))
    assert np.hypot(best.box.center.x - CAR[0], best.box.center.y - CAR[1]) < 1.0
    assert 0 < best.score <= 1 and best.class_id == 0
    assert driver.spin_until(lambda: len(markers) > 0, 5)
    m = markers[-1].markers
    assert m[0].action == Marker.DELETEALL
    boxes = [x for x in m if x.type == Marker.LINE_LIST]
    labels = [x for x in m if x.type == Marker.TEXT_VIEW_FACING]
    assert len(boxes) == len(labels) >= 1 and len(boxes[0].points) == 24
    assert labels[0].text.startswith(msg.detections[0].class_name)
    assert lidar_node.diag("frames_out") >= 1
    assert lidar_node.diag("processing_ms.p50") > 0


@pytest.mark.parametrize(
    "case,reason",
    [
        ("truncated", "pointcloud_malformed"),
        ("missing_z", "pointcloud_missing_field"),
        ("empty", "pointcloud_empty"),
        ("all_nan", "pointcloud_empty"),
        ("bad_step", "pointcloud_malformed"),
        ("unknown_frame", "pointcloud_frame"),
    ],
)
def test_bad_pointcloud_dropped_counted_and_node_recovers(lidar_node, case, reason):
    h = lidar_node
    before = h.diag(f"bad_input.{reason}")
    h.t += 100_000_000
    pts = car_cloud(h.rng)
    if case == "missing_z":
        msg = cloud_msg(pts, h.t, drop_field="z")
    elif case == "unknown_frame":
        msg = cloud_msg(pts, h.t, frame="radar_front")
    else:
        msg = cloud_msg(pts, h.t)
    if case == "truncated":
        msg.data = bytes(msg.data)[: len(msg.data) // 2]
    elif case == "empty":
        msg = cloud_msg(pts[:0], h.t)
    elif case == "all_nan":
        msg = cloud_msg(np.full((50, 4), np.nan, np.float32), h.t)
    elif case == "bad_step":
        msg.point_step = 8  # fields end beyond the point
    h.d.publish(ODOM_T, odom_msg(h.t))
    h.d.publish(LIDAR_T, msg)
    assert h.d.spin_until(lambda: h.diag(f"bad_input.{reason}") == before + 1, 5)
    assert h.proc.alive()
    assert h.proc.wait_output(f"bad_input.{reason}=", 5)  # a clear log line names the reason
    h.good_frame()  # still answers


def test_nonfinite_points_removed_frame_kept(lidar_node):
    h = lidar_node
    before = h.diag("nonfinite_points")
    h.t += 100_000_000
    pts = car_cloud(h.rng)
    pts[:7, 0] = np.nan
    pts[7:10, 2] = np.inf
    h.d.publish(ODOM_T, odom_msg(h.t))
    h.d.publish(LIDAR_T, cloud_msg(pts, h.t))
    stamp = h.t
    assert h.d.spin_until(lambda: any(_stamp(m) == stamp for m in h.dets), 10)
    assert h.diag("nonfinite_points") == before + 10
    assert h.proc.wait_output("removed 10 non-finite points", 5)


def test_out_of_order_and_clock_jump_backwards(lidar_node):
    h = lidar_node
    h.good_frame()
    late0, resets0 = h.diag("sync.late"), h.diag("sync.resets")
    # a stamp older than the last emitted frame (out of order): late, dropped
    h.d.publish(LIDAR_T, cloud_msg(car_cloud(h.rng), h.t - 50_000_000))
    assert h.d.spin_until(lambda: h.diag("sync.late") == late0 + 1, 5)
    assert h.proc.wait_output("older than the last synchronised set (out of order)", 5)
    # the bag loops: time jumps back by 100 s -> reset, and frames flow again from there
    h.t -= 100 * 10**9
    h.good_frame()
    assert h.diag("sync.resets") == resets0 + 1
    assert h.proc.wait_output("synchroniser reset: clock jumped back", 5)
    h.good_frame()


def test_missing_odometry_counted_frames_still_out(lidar_node):
    h = lidar_node
    before = h.diag("missing_odometry")
    # frames keep coming without odometry until the last one is older than optional_max_age_s
    # (a 0.5 s jump of the lidar stamps alone would be refused as a stamp from the future)
    for _ in range(3):
        msg = h.good_frame(odom=False)
    assert len(msg.detections) >= 1
    assert h.diag("missing_odometry") >= before + 1
    assert h.proc.wait_output("no odometry within", 5)


def test_warmup_ready_and_latency_on_bag_and_live_stamps(driver, tmp_path):
    """The node warms its detector up before subscribing and says so (log, ``ready``); on a bag's
    old stamps only the node's own processing time is reported (pipeline latency n/a, not ~10^11 ms),
    on stamps near the node clock the pipeline latency is recorded."""
    name, topic = "warm_detector", f"{LIDAR_T}_warm"
    proc = NodeProcess.module(
        "qd_perception.ros.nodes.lidar_detector",
        node_args(["-p", "use_odometry:=false"], name=name, lidar=topic),
        tmp_path / "warm.log",
    )
    try:
        h = Harness(driver, proc, name=name, lidar_topic=topic)
        out = proc.output()
        # warm-up first, subscriptions after it
        assert 0 <= out.index("warm-up detection took") < out.index("detector 'classical'"), out
        assert h.diag("ready") == 1 and h.diag("warmup_ms") > 0
        assert h.diag("frames_in") == 0  # the warm-up frame is not an input frame

        def publish(stamp_ns: int) -> dict[str, str]:
            h.d.publish(topic, cloud_msg(car_cloud(h.rng), stamp_ns))
            assert h.d.spin_until(lambda: any(_stamp(m) == stamp_ns for m in h.dets), 10), proc.output()
            h.diag("frames_out")  # a diagnostics message newer than the output
            return diag_values(h.diags[-1])

        bag_stamp = 1_700_000_000 * 10**9  # Nov 2023, like a recorded bag replayed today
        d = publish(bag_stamp)
        assert 0 < float(d["processing_ms.p50"]) < 10_000
        assert "pipeline_latency_ms.p50" not in d and d["pipeline_latency_ms"].startswith("n/a")
        assert int(d["pipeline_latency_ms.unrelated_stamps"]) >= 1
        d = publish(time.time_ns())  # a live sensor: stamp = now on the same clock
        assert 0 < float(d["pipeline_latency_ms.p50"]) < 10_000
        assert 0 < float(d["processing_ms.p50"]) <= float(d["processing_ms.max"]) < 10_000
    finally:
        assert proc.stop() == 0


def test_pipeline_latency_on_bag_time_with_use_sim_time(driver, tmp_path):
    """A bag played with ``/clock`` to a node with ``use_sim_time``: the 2023 stamps are compared
    with the bag clock, so the pipeline latency is recorded (bag-time ms, not ~10^11)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from qd_perception.msg import Detection3DArray
    from rosgraph_msgs.msg import Clock

    from qd_perception.ros.convert import ns_to_stamp

    name, topic = "simtime_detector", f"{LIDAR_T}_sim"
    proc = NodeProcess.module(
        "qd_perception.ros.nodes.lidar_detector",
        node_args(["-p", "use_odometry:=false", "-p", "use_sim_time:=true"], name=name, lidar=topic),
        tmp_path / "sim.log",
    )
    try:
        assert proc.wait_output("detector 'classical'", 15), proc.output()
        dets = driver.record(Detection3DArray, f"/{name}/output/detections")
        diags = driver.record(DiagnosticArray, f"/{name}/output/diagnostics")
        base = 1_700_000_000 * 10**9
        driver.publish("/clock", Clock(clock=ns_to_stamp(base)))
        driver.publish(topic, cloud_msg(car_cloud(np.random.default_rng(0)), base))
        assert driver.wait_for_subscribers(topic) and driver.wait_for_subscribers("/clock")
        # the node skips inference while nobody listens: the single stamped cloud below must not
        # arrive before the node has discovered our detections subscription (flaky in CI)
        det_topic = f"/{name}/output/detections"
        assert driver.spin_until(lambda: driver.node.count_publishers(det_topic) >= 1, 15)
        driver.spin(0.5)
        stamp = base + 200_000_000
        t_end = time.monotonic() + 15
        k = 0
        while time.monotonic() < t_end:  # the bag player's clock: 100 ms of bag time per step
            k += 1
            driver.publish("/clock", Clock(clock=ns_to_stamp(base + k * 100_000_000)))
            if k == 3:
                driver.publish(topic, cloud_msg(car_cloud(np.random.default_rng(1)), stamp))
            driver.spin(0.1)
            d = diag_values(diags[-1]) if diags else {}
            if any(_stamp(m) == stamp for m in dets) and "pipeline_latency_ms.p50" in d:
                break
        assert any(_stamp(m) == stamp for m in dets), proc.output()[-3000:]
        # bag clock at publish - stamp: the node clock advanced by at most a few 100 ms steps (0 when
        # the cloud was handled before the /clock message published just ahead of it)
        assert 0 <= float(d["pipeline_latency_ms.p50"]) < 5_000, d
    finally:
        assert proc.stop() == 0


def test_cameras_bad_and_silent(driver, tmp_path):
    """Node synchronising lidar + 2 cameras: wrong size / encoding / truncated images are
    dropped and counted, a silent camera stalls sets (warning names it), recovery after."""
    proc = NodeProcess.module(
        "qd_perception.ros.nodes.lidar_detector", node_args(cams=True, name="gated"), tmp_path / "cams.log"
    )
    try:
        h = Harness(driver, proc, "gated")
        # the node's interface is what topics.DETECTOR_PORTS (and docs/ros.md's table) says
        remaps = {POINTCLOUD_INPUT: LIDAR_T, ODOM_INPUT: ODOM_T}
        remaps |= {image_input(c): f"/t/{c.lower()}/image" for c in CAMS}
        check_interface(driver, "gated", expected_interface(DETECTOR_PORTS, "gated", CAMS, remaps))
        for c in CAMS:
            h.d.publish(f"/t/{c.lower()}/image", image_msg(1, c))
            assert h.d.wait_for_subscribers(f"/t/{c.lower()}/image")
        h.d.spin(0.3)
        h.good_frame(cams=CAMS)
        t = h.t + 100_000_000
        bad = {
            "image_size": image_msg(t, "CAM_BACK", hw=(80, 160)),
            "image_encoding": image_msg(t, "CAM_BACK", encoding="bgr8"),
        }
        bad["image_encoding"].encoding = "yuv422"
        trunc = image_msg(t, "CAM_BACK")
        trunc.data = bytes(trunc.data)[:-100]
        bad["image_malformed"] = trunc
        for reason, msg in bad.items():
            before = h.diag(f"bad_input.{reason}")
            h.d.publish("/t/cam_back/image", msg)
            assert h.d.spin_until(lambda r=reason, b=before: h.diag(f"bad_input.{r}") == b + 1, 5), reason
        # CAM_BACK silent for ~1.5 s while lidar and CAM_FRONT keep coming
        n_out = len(h.dets)
        dropped0 = h.diag("sync.dropped")
        for _ in range(15):
            h.t += 100_000_000
            h.d.publish(ODOM_T, odom_msg(h.t))
            h.d.publish("/t/cam_front/image", image_msg(h.t, "CAM_FRONT"))
            h.d.publish(LIDAR_T, cloud_msg(car_cloud(h.rng), h.t))
            h.d.spin(0.1)
        assert len(h.dets) == n_out  # no complete set
        assert proc.wait_output("silent inputs: ['CAM_BACK']", 5), proc.output()[-2000:]
        assert h.diag("sync.dropped") > dropped0  # queued inputs superseded are counted
        h.good_frame(cams=CAMS)  # recovers
    finally:
        assert proc.stop() == 0


def test_inference_skipped_without_subscribers(driver, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray

    name = "lonely_detector"
    proc = NodeProcess.module(
        "qd_perception.ros.nodes.lidar_detector",
        node_args(name=name, lidar=f"{LIDAR_T}_lonely"),
        tmp_path / "lonely.log",
    )
    try:
        diags = driver.record(DiagnosticArray, f"/{name}/output/diagnostics")
        assert proc.wait_output("detector 'classical'", 15)
        driver.publish(f"{LIDAR_T}_lonely", cloud_msg(car_cloud(np.random.default_rng(0)), 5))
        assert driver.wait_for_subscribers(f"{LIDAR_T}_lonely")
        for k in range(5):
            msg = cloud_msg(car_cloud(np.random.default_rng(k)), (10 + k) * 10**9)
            driver.publish(f"{LIDAR_T}_lonely", msg)
            driver.spin(0.2)

        def skipped() -> float:
            return float(diag_values(diags[-1]).get("skipped_no_subscribers", 0)) if diags else 0.0

        assert driver.spin_until(lambda: skipped() >= 3, 5)
        assert float(diag_values(diags[-1])["frames_out"]) == 0
    finally:
        assert proc.stop(sig=15) == 0  # SIGTERM stops cleanly too


def test_configuration_errors_exit_clearly(tmp_path):
    bad_params = tmp_path / "bad.yaml"
    bad_params.write_text(f"{NODE}:\n  ros__parameters:\n    sync.slop_ms: 30\n")
    for ros_args, expected in (
        (["--params-file", str(bad_params)], "unknown parameter(s) ['sync.slop_ms']"),
        (["-p", "sync.queue_size:=many"], "sync.queue_size: expected an integer"),
        (["-p", "detector.name:=yolo"], "unknown detector 'yolo'"),
        (  # the shipped pillar model reads 5 merged sweeps: 1 would silently change its input
            [
                *("-p", "detector.name:=centerpoint", "-p", "detector.threads:=1"),
                *(
                    "-p",
                    "detector.model_path:=weights/centerpoint_pillar_cpu.pt",
                    "-p",
                    "sweeps.max_sweeps:=1",
                ),
            ],
            "sweeps.max_sweeps is 1 but the centerpoint model",
        ),
    ):
        proc = NodeProcess.module("qd_perception.ros.nodes.lidar_detector", ros_args, tmp_path / "e.log")
        t0 = time.monotonic()
        rc = proc.proc.wait(20)
        proc.stop()
        assert rc == 2 and expected in proc.output(), proc.output()
        assert time.monotonic() - t0 < 20


def test_lidar_node_defaults_are_the_shipped_int8_centerpoint(tmp_path):
    """Without a parameter file the lidar node runs what config/lidar_detector.param.yaml ships:
    the INT8 CenterPoint artefact (backend auto -> ONNX Runtime) on 5 sweeps."""
    pytest.importorskip("onnxruntime")
    proc = NodeProcess.module(
        "qd_perception.ros.nodes.lidar_detector", ["-r", "__node:=defaults_check"], tmp_path / "d.log"
    )
    try:
        assert proc.wait_output("detector 'centerpoint' (auto) on inputs ['lidar'] + odometry", 60), (
            proc.output()
        )
        assert "sweeps 5" in proc.output() and "warm-up detection failed" not in proc.output()
    finally:
        assert proc.stop() == 0


def test_bev_detector_node_runs_the_camera_model(driver, tmp_path):
    """bev_detector with the real camera BEV detector (nano preset, untrained weights: the
    detections are meaningless, the node path is what is checked): six cameras + odometry in,
    Detection3DArray out, stamped with the pivot camera's stamp, in base_link."""
    torch = pytest.importorskip("torch")
    from qd_perception.msg import Detection3DArray

    from qd_perception.models.bevformer import BEVFormer, preset
    from qd_perception.models.bevformer.checkpoint import save_checkpoint
    from qd_perception.ros.node_config import DEFAULT_CAMERAS

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "nano.pt", BEVFormer(preset("nano")).eval())
    args = [
        "-r", "~/input/odom:=/bev/odom", "-p", f"detector.model_path:={ckpt}",
        "-p", "detector.score_threshold:=0.0", "-p", "diagnostics_period_s:=0.5",
    ]  # fmt: skip
    for c in DEFAULT_CAMERAS:
        args += ["-r", f"~/input/{c.lower()}/image:=/bev/{c.lower()}/image"]
    proc = NodeProcess.module("qd_perception.ros.nodes.bev_detector", args, tmp_path / "bev.log")
    try:
        dets = driver.record(Detection3DArray, "/bev_detector/output/detections")
        assert proc.wait_output("detector 'bev'", 90), proc.output()[-3000:]
        for c in DEFAULT_CAMERAS:
            driver.publish(f"/bev/{c.lower()}/image", image_msg(1, c, hw=(128, 224)))
            assert driver.wait_for_subscribers(f"/bev/{c.lower()}/image")
        driver.spin(0.5)
        stamps = []
        for k in range(5):
            t = (50 + k) * 10**9
            driver.publish("/bev/odom", odom_msg(t, x=float(k)))
            for i, c in enumerate(DEFAULT_CAMERAS):
                driver.publish(f"/bev/{c.lower()}/image", image_msg(t + i * 1_000_000, c, hw=(128, 224)))
            stamps.append(t)
            if driver.spin_until(lambda: any(_stamp(m) in stamps for m in dets), 3):
                break
        got = [m for m in dets if _stamp(m) in stamps]
        assert got, proc.output()[-3000:]
        assert got[0].header.frame_id == "base_link"
        assert all(0 <= d.class_id < 10 for d in got[0].detections)
    finally:
        assert proc.stop(timeout=20) == 0, proc.output()[-2000:]
