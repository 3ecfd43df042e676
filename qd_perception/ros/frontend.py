"""The sensor front-end both input nodes share: message -> validated numpy, or a counted drop.

``lidar_detector``/``bev_detector`` and ``calibration_recorder`` convert their inputs here, so a
message the detector refuses is refused by the recorder too (a calibration set fed what the
detector never sees would calibrate the wrong ranges). Pure (no rclpy): the node passes its
logger's throttled warning and its clock.

Every check ends in one of two outcomes: the converted payload, or ``None`` with the drop counted
in :attr:`SensorFrontEnd.bad_input` under ``<kind>_<reason>`` (kind: ``pointcloud``, ``image``,
``camera_info``, ``odometry``; reason: the :class:`ConvertError` subclass's ``reason``, or
``malformed`` for any other exception a hostile message provokes) and one throttled warning per
reason. No exception leaves a callback: a node never dies of a message. The catalogue of reasons
is in docs/ros.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from qd_perception.ros.convert import (
    ConvertError,
    camera_info_to_K,
    image_to_rgb8,
    odometry_to_pose,
    pointcloud2_to_xyzi,
    stamp_to_ns,
)

#: Echoed message fields (frame ids, encodings) are cut to this many characters in logs.
ECHO_CHARS = 40


@dataclass(frozen=True)
class InputChecks:
    """Limits of the input checks (parameters ``input_checks.*``).

    max_points: clouds with more points (height * width) are dropped before they are read
        (``pointcloud_too_large``); 0 disables the cap.
    max_range_m: points with a coordinate beyond this (sensor frame) are removed and counted
        (``out_of_range_points``), like non-finite points; a cloud left empty is dropped.
    max_future_s: a stamp more than this ahead of the node clock (when the stamps follow it), or
        of the newest stamp of the inputs (the other streams' last, its own last + median period)
        by up to the synchroniser's ``reset_after_jump_s``, is dropped (``<kind>_stamp_future``):
        it cannot move the synchroniser's horizon. After ``future_resync`` such stamps in a row
        the stream is taken to have jumped and is followed (a stream persistently ahead of the
        node clock, a skewed sensor clock, is from then on judged against the other inputs only).
    """

    max_points: int = 1_000_000
    max_range_m: float = 1000.0
    max_future_s: float = 0.5
    future_resync: int = 3

    def __post_init__(self) -> None:
        if self.max_points < 0 or not self.max_range_m > 0 or not self.max_future_s > 0:
            raise ValueError("input_checks: max_points >= 0, max_range_m > 0 and max_future_s > 0")
        if self.future_resync < 1:
            raise ValueError("input_checks.future_resync must be >= 1")


def echo(value: Any) -> str:
    """A message field for a log line: repr, at most :data:`ECHO_CHARS` characters."""
    text = repr(str(value))
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 4] + "...'"


class _StampGuard:
    """Guard of all streams of one node against stamps from the future (see :class:`InputChecks`).

    Once a stream has three stamps, a stamp is expected no later than ``tol`` after the latest
    of: its own last stamp plus its median period, and the last stamp of every other stream. So
    one camera coming back after a silence while the lidar kept streaming is accepted at once, a
    1 Hz stream is not "ahead" by its period, and a lone cloud 0.9 s ahead of everything else is
    refused.
    """

    def __init__(self, checks: InputChecks, jump_s: float) -> None:
        self.tol_ns = int(checks.max_future_s * 1e9)
        self.jump_ns = int(jump_s * 1e9)
        self.resync = checks.future_resync
        self.recent: dict[str, list[int]] = {}  # stream -> last accepted stamps, oldest first
        self.ahead: Counter[str] = Counter()  # stream -> consecutive refused stamps
        self.skewed: set[str] = set()  # streams persistently ahead of the node clock

    def refuse(self, stream: str, stamp_ns: int, now_ns: int, clock_window_ns: int) -> str | None:
        """Why ``stamp_ns`` is refused, or None (then it is remembered as accepted)."""
        mine = self.recent.setdefault(stream, [])
        why = None
        # the node clock is only a reference for stamps related to it (a bag replayed with its
        # original stamps against the wall clock is not), and not for a stream that has been
        # ahead of it persistently (a sensor clock skewed against this machine's)
        use_clock = stream not in self.skewed and now_ns > 0 and abs(stamp_ns - now_ns) <= clock_window_ns
        if use_clock and stamp_ns > now_ns + self.tol_ns:
            why = f"{(stamp_ns - now_ns) / 1e9:.3f} s ahead of the node clock"
        # judged once the stream has a period (3 stamps): a 1 Hz camera is not "ahead" by 1 s
        elif len(mine) >= 3:
            refs = [r[-1] for k, r in self.recent.items() if r and k != stream]
            ref = max([*refs, mine[-1] + max(int(np.median(np.diff(mine))), 0)])
            # Further ahead than the synchroniser's jump threshold is a clock jump (data starting,
            # simulator restart): accepted; if it was a lone outlier, the next real stamp is a
            # jump back and the synchroniser resets (one reset, not a blind stream).
            if ref + self.tol_ns < stamp_ns <= ref + self.jump_ns:
                why = f"{(stamp_ns - ref) / 1e9:.3f} s after the newest stamp of the inputs"
        if why is not None:
            self.ahead[stream] += 1
            if self.ahead[stream] < self.resync:
                return why
            # several in a row: the stream really jumped (or its clock is skewed): follow it
            mine.clear()
            if "node clock" in why:
                self.skewed.add(stream)
        self.ahead[stream] = 0
        if mine and stamp_ns < mine[-1]:
            mine.clear()  # clock moved back (bag restarted): the synchroniser resets too
        mine.append(stamp_ns)
        del mine[:-8]
        return None


class SensorFrontEnd:
    """Conversion and validation of the sensor inputs of one node.

    ``warn(key, text)``: a warning throttled per key; ``now_ns()``: the node clock (0 while
    unknown, e.g. sim time before the first /clock); ``clock_window_s``: stamps further than this
    from the node clock are not compared with it; ``jump_s``: the synchroniser's
    ``reset_after_jump_s`` (stamps further ahead of the other inputs are a clock jump, accepted).
    """

    def __init__(
        self,
        checks: InputChecks,
        lidar2ego: np.ndarray,
        lidar_frame: str,
        frame_id: str,
        warn: Callable[[str, str], None],
        now_ns: Callable[[], int],
        clock_window_s: float = 60.0,
        image_size: tuple[int, int] = (0, 0),
        jump_s: float = 1.0,
    ) -> None:
        self.checks = checks
        self.lidar2ego = np.asarray(lidar2ego, np.float32)
        self.lidar_frame = lidar_frame
        self.frame_id = frame_id
        self.image_size = tuple(image_size)
        self._warn = warn
        self._now_ns = now_ns
        self._clock_window_ns = int(clock_window_s * 1e9)
        self._guard = _StampGuard(checks, jump_s)
        self.bad_input: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()  # nonfinite_points, out_of_range_points

    # -- bookkeeping ---------------------------------------------------------------------
    def drop(self, stream: str, reason: str, detail: str, stamp_ns: int | None = None) -> None:
        self.bad_input[reason] += 1
        when = f" at {stamp_ns / 1e9:.3f} s" if stamp_ns is not None else ""
        self._warn(
            reason, f"dropped {stream} message{when}: {detail} [bad_input.{reason}={self.bad_input[reason]}]"
        )

    def _failed(self, stream: str, kind: str, e: Exception, stamp_ns: int | None) -> None:
        if isinstance(e, ConvertError):
            self.drop(stream, f"{kind}_{e.reason}", str(e)[:300], stamp_ns)
        else:  # anything a hostile message provokes inside numpy / the message classes
            self.drop(stream, f"{kind}_malformed", f"{type(e).__name__}: {str(e)[:200]}", stamp_ns)

    def _future(self, stream: str, kind: str, stamp_ns: int) -> bool:
        why = self._guard.refuse(stream, stamp_ns, self._now_ns(), self._clock_window_ns)
        if why is not None:
            self.drop(stream, f"{kind}_stamp_future", f"stamp {why}", stamp_ns)
        return why is not None

    # -- inputs ----------------------------------------------------------------------------
    def cloud(self, stream: str, msg: Any) -> tuple[int, np.ndarray] | None:
        """``PointCloud2`` -> (stamp_ns, (P, 4) float32 x y z intensity in the ego frame)."""
        stamp = None
        try:
            stamp = stamp_to_ns(msg.header.stamp)
            frame = str(msg.header.frame_id)
            if frame not in (self.lidar_frame, self.frame_id):
                self.drop(
                    stream,
                    "pointcloud_frame",
                    f"frame_id {echo(frame)} is neither {self.lidar_frame!r} nor {self.frame_id!r}",
                    stamp,
                )
                return None
            xyzi, n_bad = pointcloud2_to_xyzi(msg, max_points=self.checks.max_points)
        except Exception as e:
            self._failed(stream, "pointcloud", e, stamp)
            return None
        if n_bad:
            self.stats["nonfinite_points"] += n_bad
            self._warn(
                "nonfinite", f"removed {n_bad} non-finite points from the cloud at {stamp / 1e9:.3f} s"
            )
        far = (np.abs(xyzi[:, :3]) > self.checks.max_range_m).any(1)
        if far.any():
            n_far = int(far.sum())
            self.stats["out_of_range_points"] += n_far
            self._warn(
                "out_of_range",
                f"removed {n_far} points beyond {self.checks.max_range_m:g} m from the cloud at "
                f"{stamp / 1e9:.3f} s",
            )
            xyzi = xyzi[~far]
        if len(xyzi) == 0:
            self.drop(stream, "pointcloud_empty", "no (finite, in range) points", stamp)
            return None
        if self._future(stream, "pointcloud", stamp):
            return None
        if frame == self.lidar_frame:
            T = self.lidar2ego
            xyzi[:, :3] = xyzi[:, :3] @ T[:3, :3].T + T[:3, 3]
        return stamp, xyzi

    def image(self, stream: str, msg: Any) -> tuple[int, np.ndarray] | None:
        """``Image`` -> (stamp_ns, (H, W, 3) uint8 RGB), of ``image_size`` when that is set."""
        stamp = None
        try:
            stamp = stamp_to_ns(msg.header.stamp)
            rgb = image_to_rgb8(msg)
        except Exception as e:
            self._failed(stream, "image", e, stamp)
            return None
        H, W = self.image_size
        if (H, W) != (0, 0) and rgb.shape[:2] != (H, W):
            self.drop(
                stream, "image_size", f"image is {rgb.shape[1]}x{rgb.shape[0]}, expected {W}x{H}", stamp
            )
            return None
        if self._future(stream, "image", stamp):
            return None
        return stamp, rgb

    def camera_info(self, stream: str, msg: Any) -> tuple[np.ndarray, tuple[int, int]] | None:
        """``CameraInfo`` -> ((3, 3) K, (H, W)), validated (see :func:`camera_info_to_K`)."""
        try:
            return camera_info_to_K(msg)
        except Exception as e:
            self._failed(f"{stream}/camera_info", "camera_info", e, None)
            return None

    def odometry(self, stream: str, msg: Any) -> tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
        """``Odometry`` -> (stamp_ns, (pose, linear, angular)), validated (:func:`odometry_to_pose`)."""
        stamp = None
        try:
            stamp = stamp_to_ns(msg.header.stamp)
            pose = odometry_to_pose(msg)
        except Exception as e:
            self._failed(stream, "odometry", e, stamp)
            return None
        if self._future(stream, "odometry", stamp):
            return None
        return stamp, pose
