"""Configuration of the detector nodes (pure: importable without ROS).

The same frozen dataclass is declared as ROS parameters (:mod:`qd_perception.ros.params`),
written to ``config/<node>.param.yaml`` and used by the pip launcher. Parameter names are the
dotted field paths, e.g. ``detector.name``, ``sync.slop_s``, ``sweeps.max_sweeps``.

Topics of a detector node: :data:`qd_perception.topics.DETECTOR_PORTS` (relative to the node,
remapped by the launch files, see :mod:`qd_perception.ros.graph`; the table in docs/ros.md is
generated from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from qd_perception.geometry.rig import DEFAULT_CAMERAS
from qd_perception.ros.frontend import InputChecks
from qd_perception.runtime.factory import DetectorConfig
from qd_perception.runtime.sweeps import SweepConfig
from qd_perception.sync.approximate_time import SyncConfig


@dataclass(frozen=True)
class MissingCameras:
    """What a detector node does while some of its cameras are missing (parameters
    ``missing_cameras.*``; docs/ros.md, "Missing cameras").

    A camera is missing once the other inputs' stamps are more than ``timeout_s`` past its newest
    accepted image (silent, stale, or every image refused); it is back after two images in a row
    in step with the others (:class:`qd_perception.sync.presence.StreamPresence`).

    mode: ``wait`` (default): no output while a camera is missing (diagnostics ERROR naming it);
        ``degrade``: run on the cameras present (a missing camera contributes nothing: its
        ``bev_mask`` rows are empty) and flag every such output (diagnostics WARN, log).
    timeout_s: how far the other inputs may move on before a camera counts as missing; between
        ``sync.slop_s`` and ``sync.reset_after_jump_s``.
    max_missing: ``degrade`` runs with at most this many cameras missing; with more it waits.
    """

    mode: Literal["wait", "degrade"] = "wait"
    timeout_s: float = 0.5
    max_missing: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("wait", "degrade"):
            raise ValueError(f"missing_cameras.mode: {self.mode!r} is neither 'wait' nor 'degrade'")
        if not self.timeout_s > 0:
            raise ValueError(f"missing_cameras.timeout_s must be > 0, got {self.timeout_s}")
        if self.max_missing < 1:
            raise ValueError(f"missing_cameras.max_missing must be >= 1, got {self.max_missing}")


@dataclass(frozen=True)
class DetectorNodeConfig:
    """Parameters of ``lidar_detector`` and ``bev_detector``.

    input_checks: limits of the message checks (:class:`~qd_perception.ros.frontend.InputChecks`).
    missing_cameras: wait for or run without missing cameras (:class:`MissingCameras`).
    inputs: modalities to synchronise in addition to the detector's own ("lidar", "cameras"),
        e.g. to run a lidar detector only on frames where all cameras are present.
    cameras: rig camera names (topics use the lower-case name).
    image_size: expected (H, W) of every image; [0, 0] accepts any size.
    use_odometry: subscribe to odometry (ego pose for multi-sweep merging and velocities).
    always_run: run the detector even when nobody subscribes to its outputs (benchmarks).
    stall_warn_s: warn (naming the silent inputs) when no complete set formed for this long.
    diagnostics_period_s: how often ``~/output/diagnostics`` is published.
    latency_window: samples kept for the latency percentiles.
    latency_stamp_window_s: ``pipeline_latency_ms`` (node clock - input stamp) is only recorded
        when the stamp is within this many seconds of the node clock; otherwise the two clocks are
        unrelated (a bag replayed without ``use_sim_time``/``/clock``) and it is reported as n/a.
    warmup: run the detector once on a synthetic frame before subscribing, so the first real
        frames do not pay lazy initialisation (model load, first-call allocations).
    """

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    sync: SyncConfig = field(default_factory=lambda: SyncConfig(slop_s=0.05, queue_size=10))
    sweeps: SweepConfig = field(default_factory=SweepConfig)
    input_checks: InputChecks = field(default_factory=InputChecks)
    missing_cameras: MissingCameras = field(default_factory=MissingCameras)
    rig: str = "nuscenes_like"
    inputs: tuple[str, ...] = ()
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    image_size: tuple[int, int] = (0, 0)
    frame_id: str = "base_link"
    lidar_frame: str = "lidar_top"
    use_odometry: bool = True
    always_run: bool = False
    marker_lifetime_s: float = 0.0
    stall_warn_s: float = 2.0
    diagnostics_period_s: float = 1.0
    latency_window: int = 200
    latency_stamp_window_s: float = 60.0
    warmup: bool = True

    def __post_init__(self) -> None:
        bad = sorted(set(self.inputs) - {"lidar", "cameras"})
        if bad:
            raise ValueError(f"inputs: unknown modality {bad}; use 'lidar' and/or 'cameras'")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: duplicate names in {list(self.cameras)}")
        if self.diagnostics_period_s <= 0 or self.stall_warn_s <= 0:
            raise ValueError("diagnostics_period_s and stall_warn_s must be > 0")
        if self.latency_stamp_window_s <= 0:
            raise ValueError("latency_stamp_window_s must be > 0")
        mc = self.missing_cameras
        if not self.sync.slop_s < mc.timeout_s < self.sync.reset_after_jump_s:
            raise ValueError(
                f"missing_cameras.timeout_s ({mc.timeout_s} s) must lie between sync.slop_s "
                f"({self.sync.slop_s} s: a camera within the slop is not missing) and "
                f"sync.reset_after_jump_s ({self.sync.reset_after_jump_s} s: a clock jump)"
            )
        if mc.mode == "degrade" and mc.max_missing >= len(self.cameras):
            raise ValueError(
                f"missing_cameras.max_missing ({mc.max_missing}) must leave a camera: "
                f"there are {len(self.cameras)}"
            )


#: ``lidar_detector``'s parameters where neither a parameter file nor ``-p`` sets them (what
#: ``config/lidar_detector.param.yaml`` ships): the LiDAR-PTQ INT8 artefact of the shipped pillar
#: CenterPoint, run by ONNX Runtime (``backend: auto`` follows ``model_path``: the FP32 checkpoint
#: ``weights/centerpoint_pillar_cpu.pt`` runs in torch), on the 5 merged sweeps it was trained on.
LIDAR_DETECTOR_DEFAULTS = DetectorNodeConfig(
    detector=DetectorConfig(
        name="centerpoint", model_path="weights/centerpoint_pillar_int8_ort", backend="auto"
    ),
    sweeps=SweepConfig(max_sweeps=5),
)
#: ``bev_detector``'s parameters where neither a parameter file nor ``-p`` sets them (what
#: ``config/bev_detector.param.yaml`` ships): the QD-BEV W4A6 artefact of the shipped nano camera
#: model, run by ONNX Runtime (``backend: auto``; the FP32 checkpoint ``weights/bevformer_nano.pt``
#: it was quantized from runs in torch).
BEV_DETECTOR_DEFAULTS = DetectorNodeConfig(
    detector=DetectorConfig(name="bev", model_path="weights/bevformer_nano_w4a6_ort", backend="auto")
)
