"""``calibration_recorder``: gather a diverse PTQ calibration set from live (or replayed) sensors.

Subscribes to the same inputs as a detector node (``~/input/pointcloud``, ``~/input/<cam>/image``
+ ``camera_info``, ``~/input/odom``; remapped by the launch files, see
:mod:`qd_perception.ros.graph`), synchronises them with the project's approximate-time policy,
merges lidar sweeps into the ego frame exactly as the detector nodes do (same conversions, rig
and :class:`~qd_perception.runtime.sweeps.SweepAccumulator`), and offers every synchronised
:class:`~qd_perception.data.types.Frame` to a
:class:`~qd_perception.data.calib_store.CalibrationStore` under ``out_dir``: bounded, diverse by
scene statistics, atomic files, resumed after a restart.

The object mix of a frame comes from a detector's output on ``~/input/detections`` (matched by
stamp, waiting at most ``detections_wait_s``; frames whose detections do not come are offered
without them and counted). Set ``detections_wait_s: 0`` to ignore detections.

**Trigger.** ``~/run_ptq`` (``std_srvs/Trigger``) runs ``ptq_command`` (an argument list;
``{calib_dir}`` is replaced by ``out_dir``, ``{model}`` by ``ptq_model`` resolved to a path,
``{python}`` by this node's interpreter) as a subprocess at ``ptq_niceness`` once at least
``min_frames`` frames are stored; it answers at once (``success`` false with the reason when
refused), the command's output goes to ``<out_dir>/ptq.log``. The default command writes the
LiDAR-PTQ W8A8 artefact to ``<out_dir>/lidar_int8``, which ``lidar_detector`` loads with
``detector.backend: onnxruntime`` and ``detector.model_path: <out_dir>/lidar_int8``.

**The set must look like the model's input.** CenterPoint reads ``nsweeps`` merged sweeps per
frame as ``(P, 5) [x, y, z, intensity, time_lag]``; frames of one sweep would calibrate its
activation ranges on a third of the density it meets on the road. When ``ptq_command`` uses
``{model}``, the node reads ``ptq_model`` (default: the shipped pillar weights) at start-up and
**refuses to start** (exit code 2, the message names both values) when ``sweeps.max_sweeps``
differs from the model's ``nsweeps``, when the model's point features are not the five stored, or
when ``modalities`` lacks lidar. It does not adopt the model's value silently: the parameter file
stays the one statement of what the node records, and a mismatch is a configuration error the
user should see (usually the recorder's and the detector's parameter files disagreeing). The
layout is written to ``<out_dir>/recorder.json``; a non-empty set recorded with another sweep
count is not resumed (error) rather than mixed. Frames that merge fewer than ``max_sweeps`` sweeps
(the first sweeps of a drive or after a synchroniser reset, sweeps without odometry) are not
offered (counted as ``incomplete_sweeps``): the diversity selection would otherwise favour exactly
these sparse outliers. ``auto_trigger`` runs it when the
set first becomes full. While PTQ runs the set is frozen (offered frames are counted, not stored)
so the command reads a consistent set. **Status** (``~/status``, ``std_msgs/String``, JSON, every
``status_period_s``): stored / offered / considered frames, pending frames and the PTQ state
(idle, running, succeeded, failed with its exit code).

Parameters: :class:`CalibrationRecorderConfig` (``config/calibration_recorder.param.yaml``).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qd_perception.config import ConfigError
from qd_perception.data.calib_store import LAYOUT_NAME, CalibStoreConfig
from qd_perception.ros.frontend import InputChecks
from qd_perception.ros.inputs import LIDAR, camera_inputs, subscribe_sensor_inputs
from qd_perception.ros.node_config import DEFAULT_CAMERAS
from qd_perception.runtime.sweeps import SweepConfig
from qd_perception.sync.approximate_time import SyncConfig

NODE_NAME = "calibration_recorder"
ODOM = "odom"
#: Columns of every stored frame's points (what SweepAccumulator.add returns, ego frame).
POINT_FEATURES: tuple[str, ...] = ("x", "y", "z", "intensity", "time_lag")
#: The set's input layout, beside index.json (checked when a set is resumed).
LAYOUT_FILE = LAYOUT_NAME  # recorder.json, read back by `quantize lidar`
#: The FP32 model the default trigger quantizes: the shipped pillar CenterPoint (5 sweeps).
DEFAULT_PTQ_MODEL = "weights/centerpoint_pillar_cpu.pt"


@dataclass(frozen=True)
class CalibrationRecorderConfig:
    """Parameters of ``calibration_recorder`` (dotted names, e.g. ``store.capacity``).

    out_dir: the calibration set directory (``qd-perception quantize ... --calib out_dir``).
    modalities: inputs a frame needs: "lidar" and/or "cameras" (images are stored when
        ``store.store_images``).
    input_checks: the detector nodes' message checks (:class:`~qd_perception.ros.frontend.InputChecks`).
    detections_wait_s: how long a frame waits for the detector output with its stamp (object mix).
    sweeps: lidar sweeps merged per frame; ``max_sweeps`` must equal ``ptq_model``'s nsweeps.
    min_frames: fewest stored frames for which ``~/run_ptq`` starts the command.
    ptq_command: argument list run by the trigger; ``{calib_dir}`` becomes ``out_dir``,
        ``{model}`` the resolved ``ptq_model`` and ``{python}`` this node's Python interpreter.
    ptq_model: the FP32 checkpoint to quantize (``train lidar`` output) for ``{model}``; relative
        paths resolve like the detector's ``model_path`` (as given, else the package share dir).
    ptq_niceness: added to the PTQ process's nice value (0..19) so the detectors keep the CPU.
    auto_trigger: run ``ptq_command`` once, when the set first becomes full.
    """

    out_dir: str = ".cache/calibration"
    store: CalibStoreConfig = field(
        default_factory=lambda: CalibStoreConfig(capacity=128, sample_every=5, store_images=False)
    )
    modalities: tuple[str, ...] = ("lidar",)
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    rig: str = "nuscenes_like"
    frame_id: str = "base_link"
    lidar_frame: str = "lidar_top"
    sync: SyncConfig = field(default_factory=lambda: SyncConfig(slop_s=0.05, queue_size=10))
    sweeps: SweepConfig = field(default_factory=lambda: SweepConfig(max_sweeps=5))
    input_checks: InputChecks = field(default_factory=InputChecks)
    use_odometry: bool = True
    detections_wait_s: float = 0.5
    min_frames: int = 16
    ptq_command: tuple[str, ...] = (
        "{python}",
        "-m",
        "qd_perception.cli",
        "quantize",
        "lidar",
        "--model",
        "{model}",
        "--calib",
        "{calib_dir}",
        "--method",
        "lidar_ptq",
        "--bits",
        "w8a8",
        "--out",
        "{calib_dir}/lidar_int8",
    )
    ptq_model: str = DEFAULT_PTQ_MODEL
    ptq_niceness: int = 10
    auto_trigger: bool = False
    status_period_s: float = 1.0

    def __post_init__(self) -> None:
        bad = sorted(set(self.modalities) - {"lidar", "cameras"})
        if bad or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of ['lidar', 'cameras'], got {bad}")
        if not 1 <= self.min_frames <= self.store.capacity:
            raise ValueError(
                f"min_frames must be in [1, store.capacity={self.store.capacity}], got {self.min_frames}"
            )
        if not self.ptq_command:
            raise ValueError("ptq_command must not be empty")
        if self.detections_wait_s < 0 or self.status_period_s <= 0:
            raise ValueError("detections_wait_s must be >= 0 and status_period_s > 0")
        if not 0 <= self.ptq_niceness <= 19:
            raise ValueError(f"ptq_niceness must be in [0, 19], got {self.ptq_niceness}")
        if self.sweeps.max_sweeps > 1 and not self.use_odometry and "lidar" in self.modalities:
            raise ValueError(
                f"sweeps.max_sweeps: {self.sweeps.max_sweeps} needs use_odometry: true (older sweeps are "
                "motion-compensated with the ego poses; without them no frame would be complete)"
            )

    @property
    def uses_model(self) -> bool:
        return any("{model}" in a for a in self.ptq_command)


def ptq_argv(cfg: CalibrationRecorderConfig, model: str | Path | None = None) -> list[str]:
    """The trigger's command with ``{calib_dir}``, ``{model}`` (``model`` if given, else
    ``ptq_model`` as written) and ``{python}`` substituted."""
    m = str(model) if model is not None else cfg.ptq_model
    subs = {"{calib_dir}": str(Path(cfg.out_dir)), "{model}": m, "{python}": sys.executable}
    out = []
    for a in cfg.ptq_command:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@dataclass(frozen=True)
class PtqModelInputs:
    """What the model to quantize reads: checked against the recorder's settings."""

    path: Path
    name: str
    nsweeps: int
    num_point_features: int


