"""Message synchronisation policies (pure Python, no ROS)."""

from qd_perception.sync.approximate_time import (
    ApproximateTimePolicy,
    StreamCounters,
    SyncConfig,
    SyncCounters,
    SyncedSet,
    stamp_to_ns,
)

__all__ = [
    "ApproximateTimePolicy",
    "StreamCounters",
    "SyncConfig",
    "SyncCounters",
    "SyncedSet",
    "stamp_to_ns",
]
