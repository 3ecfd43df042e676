"""The node graph description and ``qd-perception launch`` with real processes; the launch files
load with the real ``launch`` package where it is importable (not on PyPI: docs/ros.md shows the
verification with ros2 launch built from source)."""

from __future__ import annotations

import dataclasses
import importlib.util
import signal
import sys

import numpy as np
import pytest
from ros_harness import ROOT, NodeProcess

from qd_perception.ros import graph
from qd_perception.topics import DETECTIONS_OUTPUT, LIDAR_TOPIC


def test_graph_description():
    specs, skipped = graph.nodes("lidar")
    assert [s.name for s in specs] == ["lidar_detector"] and not skipped
    lidar = specs[0]
    assert ("~/input/pointcloud", LIDAR_TOPIC) in lidar.remaps
    assert ("~/input/cam_back/image", "/sensing/camera/cam_back/image_raw") in lidar.remaps
    assert graph.params_path(lidar) == ROOT / "config" / "lidar_detector.param.yaml"
    assert graph.effective_detector(lidar, graph.params_path(lidar)) == "centerpoint"
    args = graph.ros_arguments(lidar, graph.params_path(lidar))
    assert args[:3] == ["--ros-args", "-r", "__node:=lidar_detector"] and "--params-file" in args
    with pytest.raises(KeyError, match="unknown graph"):
        graph.nodes("radar")


def test_detector_nodes_split_the_cores_unless_their_file_sets_threads(tmp_path):
    bev, _ = graph.nodes("bev")
    assert graph.core_share(bev, cpus=2) == 1 and graph.core_share(bev, cpus=16) == 8
    assert graph.core_share(graph.GRAPHS["lidar"], cpus=2) == 2
    lidar = graph.LIDAR_DETECTOR
    args = graph.ros_arguments(lidar, graph.params_path(lidar), threads=1)  # shipped file: threads 0
    assert args[args.index("-p") + 1] == "detector.threads:=1"
    own = tmp_path / "own.yaml"
    own.write_text("lidar_detector:\n  ros__parameters:\n    detector.threads: 2\n")
    assert "-p" not in graph.ros_arguments(lidar, own, threads=1)  # the user's choice wins
    assert "-p" not in graph.ros_arguments(graph.CALIBRATION_RECORDER, None, threads=1)  # no detector


def test_output_topics_follow_the_graph_remaps():
    lidar = graph.LIDAR_DETECTOR
    assert graph.output_topic(lidar, DETECTIONS_OUTPUT) == "/lidar_detector/output/detections"
    # The recorder listens where the lidar detector publishes, however that is remapped.
    assert (
        "~/input/detections",
        graph.output_topic(lidar, DETECTIONS_OUTPUT),
    ) in graph.CALIBRATION_RECORDER.remaps
    moved = dataclasses.replace(lidar, remaps=((DETECTIONS_OUTPUT, "/perception/objects"),))
    assert graph.output_topic(moved, DETECTIONS_OUTPUT) == "/perception/objects"
    private = dataclasses.replace(lidar, remaps=((DETECTIONS_OUTPUT, "~/objects"),))
    assert graph.output_topic(private, DETECTIONS_OUTPUT) == "/lidar_detector/objects"
    with pytest.raises(ValueError, match="not a private topic"):
        graph.output_topic(lidar, "/abs")


def test_graph_leaves_out_unavailable_detectors(tmp_path):
    p = tmp_path / "bev.yaml"
    p.write_text("bev_detector:\n  ros__parameters:\n    detector.name: not_built_here\n")
    specs, skipped = graph.nodes("bev", {"bev_detector": str(p)})
    assert [s.name for s in specs] == ["lidar_detector"]
    assert "not_built_here" in skipped[0]


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None, reason="launch_ros is not on PyPI")
def test_launch_files_load():  # pragma: no cover - full ROS installs
    from launch.launch_description_sources import get_launch_description_from_python_launch_file

    for name in ("lidar", "bev"):
        ld = get_launch_description_from_python_launch_file(str(ROOT / "launch" / f"{name}.launch.py"))
        assert ld.entities


def test_pip_launcher_runs_graph_and_stops_cleanly(driver, tmp_path):

    from qd_perception.msg import Detection3DArray

    from qd_perception.ros.convert import array_to_pointcloud2

    # The classical baseline (no model) through a node parameter file, as a user would switch to it.
    params = tmp_path / "lidar_detector.param.yaml"
    params.write_text("lidar_detector:\n  ros__parameters:\n    detector.name: classical\n")
    proc = NodeProcess(
        [
            sys.executable,
            "-m",
            "qd_perception.cli",
            "launch",
            "lidar",
            "--params",
            f"lidar_detector={params}",
        ],
        tmp_path / "launch.log",
    )
    try:
        got = driver.record(Detection3DArray, "/lidar_detector/output/detections")
        assert proc.wait_output("detector 'classical'", 20), proc.output()
        rng = np.random.default_rng(0)
        # lidar frame (x = ego -y, y = ego x): a car-sized block 10 m ahead plus ground
        blk = np.stack(
            [rng.uniform(-1, 1, 2000), rng.uniform(8, 12.6, 2000), rng.uniform(-1.8, -0.1, 2000)], 1
        )
        gnd = np.stack([rng.uniform(-30, 30, 3000), rng.uniform(-30, 30, 3000), np.full(3000, -1.84)], 1)
        xyz = np.concatenate([blk, gnd])
        arr = np.zeros(len(xyz), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
        arr["x"], arr["y"], arr["z"] = xyz.T
        driver.publish(LIDAR_TOPIC, array_to_pointcloud2(arr, 10**9, "lidar_top"))
        assert driver.wait_for_subscribers(LIDAR_TOPIC, timeout=15)
        driver.spin(0.5)
        for k in range(20):
            driver.publish(LIDAR_TOPIC, array_to_pointcloud2(arr, (2 + k) * 10**9, "lidar_top"))
            if driver.spin_until(lambda: len(got) > 0, 0.3):
                break
        assert got, proc.output()[-3000:]
        cars = [d for d in got[0].detections if d.class_name == "car"]
        assert cars and abs(cars[0].box.center.x - 11.2) < 1.0
    finally:
        rc = proc.stop(signal.SIGTERM, timeout=15)
    out = proc.output()
    assert rc == 0, out[-3000:]
    assert "[lidar_detector]" in out and "lidar_detector stopped (exit code 0)" in out
    assert "shutting down" in out