def check_ptq_model(cfg: CalibrationRecorderConfig) -> PtqModelInputs | None:
    """Read ``ptq_model`` and check that the frames this node stores are its input.

    Returns None when the command does not use ``{model}`` or ``ptq_model`` is empty (the trigger
    then refuses with a message). Raises :class:`ConfigError` naming the parameters on a missing
    or unreadable checkpoint, a sweep-count mismatch, another point layout, or no lidar input.
    """
    if not cfg.uses_model or not cfg.ptq_model:
        return None
    from qd_perception.runtime.factory import resolve_package_file

    path = resolve_package_file(cfg.ptq_model)
    if path is None:
        raise ConfigError(
            f"ptq_model {cfg.ptq_model!r} does not exist (as given, or under the package share dir)"
        )
    if path.is_dir():
        raise ConfigError(
            f"ptq_model {str(path)!r} is a directory (an export or INT8 artefact?); PTQ starts from the "
            "FP32 checkpoint written by `qd-perception train lidar` (.pt)"
        )
    from qd_perception.model_files import load_torch_file
    from qd_perception.models.build import config_from_dict

    # Only the embedded config is needed (the quantize command loads the weights itself).
    try:
        ckpt = load_torch_file(path, "ptq_model")
        if not isinstance(ckpt, dict) or ckpt.get("arch") != "centerpoint" or "config" not in ckpt:
            raise ConfigError("not a CenterPoint checkpoint of `qd-perception train lidar`")
        mcfg = config_from_dict("centerpoint", ckpt["config"])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:  # ConfigError is a ValueError
        raise ConfigError(f"ptq_model {str(path)!r}: {e}") from e
    model = PtqModelInputs(path.resolve(), mcfg.name, int(mcfg.nsweeps), int(mcfg.num_point_features))
    if "lidar" not in cfg.modalities:
        raise ConfigError(
            f"ptq_model {model.name} is a lidar model but modalities is {list(cfg.modalities)}: add lidar"
        )
    if model.num_point_features != len(POINT_FEATURES):
        raise ConfigError(
            f"ptq_model {model.name} reads {model.num_point_features} features per point; this node "
            f"stores {len(POINT_FEATURES)} {list(POINT_FEATURES)}"
        )
    if cfg.sweeps.max_sweeps != model.nsweeps:
        raise ConfigError(
            f"sweeps.max_sweeps is {cfg.sweeps.max_sweeps} but ptq_model {model.name} ({path}) reads "
            f"{model.nsweeps} merged sweeps: a calibration set of {cfg.sweeps.max_sweeps}-sweep frames "
            f"would calibrate it on the wrong point density. Set sweeps.max_sweeps: {model.nsweeps} "
            "(the same value as the lidar_detector's)"
        )
    return model


