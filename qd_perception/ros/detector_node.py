"""The generic detector node: synchronised sensor inputs -> ``Detector`` -> detections + markers.

Generic over :attr:`Detector.modalities`: the factory entry decides whether lidar, cameras or both
are subscribed (plus ``inputs`` in :class:`DetectorNodeConfig`). ``lidar_detector`` and
``bev_detector`` are this node with different names and default detectors.

Data path (executor thread -> worker thread):

1. Every message is converted and validated **on arrival** by the shared front-end
   (:mod:`qd_perception.ros.frontend`, the same checks as ``calibration_recorder``); a bad one
   (malformed PointCloud2, missing x/y/z, empty or oversized cloud, image of the wrong size or
   encoding, implausible CameraInfo or Odometry, a stamp from the future) is logged (throttled
   per reason), counted under ``bad_input.<reason>`` and never enters the synchroniser; no
   exception of a message leaves its callback. Non-finite and out-of-range points are removed
   and counted, the frame goes on. Lidar points are moved into the ego frame with ``lidar2ego``.
2. The approximate-time policy (:mod:`qd_perception.sync`) forms sets; its counters (matched,
   dropped, late per input; resets on clock jumps) are published in the diagnostics.
3. A set goes to a one-slot mailbox; the worker thread merges sweeps, runs the detector and
   publishes. When the detector is slower than the input, the older unprocessed set is replaced
   and counted as ``dropped_busy`` (latency stays bounded instead of a growing backlog).
   When nobody subscribes to detections or markers the detector is not run
   (``skipped_no_subscribers``) unless ``always_run``.

Outputs are stamped with the input set's reference stamp (the lidar's when lidar is an input)
in ``frame_id`` (``base_link``). Diagnostics (``diagnostic_msgs/DiagnosticArray``, one status
named after the node) carry the counters and latency percentiles as key/values:

* ``processing_ms.{p50,p95,p99,max}``: the node's own time, wall clock from the arrival of the
  newest message of the synchronised set (callback entry, before conversion) to the publish of its
  detections. Always meaningful, also on replayed bags.
* ``pipeline_latency_ms.*``: node clock at publish - input header stamp (sensor -> detections,
  including transport). Only recorded when the stamp lies within ``latency_stamp_window_s`` of the
  node clock: live sensors, or a bag replayed with ``use_sim_time`` and ``/clock``. A bag replayed
  with its original (e.g. 2023) stamps against the system clock would give ~10^11 ms; such frames
  are counted in ``pipeline_latency_ms.unrelated_stamps`` and, while no frame qualified, the
  percentiles are replaced by ``pipeline_latency_ms: n/a (...)``.
* ``ready`` (1 once the warm-up detection ran, before any subscription), ``warmup_ms``,
  ``frames_in``, ``frames_out``, ``sync.<input>.dropped``...
* missing cameras (``missing_cameras.*``, :class:`~qd_perception.ros.node_config.MissingCameras`):
  ``missing_cameras`` (the cameras missing now, comma-separated), ``degraded_frames`` (outputs
  made without some camera), ``degraded`` / ``degraded.cameras`` / ``degraded.since`` (the
  last output, the cameras it lacked, the stamp of the first output of the current degraded
  run). Level ERROR while a missing camera holds every output back (``wait``), WARN while
  outputs are degraded; a change is published at once, not at the next period.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import Counter, deque
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import QoSProfile
from visualization_msgs.msg import MarkerArray

from qd_perception.config import ConfigError
from qd_perception.data.types import CameraInput, Detections, Frame
from qd_perception.geometry.rig import load_rig
from qd_perception.msg import Detection3DArray
from qd_perception.ros.convert import detections_to_cdr
from qd_perception.ros.frontend import SensorFrontEnd
from qd_perception.ros.inputs import LIDAR, camera_inputs, subscribe_sensor_inputs
from qd_perception.ros.markers import detections_to_markers_cdr
from qd_perception.ros.node_config import DetectorNodeConfig
from qd_perception.ros.params import declare_config
from qd_perception.runtime.factory import build_detector
from qd_perception.runtime.sweeps import SweepAccumulator
from qd_perception.sync.approximate_time import ApproximateTimePolicy, SyncedSet
from qd_perception.sync.presence import StreamPresence
from qd_perception.topics import DETECTIONS_OUTPUT, DIAGNOSTICS_OUTPUT, MARKERS_OUTPUT

ODOM = "odom"


def _percentiles(values: deque[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.fromiter(values, float)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(a.max())}


class DetectorNode(Node):
    """The detector node over the shared front-end (:class:`SensorFrontEnd`) and a ``Detector``
    (data path, counters and diagnostics: the module docstring).

    ``node_name``: the node's default name; ``defaults``: its parameters where neither a parameter
    file nor ``-p`` sets them (``node_config.LIDAR_DETECTOR_DEFAULTS``, ...).
    """

    def __init__(self, node_name: str, defaults: DetectorNodeConfig) -> None:
        super().__init__(node_name)
        self.cfg: DetectorNodeConfig = declare_config(self, DetectorNodeConfig, base=defaults)
        cfg = self.cfg
        self.rig = load_rig(cfg.rig)
        self.lidar2ego = self.rig.lidar2ego()
        self.detector = build_detector(cfg.detector)
        self.ready = False
        self.warmup_ms = float("nan")
        modalities = set(self.detector.modalities) | set(cfg.inputs)
        self.use_lidar = LIDAR in modalities
        self.use_cameras = "cameras" in modalities
        if not (self.use_lidar or self.use_cameras):
            raise ConfigError(f"detector {cfg.detector.name!r} needs no input I know of")
        # A multi-sweep model fed another sweep count sees the wrong point density and
        # time-lag range: its accuracy drops silently, so refuse to start instead.
        want = getattr(self.detector, "nsweeps", None)
        if self.use_lidar and want is not None and want != cfg.sweeps.max_sweeps:
            raise ConfigError(
                f"sweeps.max_sweeps is {cfg.sweeps.max_sweeps} but the {cfg.detector.name} model "
                f"{cfg.detector.model_path!r} was trained on {want} merged sweeps; "
                f"set sweeps.max_sweeps: {want}"
            )
        for cam in cfg.cameras if self.use_cameras else ():
            self.rig.camera(cam)  # unknown camera names fail here, clearly
        required = ([LIDAR] if self.use_lidar else []) + (list(cfg.cameras) if self.use_cameras else [])
        optional = [ODOM] if cfg.use_odometry else []
        self.policy: ApproximateTimePolicy[Any] = ApproximateTimePolicy(
            required, cfg.sync, optional=optional, pivot=required[0], on_reset=self._on_reset
        )
        self.sweeps = SweepAccumulator(cfg.sweeps)
        # over every required stream (a lidar moving on shows silent cameras too); only
        # cameras are ever left out of a set
        self.presence = (
            StreamPresence(required, cfg.missing_cameras.timeout_s, cfg.sync.reset_after_jump_s)
            if self.use_cameras
            else None
        )
        self.last_missing: tuple[str, ...] = ()  # cameras the last output lacked
        self._announced_missing: tuple[str, ...] = ()  # missing cameras last logged
        self.degraded_since: int | None = None  # stamp of the first output of a degraded run
        self._diag_lock = threading.Lock()
        self._last_log: dict[str, float] = {}
        self.frontend = SensorFrontEnd(
            cfg.input_checks, self.lidar2ego, cfg.lidar_frame, cfg.frame_id, self._warn,
            lambda: self.get_clock().now().nanoseconds, cfg.latency_stamp_window_s, cfg.image_size,
            cfg.sync.reset_after_jump_s,
        )  # fmt: skip
        self.bad_input: Counter[str] = self.frontend.bad_input
        self.stats: Counter[str] = Counter()
        self.processing_ms: deque[float] = deque(maxlen=cfg.latency_window)
        self.latency_ms: deque[float] = deque(maxlen=cfg.latency_window)
        # (stream, stamp) -> arrival time (monotonic) of messages waiting in the synchroniser
        self._arrival: dict[str, dict[int, float]] = {s: {} for s in required}
        self.last_arrival: dict[str, float] = {}
        self.last_set_time = time.monotonic()
        self.camera_K: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}
        self._lock = threading.Condition()
        self._mailbox: tuple[SyncedSet[Any], float] | None = None
        self._skipped: list[SyncedSet[Any]] = []
        self._reset_pending = False
        self._stop = False
        if cfg.warmup:
            self._warm_up()
        self.ready = True

        self.subs = subscribe_sensor_inputs(
            self, cfg.cameras, self.use_lidar, self.use_cameras, cfg.use_odometry
        )
        out_qos = QoSProfile(depth=5)
        self.pub_det = self.create_publisher(Detection3DArray, DETECTIONS_OUTPUT, out_qos)
        self.pub_markers = self.create_publisher(MarkerArray, MARKERS_OUTPUT, out_qos)
        self.pub_diag = self.create_publisher(DiagnosticArray, DIAGNOSTICS_OUTPUT, out_qos)
        self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics)
        self.create_timer(min(1.0, cfg.stall_warn_s / 2), self._check_stall)
        self._worker = threading.Thread(target=self._work, name=f"{node_name}-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"detector {cfg.detector.name!r} ({cfg.detector.backend}) on inputs {required}"
            f"{' + odometry' if cfg.use_odometry else ''}; sync slop {cfg.sync.slop_s * 1e3:.0f} ms, "
            f"queue {cfg.sync.queue_size}; sweeps {cfg.sweeps.max_sweeps}"
        )

    # -- start-up --------------------------------------------------------------------------
    def _warm_up(self) -> None:
        """Run the detector once on a synthetic frame before any subscription exists.

        The first frame pays lazy initialisation (classical baseline: ~80 ms first detect,
        ~100 ms importing the output messages in the conversions; the networks: more);
        without the warm-up it lands on the first real frames of a replay, which the one-slot
        mailbox then drops. The synthetic frame (a ground plane with a car-sized block; grey
        images) runs the detector and both output conversions (nothing is published); the
        detector's temporal state is reset afterwards. A failure is logged, never fatal.
        """
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        points = None
        if self.use_lidar:
            # ego frame: ground at z = 0, a car-sized block 10 m ahead
            ground = np.c_[rng.uniform(-40, 40, (4000, 2)), np.zeros(4000)]
            block = rng.uniform((9.0, 2.0, 0.2), (13.5, 3.9, 1.5), (600, 3))
            xyz = np.concatenate([ground, block])
            points = np.c_[xyz, np.full(len(xyz), 30.0), np.zeros(len(xyz))].astype(np.float32)
        cameras = []
        if self.use_cameras:
            H, W = self.cfg.image_size if self.cfg.image_size != (0, 0) else self.rig.reference_resolution
            for cam in self.cfg.cameras:
                img = np.full((H, W, 3), 128, np.uint8)
                K = self.rig.intrinsics(cam, (H, W))
                cameras.append(CameraInput(cam, img, K, self.rig.cam2ego(cam), 0))
        frame = Frame(
            token="warmup", scene_token="warmup", timestamp_us=0, ego2global=np.eye(4),
            points=points, cameras=tuple(cameras),
        )  # fmt: skip
        try:
            dets = self.detector.detect(frame)
            # the output conversions import their message modules on first use (~100 ms)
            detections_to_cdr(dets, 0, self.cfg.frame_id)
            detections_to_markers_cdr(dets, 0, self.cfg.frame_id)
        except Exception as e:  # a detector that rejects synthetic input still serves real data
            self.get_logger().warning(f"warm-up detection failed ({e!r}): the first frame pays start-up")
        finally:
            self.detector.reset()
        self.warmup_ms = (time.perf_counter() - t0) * 1e3
        self.get_logger().info(f"warm-up detection took {self.warmup_ms:.0f} ms; ready")

    # -- arrival (executor thread) -----------------------------------------------------
    def _warn(self, key: str, text: str, period_s: float = 1.0) -> None:
        """Warning throttled per ``key`` (rclpy throttles per call site: one kind would hide another)."""
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) < period_s:
            return
        self._last_log[key] = now
        self.get_logger().warning(text)

    def _offer(self, stream: str, stamp_ns: int, payload: Any, t_recv: float) -> None:
        self.last_arrival[stream] = t_recv
        if self.presence is not None and self.presence.observe(stream, stamp_ns):
            self._missing_changed(stamp_ns)
        arrivals = self._arrival[stream]
        arrivals[stamp_ns] = t_recv
        if len(arrivals) > 4 * self.cfg.sync.queue_size + 8:  # dropped by the policy: forget
            for k in list(arrivals)[: len(arrivals) - 2 * self.cfg.sync.queue_size]:
                del arrivals[k]  # the longest waiting (insertion order, also after a clock jump)
        counters = self.policy.counters.streams[stream]
        late = counters.late
        out = self.policy.add(stream, stamp_ns, payload)
        if counters.late != late:
            self._warn(
                f"late.{stream}",
                f"dropped {stream} message at {stamp_ns / 1e9:.3f} s: older than the last "
                f"synchronised set (out of order) [sync.{stream}.late={counters.late}]",
            )
        if out is not None:
            self.last_set_time = time.monotonic()
            # the set is complete once its newest member has arrived
            t_newest = max(
                self._arrival[s].pop(st, t_recv)
                for s, st in zip(self.policy.required, out.stamps_ns)
                if st is not None
            )
            with self._lock:
                if self._mailbox is not None:
                    self.stats["dropped_busy"] += 1
                    # its lidar sweep still belongs to the multi-sweep history
                    self._skipped.append(self._mailbox[0])
                    del self._skipped[: -self.cfg.sweeps.max_sweeps]
                self._mailbox = (out, t_newest)
                self._lock.notify()

    def _on_cloud(self, msg: Any) -> None:
        t_recv = time.monotonic()
        got = self.frontend.cloud(LIDAR, msg)
        if got is not None:
            self._offer(LIDAR, got[0], got[1], t_recv)

    def _on_image(self, cam: str, msg: Any) -> None:
        t_recv = time.monotonic()
        got = self.frontend.image(cam, msg)
        if got is not None:
            self._offer(cam, got[0], got[1], t_recv)

    def _on_info(self, cam: str, msg: Any) -> None:
        got = self.frontend.camera_info(cam, msg)
        if got is not None:
            self.camera_K[cam] = got

    def _on_odom(self, msg: Any) -> None:
        got = self.frontend.odometry(ODOM, msg)
        if got is not None:
            self.policy.add(ODOM, got[0], got[1])

    def _on_reset(self, reason: str) -> None:
        self.get_logger().warning(f"synchroniser reset: {reason}; temporal state cleared")
        with self._lock:
            self._reset_pending = True
            self._mailbox = None
            self._skipped = []
        if self.presence is not None:  # stamps before the jump say nothing about after it
            self.presence.reset()
            self.policy.set_suspended(())
            self._announced_missing = ()

    # -- missing cameras (executor thread) -------------------------------------------------
    def _missing_cameras(self) -> tuple[str, ...]:
        return tuple(s for s in self.presence.missing if s != LIDAR) if self.presence is not None else ()

    def _degrading(self, missing: tuple[str, ...]) -> bool:
        """Whether sets form without the ``missing`` cameras (else every output waits)."""
        mc = self.cfg.missing_cameras
        return mc.mode == "degrade" and 0 < len(missing) <= mc.max_missing

    def _missing_changed(self, stamp_ns: int) -> None:
        """The set of missing cameras changed: suspend them in the synchroniser when degrading,
        say so in the log and publish the diagnostics at once."""
        missing = self._missing_cameras()
        if missing == self._announced_missing:
            return  # a change of the lidar only (the stall warning names a silent lidar)
        self._announced_missing = missing
        mc = self.cfg.missing_cameras
        degrade = self._degrading(missing)
        self.policy.set_suspended(missing if degrade else ())
        n = len(self.cfg.cameras)
        if not missing:
            self.get_logger().info(f"every camera is back at {stamp_ns / 1e9:.3f} s: all {n} in use")
        else:
            if degrade:
                why = (
                    f"running on the other {n - len(missing)} (missing_cameras.mode: degrade), "
                    "every output flagged in the diagnostics"
                )
            elif mc.mode == "wait":
                why = "no output until they are back (missing_cameras.mode: wait)"
            else:
                why = f"no output: more than missing_cameras.max_missing={mc.max_missing}"
            self.get_logger().warning(
                f"camera(s) {list(missing)} missing: no image within {mc.timeout_s:g} s of the "
                f"other inputs at {stamp_ns / 1e9:.3f} s; {why}"
            )
        self._publish_diagnostics()

    def _check_stall(self) -> None:
        now = time.monotonic()
        if not self.last_arrival or now - self.last_set_time < self.cfg.stall_warn_s:
            return
        silent = [
            s for s in self.policy.required if now - self.last_arrival.get(s, -1e9) > self.cfg.stall_warn_s
        ]
        if len(silent) == len(self.policy.required):
            return  # every input stopped (end of a bag, sensors off): nothing is stuck
        self.stats["stall_warnings"] += 1
        self.get_logger().warning(
            f"no synchronised set for {now - self.last_set_time:.1f} s; silent inputs: "
            f"{silent or 'none'}; queued: {self.policy.queued()}",
            throttle_duration_sec=max(self.cfg.stall_warn_s, 1.0),
        )

    # -- processing (worker thread) ----------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while self._mailbox is None and not self._stop:
                    self._lock.wait(0.5)
                if self._stop:
                    return
                item, t_newest = self._mailbox  # type: ignore[misc]
                self._mailbox = None
                skipped, self._skipped = self._skipped, []
                reset, self._reset_pending = self._reset_pending, False
            if reset:
                self.detector.reset()
                self.sweeps.reset()
            if self.use_lidar:
                for old in skipped:
                    odom = old.optional.get(ODOM)
                    lidar = old.messages[self.policy.required.index(LIDAR)]
                    self.sweeps.remember(lidar, old.stamp_ns // 1000, odom[0] if odom else None)
            try:
                self._process(item, t_newest)
            except Exception as e:  # a detector bug must not kill the node
                self.stats["detector_errors"] += 1
                self.get_logger().error(f"frame at {item.stamp_ns / 1e9:.3f} s failed: {e!r}")
                self.get_logger().debug(traceback.format_exc())

    def _process(self, item: SyncedSet[Any], t_newest: float) -> None:
        """Detect and publish one set; ``t_newest``: arrival (monotonic) of its newest message."""
        cfg = self.cfg
        self.stats["frames_in"] += 1
        stamp_ns = item.stamp_ns
        msgs = dict(zip(self.policy.required, item.messages))
        odom = item.optional.get(ODOM)
        if cfg.use_odometry and odom is None:
            self.stats["missing_odometry"] += 1
            self.get_logger().warning(
                f"no odometry within {cfg.sync.optional_max_age_s:.2f} s of the frame at "
                f"{stamp_ns / 1e9:.3f} s: single sweep, velocities relative to the ego",
                throttle_duration_sec=5.0,
            )
        ego2global = odom[0] if odom is not None else None
        points = None
        if self.use_lidar:
            points = self.sweeps.add(msgs[LIDAR], stamp_ns // 1000, ego2global)
        n_subs = self.pub_det.get_subscription_count() + self.pub_markers.get_subscription_count()
        if n_subs == 0 and not cfg.always_run:
            self.stats["skipped_no_subscribers"] += 1
            return
        cameras = ()
        if self.use_cameras:
            cameras = camera_inputs(self.policy.required, item.stamps_ns, msgs, self.camera_K, self.rig)
        frame = Frame(
            token=str(stamp_ns),
            scene_token="live",
            timestamp_us=stamp_ns // 1000,
            ego2global=ego2global if ego2global is not None else np.eye(4),
            points=points,
            cameras=cameras,
            ego_velocity=odom[1] if odom is not None else None,
            missing_cameras=item.missing,
        )
        resets = getattr(self.detector, "nonfinite_resets", 0)
        dets: Detections = self.detector.detect(frame)
        if getattr(self.detector, "nonfinite_resets", 0) != resets:
            self._warn(
                "temporal_state",
                f"non-finite temporal state after the frame at {stamp_ns / 1e9:.3f} s: history "
                f"reset [temporal_state_resets={self.detector.nonfinite_resets}]",
            )
        # serialized CDR, published as is (ros/cdr.py: no message objects to build)
        self.pub_det.publish(detections_to_cdr(dets, stamp_ns, cfg.frame_id))
        if self.pub_markers.get_subscription_count():
            self.pub_markers.publish(
                detections_to_markers_cdr(dets, stamp_ns, cfg.frame_id, cfg.marker_lifetime_s)
            )
        self.stats["frames_out"] += 1
        self._flag_degraded(item.missing, stamp_ns)
        self.processing_ms.append((time.monotonic() - t_newest) * 1e3)
        now_ns = self.get_clock().now().nanoseconds  # sim time under use_sim_time + /clock
        # 0 under use_sim_time before the first /clock: no clock to compare with yet
        if now_ns > 0 and abs(now_ns - stamp_ns) <= cfg.latency_stamp_window_s * 1e9:
            self.latency_ms.append((now_ns - stamp_ns) / 1e6)
        else:
            self.stats["unrelated_stamps"] += 1

    def _flag_degraded(self, missing: tuple[str, ...], stamp_ns: int) -> None:
        """Account an output made without ``missing`` cameras (none: a full one); a change
        between degraded and full is published in the diagnostics at once."""
        changed = missing != self.last_missing
        self.last_missing = missing
        if missing:
            self.stats["degraded_frames"] += 1
            if self.degraded_since is None:
                self.degraded_since = stamp_ns
            self._warn(  # throttled per set of missing cameras: a new failure is logged at once
                f"degraded.{','.join(missing)}",
                f"degraded: detections at {stamp_ns / 1e9:.3f} s without camera(s) {list(missing)} "
                f"[degraded_frames={self.stats['degraded_frames']}]",
                period_s=5.0,
            )
        else:
            self.degraded_since = None
        if changed:
            self._publish_diagnostics()

    # -- diagnostics -------------------------------------------------------------------
    def diagnostics(self) -> dict[str, float | int | str]:
        sync = self.policy.counters
        out: dict[str, float | int | str] = {
            "detector": self.cfg.detector.name,
            "ready": int(self.ready),
            "warmup_ms": round(self.warmup_ms, 1),
            "sync.sets": sync.sets,
            "sync.resets": sync.resets,
            "sync.dropped": sum(c.dropped for c in sync.streams.values()),
            "sync.late": sum(c.late for c in sync.streams.values()),
        }
        for name, c in sync.streams.items():
            for k in ("received", "matched", "dropped", "late", "suspended"):
                out[f"sync.{name}.{k}"] = getattr(c, k)
        for k in ("frames_in", "frames_out", "skipped_no_subscribers", "dropped_busy", "detector_errors",
                  "missing_odometry", "stall_warnings"):  # fmt: skip
            out[k] = self.stats[k]
        out["temporal_state_resets"] = getattr(self.detector, "nonfinite_resets", 0)
        if self.presence is not None:
            out["missing_cameras.mode"] = self.cfg.missing_cameras.mode
            out["missing_cameras"] = ",".join(self._missing_cameras())
            out["degraded_frames"] = self.stats["degraded_frames"]
            out["degraded"] = int(bool(self.last_missing))
            out["degraded.cameras"] = ",".join(self.last_missing)
            since = self.degraded_since
            out["degraded.since"] = f"{since // 10**9}.{since % 10**9:09d}" if since is not None else ""
        for k in ("nonfinite_points", "out_of_range_points"):
            out[k] = self.frontend.stats[k]
        out["bad_input"] = sum(self.bad_input.values())
        for k, v in self.bad_input.items():
            out[f"bad_input.{k}"] = v
        for k, v in _percentiles(self.processing_ms).items():
            out[f"processing_ms.{k}"] = round(v, 3)
        out["pipeline_latency_ms.unrelated_stamps"] = self.stats["unrelated_stamps"]
        if self.latency_ms:
            for k, v in _percentiles(self.latency_ms).items():
                out[f"pipeline_latency_ms.{k}"] = round(v, 3)
        elif self.stats["unrelated_stamps"]:
            out["pipeline_latency_ms"] = (
                f"n/a (input stamps more than {self.cfg.latency_stamp_window_s:g} s from the node "
                "clock: replay with use_sim_time and /clock for bag-time latency)"
            )
        return out

    def _publish_diagnostics(self) -> None:
        """Publish the diagnostics (timer, and at once on a missing-camera change; from the
        executor and the worker thread, hence the lock)."""
        d = self.diagnostics()
        problems = d["bad_input"] or d["detector_errors"] or d["sync.late"] or d["temporal_state_resets"]
        level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        message = (
            f"{d['frames_out']} frames out, {d['sync.dropped']} inputs dropped, {d['bad_input']} bad inputs"
        )
        missing = self._missing_cameras()
        if missing and not self._degrading(missing):
            level = DiagnosticStatus.ERROR
            message = f"no output: waiting for missing camera(s) {', '.join(missing)}; {message}"
        elif self.last_missing or missing:
            level = max(level, DiagnosticStatus.WARN)
            message = f"degraded: detections without {', '.join(self.last_missing or missing)}; {message}"
        st = DiagnosticStatus(
            level=level,
            name=self.get_fully_qualified_name(),
            message=message,
            hardware_id=self.cfg.detector.name,
            values=[KeyValue(key=k, value=str(v)) for k, v in d.items()],
        )
        msg = DiagnosticArray(status=[st])
        with self._diag_lock:
            msg.header.stamp = self.get_clock().now().to_msg()
            self.pub_diag.publish(msg)

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._worker.join(timeout=5.0)


def main_for(node_name: str, defaults: DetectorNodeConfig, argv: list[str] | None = None) -> int:
    """Entry point of a detector node executable: returns the process exit code.

    SIGINT and SIGTERM stop the node cleanly (worker joined, summary logged, exit code 0);
    signals, spin loop and teardown order: :func:`qd_perception.ros.lifecycle.run_node`.
    """
    from qd_perception.ros.lifecycle import run_node

    def finish(node: Any) -> None:
        node.stop()
        d = node.diagnostics()
        node.get_logger().info(
            f"shutting down: {d['frames_out']} frames out of {d['sync.sets']} sets, "
            f"{d['sync.dropped']} inputs dropped, {d['bad_input']} bad inputs"
        )

    return run_node(node_name, lambda: DetectorNode(node_name, defaults), args=argv, finish=finish)
