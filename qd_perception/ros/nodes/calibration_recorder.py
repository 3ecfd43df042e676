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

Parameters: :class:`~qd_perception.ros.calibration.CalibrationRecorderConfig`
(``config/calibration_recorder.param.yaml``).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from std_msgs.msg import String
from std_srvs.srv import Trigger

from qd_perception.data.calib_store import CalibrationStore, check_and_write_layout
from qd_perception.data.rosbag import detections_from_msg
from qd_perception.data.types import Frame
from qd_perception.geometry.rig import load_rig
from qd_perception.msg import Detection3DArray
from qd_perception.ros.calibration import (
    NODE_NAME,
    ODOM,
    CalibrationRecorderConfig,
    PtqRunner,
    check_ptq_model,
    merged_sweeps,
    ptq_argv,
    set_layout,
)
from qd_perception.ros.convert import stamp_to_ns
from qd_perception.ros.frontend import SensorFrontEnd
from qd_perception.ros.inputs import LIDAR, camera_inputs, subscribe_sensor_inputs
from qd_perception.ros.params import declare_config
from qd_perception.runtime.sweeps import SweepAccumulator
from qd_perception.sync.approximate_time import ApproximateTimePolicy
from qd_perception.topics import DETECTIONS_INPUT, RUN_PTQ_SERVICE, STATUS_OUTPUT


class CalibrationRecorder(Node):
    """The recorder node over the shared front-end (:class:`SensorFrontEnd`) and a
    :class:`CalibrationStore` (behaviour: the module docstring)."""

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
                    DETECTIONS_INPUT,
                    self._on_detections,
                    qos_profile_sensor_data,
                )
            )
        self.pub_status = self.create_publisher(String, STATUS_OUTPUT, QoSProfile(depth=5))
        # Own callback group: the trigger answers while a large cloud is being converted.
        self.srv = self.create_service(
            Trigger, RUN_PTQ_SERVICE, self._on_trigger, callback_group=MutuallyExclusiveCallbackGroup()
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
            self.frontend.drop("detections", "detections_malformed", f"{type(e).__name__}: {str(e)[:200]}")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point; SIGINT / SIGTERM stop cleanly (pending frames written, PTQ child stopped).
    Signals, spin loop and teardown order: :func:`qd_perception.ros.lifecycle.run_node`."""
    from qd_perception.ros.lifecycle import run_node

    def finish(node: Any) -> None:
        node.stop()
        node.get_logger().info(f"shutting down: {json.dumps(node.status())}")

    # Two threads: the trigger service has its own callback group (see the node).
    return run_node(NODE_NAME, CalibrationRecorder, args=argv, threads=2, finish=finish)


if __name__ == "__main__":
    sys.exit(main())
