"""One description of the node graphs, shared by ``launch/*.launch.py`` and ``qd-perception launch``.

A graph is a tuple of :class:`NodeSpec`: executable (``lib/qd_perception/<executable>``), the
Python module that is the same program (``python -m <module>``, for pip installs without the
``ros2`` CLI), its parameter file under ``config/`` and its topic remaps. Input topics default to
the sensing topics the simulator's bags and a nuScenes-like vehicle use
(:mod:`qd_perception.topics`).

To add a graph or a node, add a :class:`NodeSpec` and an entry in :data:`GRAPHS`; both launch
paths pick it up. A node whose ``detector`` is not in the detector factory (e.g. ``bev`` before
the camera model lands) is left out with a message, so ``bev`` starts "every detector that exists".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qd_perception import paths
from qd_perception.geometry.rig import DEFAULT_CAMERAS
from qd_perception.ros.node_config import BEV_DETECTOR_DEFAULTS, LIDAR_DETECTOR_DEFAULTS
from qd_perception.topics import (
    DETECTIONS_INPUT,
    DETECTIONS_OUTPUT,
    LIDAR_TOPIC,
    ODOM_INPUT,
    ODOM_TOPIC,
    POINTCLOUD_INPUT,
    camera_info_input,
    camera_info_topic,
    image_input,
    image_topic,
    node_topic,
)

PACKAGE = "qd_perception"


@dataclass(frozen=True)
class NodeSpec:
    """One node of a graph.

    name: node name (also the top-level key of its parameter file).
    executable: ``lib/qd_perception/<executable>`` (installed by CMakeLists.txt).
    module: the same program as ``python -m <module>``.
    params: parameter file relative to the package's ``config/`` ("" = none).
    remaps: (from, to) topic remaps; ``~`` is the node's private namespace.
    detector: detector-factory name the node runs when its parameter file names none ("" = no
        detector); the shipped parameter files name theirs (``detector.name``), see
        :func:`effective_detector`.
    arguments: extra non-ROS command-line arguments.
    """

    name: str
    executable: str
    module: str
    params: str = ""
    remaps: tuple[tuple[str, str], ...] = ()
    detector: str = ""
    arguments: tuple[str, ...] = ()


def detector_remaps(
    cameras: tuple[str, ...] = DEFAULT_CAMERAS, lidar: bool = True
) -> tuple[tuple[str, str], ...]:
    """Remaps from a detector node's ``~/input/*`` topics to the sensing topics."""
    out: list[tuple[str, str]] = [(ODOM_INPUT, ODOM_TOPIC)]
    if lidar:
        out.append((POINTCLOUD_INPUT, LIDAR_TOPIC))
    for cam in cameras:
        out.append((image_input(cam), image_topic(cam)))
        out.append((camera_info_input(cam), camera_info_topic(cam)))
    return tuple(out)


def output_topic(spec: NodeSpec, private: str) -> str:
    """Absolute name of the private topic ``private`` of ``spec`` (e.g. ``topics.DETECTIONS_OUTPUT``)
    once the graph's remaps apply: what a listener (replay, the calibration recorder) subscribes."""
    for src, dst in spec.remaps:
        if src == private:
            return node_topic(spec.name, dst) if dst.startswith("~/") else dst
    return node_topic(spec.name, private)


LIDAR_DETECTOR = NodeSpec(
    name="lidar_detector",
    executable="lidar_detector",
    module="qd_perception.ros.nodes.lidar_detector",
    params="lidar_detector.param.yaml",
    remaps=detector_remaps(),
    detector=LIDAR_DETECTOR_DEFAULTS.detector.name,
)
BEV_DETECTOR = NodeSpec(
    name="bev_detector",
    executable="bev_detector",
    module="qd_perception.ros.nodes.bev_detector",
    params="bev_detector.param.yaml",
    remaps=detector_remaps(),
    detector=BEV_DETECTOR_DEFAULTS.detector.name,
)

#: The calibration recorder takes the lidar detector's inputs, plus its detections (object mix).
CALIBRATION_RECORDER = NodeSpec(
    name="calibration_recorder",
    executable="calibration_recorder",
    module="qd_perception.ros.nodes.calibration_recorder",
    params="calibration_recorder.param.yaml",
    remaps=(*detector_remaps(), (DETECTIONS_INPUT, output_topic(LIDAR_DETECTOR, DETECTIONS_OUTPUT))),
)

#: graph name -> nodes. ``replay.launch.py`` adds the bag player to one of these.
GRAPHS: dict[str, tuple[NodeSpec, ...]] = {
    "lidar": (LIDAR_DETECTOR,),
    "bev": (LIDAR_DETECTOR, BEV_DETECTOR),
    "calibration": (LIDAR_DETECTOR, CALIBRATION_RECORDER),
}


