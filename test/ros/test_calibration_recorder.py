"""The calibration recorder as a real process: collects a bounded set from synchronised inputs
(with the detections' object mix), refuses the trigger until enough frames are stored, runs a real
(harmless) command on ``~/run_ptq``, freezes nothing afterwards, and resumes after a restart.
The model check (sweep count and point layout against ``ptq_model``) is tested on the shipped
checkpoint in-process and, once, as the real node refusing to start."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml
from ros_harness import ROOT, Driver, NodeProcess, check_interface, expected_interface

from qd_perception.config import ConfigError
from qd_perception.data.calib_store import LAYOUT_NAME, CalibrationSet, check_and_write_layout
from qd_perception.ros.calibration import (
    CalibrationRecorderConfig,
    check_ptq_model,
    merged_sweeps,
    ptq_argv,
    set_layout,
)
from qd_perception.runtime.sweeps import SweepConfig
from qd_perception.topics import DETECTIONS_INPUT, ODOM_INPUT, POINTCLOUD_INPUT, RECORDER_PORTS

NODE = "calibration_recorder"
LIDAR_T, ODOM_T, DET_T = "/c/points", "/c/odom", "/c/detections"


def cloud(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    r = rng.uniform(2.0, radius, n)
    a = rng.uniform(-np.pi, np.pi, n)
    return np.stack([r * np.cos(a), r * np.sin(a), rng.normal(0, 0.3, n), rng.uniform(0, 255, n)], 1).astype(
        np.float32
    )


def start_node(tmp_path, out_dir, tag: str, **extra) -> NodeProcess:
    # A real command the trigger can run: counts the set it is given, through the reader PTQ uses.
    count = (
        "import sys; from qd_perception.data.calib_store import CalibrationSet; "
        "open(sys.argv[2], 'w').write(str(len(CalibrationSet(sys.argv[1]))))"
    )
    params = {
        NODE: {
            "ros__parameters": {
                "out_dir": str(out_dir),
                "store.capacity": 4,
                "store.sample_every": 1,
                "min_frames": 3,
                "detections_wait_s": 0.3,
                "status_period_s": 0.2,
                "ptq_command": [sys.executable, "-c", count, "{calib_dir}", str(tmp_path / "ptq_out.txt")],
                **extra,
            }
        }
    }
    pf = tmp_path / f"calib_{tag}.param.yaml"
    pf.write_text(yaml.safe_dump(params))
    ros_args = [
        "--params-file", str(pf),
        "-r", f"~/input/pointcloud:={LIDAR_T}",
        "-r", f"~/input/odom:={ODOM_T}",
        "-r", f"~/input/detections:={DET_T}",
    ]  # fmt: skip
    return NodeProcess.module(
        "qd_perception.ros.nodes.calibration_recorder", ros_args, tmp_path / f"calib_{tag}.log"
    )


def test_collects_triggers_and_resumes(tmp_path):
    from nav_msgs.msg import Odometry
    from qd_perception.msg import Detection3DArray
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import String
    from std_srvs.srv import Trigger
    from test_detector_node import cloud_msg

    from qd_perception.data.types import Detections
    from qd_perception.ros.convert import detections_to_msg, ns_to_stamp

    out_dir = tmp_path / "calib"
    node = start_node(tmp_path, out_dir, "a")
    d = Driver()
    try:
        status: list = d.record(String, f"/{NODE}/status")
        client = d.node.create_client(Trigger, f"/{NODE}/run_ptq")
        d.publisher(PointCloud2, LIDAR_T)
        d.publisher(Odometry, ODOM_T)
        d.publisher(Detection3DArray, DET_T)
        # every input matched before publishing: a cloud whose odometry went out before the
        # odometry subscription matched cannot be merged with its history (fewer frames: flaky)
        for topic in (LIDAR_T, ODOM_T, DET_T):
            assert d.wait_for_subscribers(topic, timeout=60), (topic, node.output())
        # matching is seen per side: our publisher may see the node's subscription before the
        # node's side has matched our publisher, and the first messages are then lost
        d.spin(1.0)
        assert d.spin_until(client.service_is_ready, 20), node.output()
        # the node's interface is what topics.RECORDER_PORTS (and docs/ros.md's table) says
        remaps = {POINTCLOUD_INPUT: LIDAR_T, ODOM_INPUT: ODOM_T, DETECTIONS_INPUT: DET_T}
        check_interface(d, NODE, expected_interface(RECORDER_PORTS, NODE, (), remaps))

        def trigger():
            fut = client.call_async(Trigger.Request())
            assert d.spin_until(fut.done, 10)
            return fut.result()

        r = trigger()
        assert not r.success and "only 0 frames" in r.message

        rng = np.random.default_rng(0)
        t0 = 1_700_000_000_000_000_000
        for k in range(12):
            stamp = t0 + k * 100_000_000
            # Alternating dense-near / sparse-far clouds; cars or pedestrians: diverse frames.
            pts = cloud(rng, 4000, 20.0) if k % 2 else cloud(rng, 500, 60.0)
            odom = Odometry()
            odom.header.stamp = ns_to_stamp(stamp)
            odom.header.frame_id = "map"
            odom.pose.pose.position.x = k * 1.0
            odom.pose.pose.orientation.w = 1.0
            d.publish(ODOM_T, odom)
            # on a car odometry (50-100 Hz) is there before the sweep; published together, DDS may
            # deliver the cloud first and the recorder cannot place it (the run went flaky)
            d.spin(0.03)
            d.publish(LIDAR_T, cloud_msg(pts, stamp))
            label = 0 if k % 3 else 8
            dets = Detections(np.zeros((2, 9)), np.array([label, label]), np.array([0.9, 0.8], np.float32))
            d.publish(DET_T, detections_to_msg(dets, stamp))
            d.spin(0.1)

        def last():
            return json.loads(status[-1].data) if status else {}

        # 5 sweeps merged per frame: the first 4 clouds only build the history (not offered).
        ok = d.spin_until(lambda: last().get("store.considered", 0) >= 8, 20)
        assert ok, (json.dumps(last()), node.output())
        s = last()
        assert s["incomplete_sweeps"] == 4 and s["store.considered"] == 8, s
        assert s["stored"] == 4 and s["with_detections"] >= 6 and s["ready_for_ptq"], s

        r = trigger()
        assert r.success, r.message
        assert d.spin_until(lambda: last().get("ptq", {}).get("state") == "succeeded", 30), (
            last(),
            node.output(),
        )
        assert (tmp_path / "ptq_out.txt").read_text() == "4"
        assert "$ " in (out_dir / "ptq.log").read_text()  # the command line is logged
    finally:
        d.close()
        assert node.stop() == 0, node.output()

    cs = CalibrationSet(out_dir)
    assert len(cs) == 4
    f = cs[0]
    assert f.points.shape[1] == 5 and f.points.dtype == np.float32
    # Default sweeps (5, the shipped models'): every stored frame merges 5, tagged by age.
    assert json.loads((out_dir / LAYOUT_NAME).read_text())["max_sweeps"] == 5
    for i in range(len(cs)):
        assert merged_sweeps(cs[i].points) == 5
        assert np.allclose(np.unique(cs[i].points[:, 4]), [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-6)
    assert f.ego2global[0, 3] == float(int(f.ego2global[0, 3]))  # pose taken from odometry
    # Back in the ego frame: the clouds were sent in the lidar frame (1.84 m above base_link).
    assert abs(float(np.median(f.points[:, 2]))) < 0.3

    # Restart: the set is resumed, not rebuilt.
    node2 = start_node(tmp_path, out_dir, "b")
    try:
        assert node2.wait_output("4/4 frames (resumed)", timeout=60), node2.output()
    finally:
        assert node2.stop() == 0  # exited: its files are complete (written atomically)
    assert len(CalibrationSet(out_dir)) == 4

    # Restart with another sweep count: refused (exit 2), the set is not mixed and not touched.
    node3 = start_node(tmp_path, out_dir, "c", **{"sweeps.max_sweeps": 1})
    assert node3.proc.wait(60) == 2, node3.output()
    assert "another layout" in node3.output() and "max_sweeps: 5 stored, 1 now" in node3.output()
    node3.stop()
    assert len(CalibrationSet(out_dir)) == 4


def test_refuses_to_start_when_the_sweeps_do_not_match_the_model(tmp_path):
    """The pitfall of a 1-sweep calibration set for the 5-sweep shipped CenterPoint, as a user
    meets it: the node with the default PTQ command and model exits 2 naming both values."""
    out_dir = tmp_path / "calib"
    node = start_node(
        tmp_path,
        out_dir,
        "bad",
        **{"sweeps.max_sweeps": 1, "ptq_command": list(CalibrationRecorderConfig().ptq_command)},
    )
    assert node.proc.wait(60) == 2, node.output()
    out = node.output()
    assert "sweeps.max_sweeps is 1" in out and "reads 5 merged sweeps" in out, out
    node.stop()
    assert not (out_dir / "index.json").exists()  # refused before anything was written


def test_ptq_model_check_against_the_shipped_checkpoint(tmp_path):
    import torch

    cfg = CalibrationRecorderConfig(out_dir=str(tmp_path / "c"))  # defaults: pillar, 5 sweeps
    m = check_ptq_model(cfg)
    assert m is not None and m.nsweeps == 5 and m.num_point_features == 5
    assert m.path == (ROOT / "weights" / "centerpoint_pillar_cpu.pt").resolve()
    argv = ptq_argv(cfg, m.path)
    assert argv[:3] == [sys.executable, "-m", "qd_perception.cli"]
    assert str(m.path) in argv and f"{tmp_path / 'c'}/lidar_int8" in argv

    with pytest.raises(ConfigError, match=r"sweeps.max_sweeps is 1 .* reads 5 merged sweeps"):
        check_ptq_model(CalibrationRecorderConfig(sweeps=SweepConfig(max_sweeps=1)))
    with pytest.raises(ConfigError, match="add lidar"):
        check_ptq_model(CalibrationRecorderConfig(modalities=("cameras",)))
    with pytest.raises(ConfigError, match="does not exist"):
        check_ptq_model(CalibrationRecorderConfig(ptq_model=str(tmp_path / "none.pt")))
    with pytest.raises(ConfigError, match="is a directory"):
        check_ptq_model(CalibrationRecorderConfig(ptq_model=str(tmp_path)))
    # A model trained on 10 sweeps (the shipped weights with another nsweeps in their config).
    ckpt = torch.load(m.path, map_location="cpu", weights_only=True)
    ckpt["config"]["nsweeps"] = 10
    torch.save(ckpt, tmp_path / "ten.pt")
    with pytest.raises(ConfigError, match=r"reads 10 merged sweeps.*max_sweeps: 10"):
        check_ptq_model(CalibrationRecorderConfig(ptq_model=str(tmp_path / "ten.pt")))
    ten = CalibrationRecorderConfig(ptq_model=str(tmp_path / "ten.pt"), sweeps=SweepConfig(max_sweeps=10))
    assert check_ptq_model(ten).nsweeps == 10
    # No {model} in the command, or no model: nothing to check (the trigger refuses without one).
    assert check_ptq_model(CalibrationRecorderConfig(ptq_command=("true",), sweeps=SweepConfig(1))) is None
    assert check_ptq_model(CalibrationRecorderConfig(ptq_model="")) is None


def test_layout_file_refuses_to_mix_sets(tmp_path):
    five, one = CalibrationRecorderConfig(), CalibrationRecorderConfig(sweeps=SweepConfig(max_sweeps=1))
    check_and_write_layout(tmp_path, set_layout(five), stored=0)
    check_and_write_layout(tmp_path, set_layout(five), stored=3)  # same layout: resumed
    with pytest.raises(ConfigError, match="max_sweeps: 5 stored, 1 now"):
        check_and_write_layout(tmp_path, set_layout(one), stored=3)
    check_and_write_layout(tmp_path, set_layout(one), stored=0)  # an empty set takes the new layout
    assert json.loads((tmp_path / LAYOUT_NAME).read_text())["max_sweeps"] == 1
    with pytest.raises(ValueError, match="needs use_odometry"):  # no frame would ever be complete
        CalibrationRecorderConfig(use_odometry=False)


def test_ptq_runner_stops_a_running_command(tmp_path):
    import threading

    from qd_perception.ros.calibration import PtqRunner

    runner = PtqRunner(tmp_path / "ptq.log")
    done = threading.Event()
    ok, text = runner.start(
        [sys.executable, "-c", "import time; time.sleep(60)"], on_done=lambda rc: done.set()
    )
    assert ok and runner.running, text
    assert not runner.start([sys.executable, "-c", "pass"])[0]  # one at a time
    runner.stop(timeout_s=5.0)  # SIGTERM, the node's shutdown path
    assert done.wait(10) and runner.state == "failed" and runner.returncode == -15
