"""Every executable of the package exits 0, with no traceback, on SIGINT and on SIGTERM, however
the signal lands: while messages are being taken (the signal used to surface inside rclpy's
``take_message`` as ``RuntimeError: Unable to convert call argument '0'``, exit code 1) and when
a second signal follows the first during teardown (``ros2 launch`` escalating, a double Ctrl-C).
The cause and the teardown order: :mod:`qd_perception.ros.lifecycle`."""

from __future__ import annotations

import re
import signal
import sys
import time

import numpy as np
from ros_harness import Driver, NodeProcess
from test_replay_player import write_sqlite_bag

from qd_perception.ros.convert import array_to_pointcloud2
from qd_perception.sim import rosmsgs as rm

TOPIC = "/shutdown/points"
# (first signal, second signal or None): both signals, alone and escalated, in every order
PLAN = [
    (signal.SIGINT, None),
    (signal.SIGTERM, None),
    (signal.SIGINT, signal.SIGTERM),
    (signal.SIGTERM, signal.SIGINT),
]


def _cloud(stamp_ns: int) -> object:
    rng = np.random.default_rng(0)
    arr = np.zeros(3000, [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    arr["x"], arr["y"] = rng.uniform(-30, 30, (2, 3000))
    arr["z"] = -1.8
    return array_to_pointcloud2(arr, stamp_ns, "lidar_top")


def _stop_under_traffic(
    driver: Driver, proc: NodeProcess, first: int, second: int | None, publish=None, timeout: float = 20.0
) -> int:
    """Signal ``proc`` (twice when ``second``) while ``publish()`` keeps messages coming; wait
    for its exit (the harness kills it after ``timeout``); returns the exit code."""
    proc.proc.send_signal(first)
    if second is not None:
        if publish is not None:
            publish()
        proc.proc.send_signal(second)
    end = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < end:
        if publish is not None:
            publish()
        driver.spin(0.02)
    return proc.stop(signal.SIGKILL, timeout=1.0)


def _until(driver: Driver, publish, cond, timeout: float) -> bool:
    """Spin (publishing one message per turn) until ``cond()``."""

    def turn() -> bool:
        publish()
        return cond()

    return driver.spin_until(turn, timeout)


def _assert_clean(rc: int, proc: NodeProcess, what: str) -> None:
    out = proc.output()
    assert rc == 0, f"{what}: exit code {rc}\n{out[-3000:]}"
    # no traceback, no exception line (e.g. "RuntimeError: Unable to convert call argument")
    assert "Traceback" not in out and not re.search(r"^\w*(Error|Exception|Interrupt): ", out, re.M), (
        f"{what}\n{out[-3000:]}"
    )


def test_detector_node_stops_cleanly_under_traffic(driver, tmp_path):
    """24 start/stop cycles of the lidar detector node, signalled while clouds are taken."""
    from qd_perception.msg import Detection3DArray
    from sensor_msgs.msg import PointCloud2

    got = driver.record(Detection3DArray, "/lidar_detector/output/detections")
    driver.publisher(PointCloud2, TOPIC)
    ros_args = [
        "-r", "__node:=lidar_detector", "-r", f"~/input/pointcloud:={TOPIC}",
        "-p", "detector.name:=classical", "-p", "sweeps.max_sweeps:=1", "-p", "use_odometry:=false",
        "-p", "always_run:=true",
        "-p", "warmup:=false",
    ]  # fmt: skip
    stamp = [10**9]

    def publish() -> None:
        stamp[0] += 10**8
        driver.publish(TOPIC, _cloud(stamp[0]))

    for i in range(24):
        first, second = PLAN[i % len(PLAN)]
        what = f"cycle {i}: {first.name}" + (f" + {second.name}" if second else "")
        log = tmp_path / f"det{i}.log"
        proc = NodeProcess.module("qd_perception.ros.nodes.lidar_detector", ros_args, log)
        try:
            assert proc.wait_output("detector 'classical'", 30), proc.output()
            # messages flow into this process: one of its detections is back
            since = stamp[0]
            fresh = lambda: any(rm.stamp_us(m.header) * 1000 > since for m in got)  # noqa: B023, E731
            assert _until(driver, publish, fresh, 15), f"{what}: no detections\n{proc.output()[-3000:]}"
            rc = _stop_under_traffic(driver, proc, first, second, publish)
        finally:
            proc.stop(signal.SIGKILL, timeout=1.0)
        _assert_clean(rc, proc, what)
        assert "shutting down:" in proc.output(), what  # the summary: teardown ran in order


def test_other_executables_stop_cleanly(driver, tmp_path):
    """Calibration recorder, recorder and bag player: both signals, alone and escalated."""
    from sensor_msgs.msg import PointCloud2

    bag = tmp_path / "bag"
    write_sqlite_bag(bag)
    played = driver.record(PointCloud2, rm.LIDAR_TOPIC)
    driver.publisher(PointCloud2, TOPIC)

    def publish() -> None:
        driver.publish(TOPIC, _cloud(10**9))

    def calibration(k: int) -> tuple[NodeProcess, str]:
        ros_args = ["-p", f"out_dir:={tmp_path / f'calib{k}'}", "-r", f"~/input/pointcloud:={TOPIC}"]
        module = "qd_perception.ros.nodes.calibration_recorder"
        return NodeProcess.module(module, ros_args, tmp_path / f"c{k}.log"), "calibration set"

    def recorder(k: int) -> tuple[NodeProcess, str]:
        args = [sys.executable, "-m", "qd_perception.ros.recorder", "--out", str(tmp_path / f"rec{k}")]
        return NodeProcess([*args, "--topics", TOPIC], tmp_path / f"r{k}.log"), "recording"

    def player(k: int) -> tuple[NodeProcess, str | None]:
        played.clear()
        args = [sys.executable, "-m", "qd_perception.ros.bag_player", str(bag), "--loop", "--rate", "4"]
        args += ["--qos", "reliable"]  # the driver's recorder is reliable
        return NodeProcess(args, tmp_path / f"p{k}.log"), None

    k = 0
    for start in (calibration, recorder, player):
        for first, second in PLAN:
            k += 1
            proc, ready = start(k)
            what = f"{start.__name__}: {first.name}" + (f" + {second.name}" if second else "")
            try:
                if ready is not None:
                    up = lambda: ready in proc.output()  # noqa: B023, E731
                    assert _until(driver, publish, up, 30), proc.output()
                else:  # the player is playing
                    assert driver.spin_until(lambda: len(played) > 0, 30), proc.output()
                rc = _stop_under_traffic(driver, proc, first, second, publish)
            finally:
                proc.stop(signal.SIGKILL, timeout=1.0)
            _assert_clean(rc, proc, what)
    # what the recorder took before its signal is written (atomically) on the way out
    assert (tmp_path / "rec5").is_dir()