def params_path(spec: NodeSpec, override: str | Path | None = None) -> Path | None:
    if override:
        return Path(override)
    return paths.config_dir() / spec.params if spec.params else None


def _detector_param(spec: NodeSpec, params: Path | None, key: str) -> Any:
    """``detector.<key>`` of ``spec``'s parameter file (flat or nested form), None if unset."""
    if params is None or not params.exists():
        return None
    data = yaml.safe_load(params.read_text()) or {}
    node = data.get(spec.name) or data.get("/**") or {}
    ros = node.get("ros__parameters", {}) if isinstance(node, dict) else {}
    value = ros.get(f"detector.{key}")
    return value if value is not None else (ros.get("detector") or {}).get(key)


def effective_detector(spec: NodeSpec, params: Path | None) -> str:
    """The detector a node will run: its parameter file's ``detector.name`` or the default."""
    return _detector_param(spec, params, "name") or spec.detector


def core_share(specs: list[NodeSpec] | tuple[NodeSpec, ...], cpus: int | None = None) -> int:
    """Compute threads for each detector node of a graph run side by side on one machine: the
    cores split evenly between the detectors (at least 1; 0 when the graph has none). With the
    libraries' default pools every node would use every core and they would slow each other
    down (measured, docs/benchmarks.md, issue 5)."""
    n = sum(1 for s in specs if s.detector)
    return max(1, (cpus or os.cpu_count() or 1) // n) if n else 0


def nodes(graph: str, param_overrides: dict[str, str] | None = None) -> tuple[list[NodeSpec], list[str]]:
    """Nodes of ``graph`` that can run here and messages about the ones left out."""
    if graph not in GRAPHS:
        raise KeyError(f"unknown graph {graph!r}; graphs: {sorted(GRAPHS)}")
    from qd_perception.runtime.factory import detector_names

    available = set(detector_names())
    keep, skipped = [], []
    for spec in GRAPHS[graph]:
        det = effective_detector(spec, params_path(spec, (param_overrides or {}).get(spec.name)))
        if det and det not in available:
            skipped.append(
                f"{spec.name}: detector {det!r} not available (have {sorted(available)}), not started"
            )
            continue
        keep.append(spec)
    return keep, skipped


def ros_arguments(
    spec: NodeSpec, params: Path | None, log_level: str = "info", threads: int = 0
) -> list[str]:
    """``--ros-args`` of a node started as a plain process (the pip launcher, replay).

    ``threads`` (:func:`core_share`) is given to a detector node whose parameter file leaves
    ``detector.threads`` at 0 ("not chosen"); a file that sets it wins."""
    args = ["--ros-args", "-r", f"__node:={spec.name}", "--log-level", log_level]
    if params is not None:
        args += ["--params-file", str(params)]
    if threads and spec.detector and not _detector_param(spec, params, "threads"):
        args += ["-p", f"detector.threads:={int(threads)}"]
    for a, b in spec.remaps:
        args += ["-r", f"{a}:={b}"]
    return args


def launch_description(graph: str) -> Any:
    """``launch.LaunchDescription`` of ``graph`` for ``ros2 launch`` (launch/*.launch.py).

    Launch arguments: ``log_level`` (default info), ``<node>_params`` (parameter file) and, for
    detector nodes, ``<node>_threads`` (default: :func:`core_share` of this machine).
    """
    from launch.actions import DeclareLaunchArgument, LogInfo
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from launch import LaunchDescription

    entries: list[Any] = [DeclareLaunchArgument("log_level", default_value="info")]
    specs, skipped = nodes(graph)
    share = core_share(specs)
    entries += [LogInfo(msg=f"[qd_perception {graph}] {s}") for s in skipped]
    for spec in specs:
        arg = f"{spec.name}_params"
        default = params_path(spec)
        entries.append(
            DeclareLaunchArgument(
                arg, default_value=str(default or ""), description=f"{spec.name} parameters"
            )
        )
        parameters: list[Any] = [LaunchConfiguration(arg)] if default else []
        if spec.detector:
            # the core share of the pip launcher, as a launch argument (it wins over the file)
            threads = f"{spec.name}_threads"
            entries.append(
                DeclareLaunchArgument(
                    threads, default_value=str(share), description=f"{spec.name} detector.threads"
                )
            )
            parameters.append({"detector.threads": LaunchConfiguration(threads)})
        entries.append(
            Node(
                package=PACKAGE,
                executable=spec.executable,
                name=spec.name,
                parameters=parameters,
                remappings=list(spec.remaps),
                arguments=[*spec.arguments, "--ros-args", "--log-level", LaunchConfiguration("log_level")],
                output="screen",
                emulate_tty=True,
            )
        )
    return LaunchDescription(entries)