def merged_sweeps(points: np.ndarray) -> int:
    """Sweeps in a merged ``(P, 5)`` cloud: SweepAccumulator concatenates one block per sweep, each
    with one ``time_lag``, so counting blocks is O(P) (``np.unique`` would sort 10^5 values at 20 Hz).
    Never fewer than the true count."""
    if len(points) == 0:
        return 0
    return int(np.count_nonzero(np.diff(points[:, 4]))) + 1


def set_layout(cfg: CalibrationRecorderConfig) -> dict[str, Any]:
    """The layout of the frames this node stores (``recorder.json``)."""
    return {
        "points": list(POINT_FEATURES),
        "frame_id": cfg.frame_id,
        "max_sweeps": cfg.sweeps.max_sweeps,
        "max_age_s": cfg.sweeps.max_age_s,
        "modalities": list(cfg.modalities),
    }


def check_and_write_layout(out_dir: Path, layout: dict[str, Any], stored: int) -> None:
    """Refuse to resume a non-empty set recorded with another layout; else write ``layout``."""
    from qd_perception.sim.nuscenes_writer import atomic_write_json

    path = out_dir / LAYOUT_FILE
    if stored and path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path} is unreadable ({e}); move the set away or delete {path}") from e
        diff = {k: (old.get(k), v) for k, v in layout.items() if old.get(k) != v}
        if diff:
            text = ", ".join(f"{k}: {a!r} stored, {b!r} now" for k, (a, b) in diff.items())
            raise ConfigError(
                f"calibration set {out_dir} ({stored} frames) was recorded with another layout ({text}); "
                "frames of both would be mixed: use another out_dir or delete this set"
            )
    atomic_write_json(path, layout)


