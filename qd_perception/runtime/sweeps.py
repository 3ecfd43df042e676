"""Multi-sweep lidar accumulation: the last K sweeps merged into the current ego frame.

CenterPoint-style detectors read several sweeps at once, each point tagged with its age
(``time_lag``, seconds). Older sweeps are moved into the current ego frame with the ego poses
(``ego2global``, from odometry): ``ego_now <- global <- ego_then``. A sweep without a pose cannot
be motion-compensated, so it is only ever used as the current sweep (merging it uncompensated
would smear every static object by the distance driven).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from qd_perception.geometry.transforms import invert


@dataclass(frozen=True)
class SweepConfig:
    """max_sweeps: sweeps merged including the current one (nuScenes CenterPoint: 10).
    max_age_s: older sweeps are discarded."""

    max_sweeps: int = 1
    max_age_s: float = 0.6

    def __post_init__(self) -> None:
        if self.max_sweeps < 1:
            raise ValueError(f"max_sweeps must be >= 1, got {self.max_sweeps}")
        if self.max_age_s < 0:
            raise ValueError("max_age_s must be >= 0")


@dataclass(frozen=True)
class _Sweep:
    timestamp_us: int
    points: np.ndarray  # (P, 4) ego frame of its own time [x, y, z, intensity]
    ego2global: np.ndarray | None


class SweepAccumulator:
    """Keeps the last ``max_sweeps`` sweeps; :meth:`add` returns the merged (P, 5) cloud.

    Counters: ``no_pose`` (sweeps that arrived without an ego pose), ``out_of_order`` (a sweep not
    newer than the previous one: history is reset).
    """

    def __init__(self, config: SweepConfig | None = None) -> None:
        self.config = config or SweepConfig()
        self._history: deque[_Sweep] = deque(maxlen=max(self.config.max_sweeps - 1, 0) or None)
        self.no_pose = 0
        self.out_of_order = 0

    def reset(self) -> None:
        self._history.clear()

    def remember(self, points: np.ndarray, timestamp_us: int, ego2global: np.ndarray | None) -> None:
        """Record a sweep as history only (a frame that was not processed, e.g. skipped while the
        detector was busy): later frames still merge it."""
        if self.config.max_sweeps <= 1:
            return
        points = np.asarray(points)
        if self._history and int(timestamp_us) <= self._history[-1].timestamp_us:
            return
        self._history.append(
            _Sweep(int(timestamp_us), np.ascontiguousarray(points[:, :4], np.float32), ego2global)
        )

    def add(self, points: np.ndarray, timestamp_us: int, ego2global: np.ndarray | None) -> np.ndarray:
        """Add the current sweep and return ``(P, 5) float32 [x, y, z, intensity, time_lag]``.

        points: (P, >=4) ego frame at ``timestamp_us``: x, y, z (m), intensity (0..255).
        ego2global: (4, 4) ego pose at ``timestamp_us``, or None without odometry.
        """
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] < 4:
            raise ValueError(f"points must be (P, >=4) [x, y, z, intensity], got {points.shape}")
        cur = _Sweep(int(timestamp_us), np.ascontiguousarray(points[:, :4], np.float32), ego2global)
        if self._history and cur.timestamp_us <= self._history[-1].timestamp_us:
            self.out_of_order += 1
            self._history.clear()
        if ego2global is None:
            self.no_pose += 1
        parts = [np.concatenate([cur.points, np.zeros((len(cur.points), 1), np.float32)], axis=1)]
        if ego2global is not None and self.config.max_sweeps > 1:
            global2ego_now = invert(ego2global)
            for old in reversed(self._history):
                lag = (cur.timestamp_us - old.timestamp_us) * 1e-6
                if lag > self.config.max_age_s or old.ego2global is None:
                    continue
                T = (global2ego_now @ old.ego2global).astype(np.float32)
                xyz = old.points[:, :3] @ T[:3, :3].T + T[:3, 3]
                lag_col = np.full((len(xyz), 1), lag, np.float32)
                parts.append(np.concatenate([xyz, old.points[:, 3:4], lag_col], axis=1))
        if self.config.max_sweeps > 1:
            self._history.append(cur)
        return np.concatenate(parts, axis=0)
