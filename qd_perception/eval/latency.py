"""Latency statistics and the replay clock.

During a replay the bag player publishes each message at the wall time its log time dictates
(``rate`` times faster or slower). The **replay clock** maps wall time back to the bag's time
base, in which every message header stamp (the sensor time) is expressed:

    replay_us(wall) = bag_start_us + (wall - wall_start) * rate

so the latency of an output is ``replay_us(receive wall time) - header.stamp``: the time from the
sensor capture (as replayed) to the output being available downstream, including transport,
synchronisation waits, inference and publication. At ``rate`` != 1 it is expressed in bag time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReplayClock:
    """Wall <-> bag time mapping of one playback (one loop)."""

    wall_start_s: float  # time.time() when the first message was due
    bag_start_us: int  # log time of the first message (ns // 1000)
    rate: float = 1.0

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")

    def to_bag_us(self, wall_s: float | np.ndarray) -> np.ndarray:
        return self.bag_start_us + (np.asarray(wall_s, np.float64) - self.wall_start_s) * self.rate * 1e6

    def to_wall_s(self, bag_us: float | np.ndarray) -> np.ndarray:
        return self.wall_start_s + (np.asarray(bag_us, np.float64) - self.bag_start_us) / (self.rate * 1e6)


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of a latency sample, milliseconds."""

    p50: float
    p95: float
    p99: float
    mean: float
    max: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
            "mean": self.mean,
            "max": self.max,
            "n": self.n,
        }


def latency_stats(latencies_ms: Sequence[float] | np.ndarray) -> LatencyStats:
    """Percentiles (linear interpolation) of finite latencies; NaN everywhere when there are none."""
    x = np.asarray(latencies_ms, np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        nan = float("nan")
        return LatencyStats(nan, nan, nan, nan, nan, 0)
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return LatencyStats(float(p50), float(p95), float(p99), float(x.mean()), float(x.max()), len(x))