class PtqRunner:
    """Runs the PTQ command once at a time in a subprocess; thread-safe state for the status."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.state = "idle"  # idle | running | succeeded | failed
        self.returncode: int | None = None
        self.runs = 0
        self.pid: int | None = None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def start(self, argv: list[str], on_done=None, niceness: int = 0) -> tuple[bool, str]:
        with self._lock:
            if self.state == "running":
                return False, f"PTQ already running (pid {self.pid})"
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # closed by the waiter thread
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
                if niceness:
                    # Lower the child only (preexec_fn is unsafe in this threaded node). Set before
                    # the interpreter has started its compute threads, which inherit the value.
                    os.setpriority(os.PRIO_PROCESS, self._proc.pid, niceness)
            except OSError as e:
                log.close()
                self.state, self.returncode = "failed", None
                return False, f"cannot start {argv[0]!r}: {e}"
            self.state, self.returncode, self.pid = "running", None, self._proc.pid
            self.runs += 1
        threading.Thread(target=self._wait, args=(self._proc, log, on_done), daemon=True).start()
        return True, f"started PTQ (pid {self.pid}): {' '.join(argv)}; log {self.log_path}"

    def _wait(self, proc: subprocess.Popen, log, on_done) -> None:
        rc = proc.wait()
        log.close()
        with self._lock:
            self.returncode = rc
            self.state = "succeeded" if rc == 0 else "failed"
        if on_done is not None:
            on_done(rc)

    def stop(self, timeout_s: float = 5.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "returncode": self.returncode,
            "runs": self.runs,
            "pid": self.pid,
            "log": str(self.log_path),
        }


def make_node(argv_unused: Any = None) -> Any:
    """Create the node (rclpy imported lazily: this module's config is importable without ROS)."""
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from qd_perception.data.calib_store import CalibrationStore
    from qd_perception.data.rosbag import detections_from_msg
    from qd_perception.data.types import Frame
    from qd_perception.geometry.rig import load_rig
    from qd_perception.msg import Detection3DArray
    from qd_perception.ros.convert import stamp_to_ns
    from qd_perception.ros.frontend import SensorFrontEnd
    from qd_perception.ros.params import declare_config
    from qd_perception.runtime.sweeps import SweepAccumulator
    from qd_perception.sync.approximate_time import ApproximateTimePolicy

    class CalibrationRecorder(Node):
        def __init__(self) -> None:
            super().__init__(NODE_NAME)
            self.cfg: CalibrationRecorderConfig = declare_config(self, CalibrationRecorderConfig)
            cfg = self.cfg
            self.rig = load_rig(cfg.rig)
            self.lidar2ego = self.rig.lidar2ego().astype(np.float32)
            self.use_lidar = "lidar" in cfg.modalities
            self.use_cameras = "cameras" in cfg.modalities
            for cam in cfg.cameras if self.use_cameras else ():
                self.rig.camera(cam)
            self.out_dir = Path(cfg.out_dir)
            # Before anything is written: a wrong model or sweep count stops the node (exit 2).
            self.ptq_model = check_ptq_model(cfg)
            self.store = CalibrationStore.open(self.out_dir, cfg.store)
            check_and_write_layout(self.out_dir, set_layout(cfg), len(self.store))
            self.ptq = PtqRunner(self.out_dir / "ptq.log")
            self.stats: Counter[str] = Counter()
            self._last_log: dict[str, float] = {}
            # the detector's own input checks: the set holds only what the detector would see
            self.frontend = SensorFrontEnd(
                cfg.input_checks, self.lidar2ego, cfg.lidar_frame, cfg.frame_id, self._warn,
                lambda: self.get_clock().now().nanoseconds, jump_s=cfg.sync.reset_after_jump_s,
            )  # fmt: skip
            self.camera_K: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}
            required = ([LIDAR] if self.use_lidar else []) + (list(cfg.cameras) if self.use_cameras else [])
            self.policy: ApproximateTimePolicy[Any] = ApproximateTimePolicy(
                required,
                cfg.sync,
                optional=[ODOM] if cfg.use_odometry else [],
                pivot=required[0],
                on_reset=self._on_reset,
            )
            self.sweeps = SweepAccumulator(cfg.sweeps)
            # Frames waiting for their detections: stamp_ns -> (Frame, monotonic arrival).
            self._pending: dict[int, tuple[Any, float]] = {}
            self._early_dets: dict[int, Any] = {}
            self._lock = threading.Lock()
            # Disk writes happen on a worker thread; a full queue drops the frame (counted).
            self._work: queue.Queue = queue.Queue(maxsize=4)
            self._worker = threading.Thread(target=self._run_worker, name="calib-writer", daemon=True)
            self._worker.start()

            self.subs = subscribe_sensor_inputs(
                self, cfg.cameras, self.use_lidar, self.use_cameras, cfg.use_odometry
            )
            if cfg.detections_wait_s > 0:
                self.subs.append(
                    self.create_subscription(
                        # Best effort matches reliable and best-effort detector publishers alike.
                        Detection3DArray,
                        "~/input/detections",
                        self._on_detections,
                        qos_profile_sensor_data,
                    )
                )
            self.pub_status = self.create_publisher(String, "~/status", QoSProfile(depth=5))
            # Own callback group: the trigger answers while a large cloud is being converted.
            self.srv = self.create_service(
                Trigger, "~/run_ptq", self._on_trigger, callback_group=MutuallyExclusiveCallbackGroup()
            )
            self.create_timer(cfg.status_period_s, self._publish_status)
            self.create_timer(0.1, self._flush_pending)
            self.get_logger().info(
                f"calibration set {self.out_dir}: {len(self.store)}/{cfg.store.capacity} frames "
                f"(resumed), inputs {required}, sample every {cfg.store.sample_every}; "
                f"{cfg.sweeps.max_sweeps} sweeps per frame"
                + (
                    f" (ptq_model {self.ptq_model.name}: {self.ptq_model.nsweeps} sweeps, checked)"
                    if self.ptq_model
                    else ""
                )
                + f"; trigger ~/run_ptq runs {self._argv()}"
            )

        # -- inputs --------------------------------------------------------------------------
        def _warn(self, key: str, text: str, period_s: float = 2.0) -> None:
            """Warning throttled per ``key`` (one kind of bad input must not hide another)."""
            now = time.monotonic()
            if now - self._last_log.get(key, -1e9) >= period_s:
                self._last_log[key] = now
                self.get_logger().warning(text)

        def _on_cloud(self, msg: Any) -> None:
            got = self.frontend.cloud(LIDAR, msg)
            if got is not None:
                self._offer_sync(LIDAR, got[0], got[1])

        def _on_image(self, cam: str, msg: Any) -> None:
            got = self.frontend.image(cam, msg)
            if got is not None:
                self._offer_sync(cam, got[0], got[1])

        def _on_info(self, cam: str, msg: Any) -> None:
            got = self.frontend.camera_info(cam, msg)
            if got is not None:
                self.camera_K[cam] = got

        def _on_odom(self, msg: Any) -> None:
            got = self.frontend.odometry(ODOM, msg)
            if got is not None:
                self.policy.add(ODOM, got[0], got[1])

        def _on_reset(self, reason: str) -> None:
            self.get_logger().warning(f"synchroniser reset: {reason}; sweep history cleared")
            self.sweeps.reset()

        def _offer_sync(self, stream: str, stamp_ns: int, payload: Any) -> None:
            item = self.policy.add(stream, stamp_ns, payload)
            if item is None:
                return
            self.stats["frames_synced"] += 1
            frame = self._frame(item)
            if self.use_lidar and merged_sweeps(frame.points) < self.cfg.sweeps.max_sweeps:
                self.stats["incomplete_sweeps"] += 1  # start of a drive, reset, missing odometry
                return
            if self.cfg.detections_wait_s <= 0:
                self._enqueue(frame, None)
                return
            with self._lock:
                dets = self._early_dets.pop(item.stamp_ns, None)
                if dets is None:
                    self._pending[item.stamp_ns] = (frame, time.monotonic())
                    return
            self._enqueue(frame, dets)

        def _frame(self, item: Any) -> Any:
            msgs = dict(zip(self.policy.required, item.messages))
            odom = item.optional.get(ODOM)
            ego2global = odom[0] if odom is not None else None
            points = None
            if self.use_lidar:
                points = self.sweeps.add(msgs[LIDAR], item.stamp_ns // 1000, ego2global)
            cams = (
                camera_inputs(self.policy.required, item.stamps_ns, msgs, self.camera_K, self.rig)
                if self.use_cameras
                else ()
            )
            return Frame(
                token=str(item.stamp_ns),
                scene_token="live",
                timestamp_us=item.stamp_ns // 1000,
                ego2global=ego2global if ego2global is not None else np.eye(4),
                points=points,
                cameras=cams,
                ego_velocity=odom[1] if odom is not None else None,
            )

        def _on_detections(self, msg: Any) -> None:
            try:
                stamp = stamp_to_ns(msg.header.stamp)
                dets = detections_from_msg(msg)
            except Exception as e:  # whatever a malformed message provokes: a counted drop
                self.frontend.drop(
                    "detections", "detections_malformed", f"{type(e).__name__}: {str(e)[:200]}"
                )
                return
            with self._lock:
                waiting = self._pending.pop(stamp, None)
                if waiting is None:
                    self._early_dets[stamp] = dets
                    while len(self._early_dets) > 50:  # detections of frames we never formed
                        self._early_dets.pop(next(iter(self._early_dets)))
                    return
            self.stats["with_detections"] += 1
            self._enqueue(waiting[0], dets)

        def _flush_pending(self) -> None:
            now = time.monotonic()
            with self._lock:
                late = [s for s, (_, t) in self._pending.items() if now - t > self.cfg.detections_wait_s]
                items = [self._pending.pop(s)[0] for s in late]
            for f in items:
                self.stats["without_detections"] += 1
                self._enqueue(f, None)

        def _enqueue(self, frame: Any, dets: Any) -> None:
            if self.ptq.running:
                self.stats["frozen_during_ptq"] += 1
                return
            try:
                self._work.put_nowait((frame, dets))
            except queue.Full:
                self.stats["dropped_busy"] += 1

        def _run_worker(self) -> None:
            while True:
                job = self._work.get()
                if job is None:
                    self.store.flush()
                    return
                frame, dets = job
                try:
                    res = self.store.offer(frame, dets)
                except OSError as e:
                    self.stats["write_errors"] += 1
                    self.get_logger().error(f"could not store the frame at {frame.timestamp_us} us: {e}")
                    continue
                if res.stored:
                    self.stats["accepted"] += 1  # incl. those that replaced a member
                if self.cfg.auto_trigger and self.store.full and self.ptq.runs == 0 and not self.ptq.running:
                    _, text = self._start_ptq()
                    self.get_logger().info(f"auto trigger: {text}")

        # -- trigger and status ----------------------------------------------------------------
        def _argv(self) -> list[str]:
            return ptq_argv(self.cfg, self.ptq_model.path if self.ptq_model else None)

        def _start_ptq(self) -> tuple[bool, str]:
            n = len(self.store)
            if n < self.cfg.min_frames:
                return False, f"only {n} frames stored, need {self.cfg.min_frames}"
            if self.cfg.uses_model and not self.cfg.ptq_model:
                return False, "ptq_command needs {model}: set the ptq_model parameter (an FP32 checkpoint)"

            def done(rc: int) -> None:
                # One severity per call site: rclpy refuses a call site that changes severity.
                text = f"PTQ command finished with exit code {rc}; log {self.ptq.log_path}"
                if rc == 0:
                    self.get_logger().info(text)
                else:
                    self.get_logger().error(text)

            return self.ptq.start(self._argv(), on_done=done, niceness=self.cfg.ptq_niceness)

        def _on_trigger(self, request: Any, response: Any) -> Any:
            ok, text = self._start_ptq()
            response.success, response.message = ok, text
            if ok:
                self.get_logger().info(f"~/run_ptq: {text}")
            else:
                self.get_logger().warning(f"~/run_ptq: {text}")
            return response

        def status(self) -> dict[str, Any]:
            with self._lock:
                pending = len(self._pending)
            return {
                "out_dir": str(self.out_dir),
                "stored": len(self.store),
                "capacity": self.cfg.store.capacity,
                "ready_for_ptq": len(self.store) >= self.cfg.min_frames,
                **{f"store.{k}": v for k, v in self.store.counters.items()},
                **dict(self.stats),
                "bad_input": sum(self.frontend.bad_input.values()),
                **{f"bad_input.{k}": v for k, v in self.frontend.bad_input.items()},
                **dict(self.frontend.stats),
                "pending_detections": pending,
                "ptq": self.ptq.as_dict(),
            }

        def _publish_status(self) -> None:
            self.pub_status.publish(String(data=json.dumps(self.status())))

        def stop(self) -> None:
            self._flush_pending_all()
            self._work.put(None)
            self._worker.join(timeout=10.0)
            self.ptq.stop()

        def _flush_pending_all(self) -> None:
            with self._lock:
                items = [f for f, _ in self._pending.values()]
                self._pending.clear()
            for f in items:
                try:
                    self._work.put((f, None), timeout=2.0)
                except queue.Full:
                    self.stats["dropped_busy"] += 1

    return CalibrationRecorder()


def main(argv: list[str] | None = None) -> int:
    """Entry point; SIGINT / SIGTERM stop cleanly (pending frames written, PTQ child stopped).
    Signals, spin loop and teardown order: :func:`qd_perception.ros.lifecycle.run_node`."""
    from qd_perception.ros.lifecycle import run_node

    def finish(node: Any) -> None:
        node.stop()
        node.get_logger().info(f"shutting down: {json.dumps(node.status())}")

    # Two threads: the trigger service has its own callback group (see the node).
    return run_node(NODE_NAME, make_node, args=argv, threads=2, finish=finish)


if __name__ == "__main__":
    sys.exit(main())
