"""ROS wrapper of the approximate-time policy, with message_filters' interface.

:class:`ApproximateTimeSynchronizer` takes *filters*: anything with
``registerCallback(callback)`` that calls ``callback(msg)`` per message, i.e.
``message_filters.Subscriber`` where message_filters is installed (full ROS 2), or this module's
:class:`Subscriber` (a plain rclpy subscription with sensor-data QoS) where it is not (PyPI). So
code written against message_filters gets the O(N) policy by changing one import, and code here
runs unchanged on both kinds of install::

    subs = [Subscriber(node, PointCloud2, "points"), Subscriber(node, Image, "cam/image")]
    sync = ApproximateTimeSynchronizer(subs, queue_size=10, slop=0.05)
    sync.registerCallback(lambda cloud, image: ...)

Headerless messages are not supported (``allow_headerless`` must stay False): stamps come from
``msg.header.stamp``. Counters (matched, dropped, late, resets) are in ``sync.policy.counters``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from qd_perception.sync.approximate_time import ApproximateTimePolicy, SyncConfig, stamp_to_ns


class Subscriber:
    """message_filters.Subscriber look-alike: an rclpy subscription fanning out to callbacks."""

    def __init__(self, node: Any, msg_type: Any, topic: str, qos_profile: Any = None, **kwargs: Any) -> None:
        from rclpy.qos import qos_profile_sensor_data

        self.topic = topic
        self._callbacks: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self.sub = node.create_subscription(
            msg_type, topic, self.signalMessage, qos_profile or qos_profile_sensor_data, **kwargs
        )

    def registerCallback(self, cb: Callable[..., None], *args: Any) -> int:
        self._callbacks.append((cb, args))
        return len(self._callbacks) - 1

    def signalMessage(self, msg: Any) -> None:
        for cb, args in self._callbacks:
            cb(msg, *args)


class ApproximateTimeSynchronizer:
    """Drop-in for ``message_filters.ApproximateTimeSynchronizer(fs, queue_size, slop)``."""

    def __init__(
        self,
        fs: Sequence[Any],
        queue_size: int,
        slop: float,
        allow_headerless: bool = False,
        reset_after_jump_s: float | None = None,
    ) -> None:
        if allow_headerless:
            raise ValueError("headerless messages are not supported: stamps come from msg.header")
        names = [f"input{i}" for i in range(len(fs))]
        cfg = SyncConfig(
            slop_s=float(slop),
            queue_size=int(queue_size),
            reset_after_jump_s=reset_after_jump_s or max(1.0, 4 * float(slop)),
        )
        self.policy: ApproximateTimePolicy[Any] = ApproximateTimePolicy(names, cfg)
        self._callbacks: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._names = names
        for name, f in zip(names, fs):
            f.registerCallback(self._make_input(name))

    def _make_input(self, name: str) -> Callable[[Any], None]:
        def add(msg: Any) -> None:
            self.add(msg, name)

        return add

    def add(self, msg: Any, name: str) -> None:
        stamp = msg.header.stamp
        out = self.policy.add(name, stamp_to_ns(stamp.sec, stamp.nanosec), msg)
        if out is not None:
            for cb, args in self._callbacks:
                cb(*out.messages, *args)

    def registerCallback(self, cb: Callable[..., None], *args: Any) -> int:
        self._callbacks.append((cb, args))
        return len(self._callbacks) - 1
