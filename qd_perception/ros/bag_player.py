"""Play a rosbag2 (MCAP or sqlite3) into ROS 2 with its original timing, publishing raw CDR bytes.

The bag is read with ``rosbags`` (pure Python; ``ros2 bag`` is not on PyPI) and each message's
serialized bytes are handed to ``rclpy`` unchanged (``Publisher.publish(bytes)``): no
deserialisation, so a replay costs what the transport costs and header stamps are exactly those
recorded.

**Timing.** Message ``i`` with log time ``t_i`` is published at wall time
``wall_start + (t_i - t_0) / rate``. The player sleeps until then; when it falls behind it
publishes immediately and records how late it was (``PlaybackStats.lateness_ms``), so a replay
can tell "the node dropped frames" from "the player could not keep up".

**Clock.** The nodes of this package synchronise and stamp their outputs with the *header stamps*
of their inputs, never with the node clock, so plain wall-clock playback is correct and no
``/clock`` is needed. For third-party nodes running with ``use_sim_time`` the player can publish
``rosgraph_msgs/Clock`` (bag time) before each message (``publish_clock``). The mapping from wall
time back to bag time (:class:`qd_perception.eval.latency.ReplayClock`) is returned per loop and
can be written to a JSON file, which is how ``qd-perception replay`` measures latency.

**QoS.** Sensor-data QoS (best effort, keep last) by default, what the detector nodes subscribe
with; ``reliable`` also reaches reliable subscribers (a reliable publisher matches both kinds).

**Loop.** With ``loop`` the bag restarts after its last message; stamps then jump backwards,
which the nodes treat as a clock jump (their synchroniser resets).

Command line (also the ``bag_player`` executable)::

    python -m qd_perception.ros.bag_player BAG [--rate 1.0] [--loop] [--topics T ...]
        [--qos sensor_data|reliable] [--clock] [--wait-subscribers TOPIC:N ...] [--clock-file F]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qd_perception.data.rosbag import bag_topics, open_reader
from qd_perception.eval.latency import ReplayClock
from qd_perception.fileio import atomic_write_json


@dataclass(frozen=True)
class PlaybackConfig:
    """rate: playback speed factor (2.0 = twice as fast). topics: publish only these (all if empty).
    wait_for_subscribers: topic -> minimum number of matched subscribers before starting.
    wait_timeout_s: give up waiting (and raise) after this long. start_delay_s: extra settle time
    after subscribers matched (DDS discovery of the reverse direction)."""

    rate: float = 1.0
    loop: bool = False
    topics: tuple[str, ...] = ()
    qos: Literal["sensor_data", "reliable"] = "sensor_data"
    queue_depth: int = 10
    publish_clock: bool = False
    wait_for_subscribers: dict[str, int] = field(default_factory=dict)
    wait_timeout_s: float = 30.0
    start_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.queue_depth < 1:
            raise ValueError("queue_depth must be >= 1")


@dataclass
class PlaybackStats:
    published: dict[str, int] = field(default_factory=dict)  # topic -> messages published
    first_stamp_ns: dict[str, int] = field(default_factory=dict)  # topic -> first log time
    lateness_ms: list[float] = field(default_factory=list)  # publish wall - scheduled wall, per msg
    clocks: list[ReplayClock] = field(default_factory=list)  # one per loop
    loops: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        late = np.asarray(self.lateness_ms) if self.lateness_ms else np.zeros(1)
        return {
            "published": dict(self.published),
            "loops": self.loops,
            "wall_s": self.wall_s,
            "lateness_ms": {
                "p50": float(np.percentile(late, 50)),
                "p99": float(np.percentile(late, 99)),
                "max": float(late.max()),
            },
            "clocks": [
                {"wall_start_s": c.wall_start_s, "bag_start_us": c.bag_start_us, "rate": c.rate}
                for c in self.clocks
            ],
        }


def message_class(msgtype: str) -> type:
    """``sensor_msgs/msg/PointCloud2`` -> the generated Python class (import error if missing)."""
    parts = msgtype.split("/")
    if len(parts) != 3:
        raise ValueError(f"not a ROS 2 message type name: {msgtype!r}")
    pkg, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"message type {msgtype} is not available in this environment: {e}") from e


def _qos(kind: str, depth: int):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliability = ReliabilityPolicy.BEST_EFFORT if kind == "sensor_data" else ReliabilityPolicy.RELIABLE
    return QoSProfile(
        depth=depth,
        history=HistoryPolicy.KEEP_LAST,
        reliability=reliability,
        durability=DurabilityPolicy.VOLATILE,
    )


class BagPlayer:
    """Publishes a bag through ``node``'s publishers. Call :meth:`play` from one thread."""

    def __init__(self, node: Any, bag: str | Path, cfg: PlaybackConfig | None = None) -> None:
        self.node = node
        self.bag = Path(bag)
        self.cfg = cfg or PlaybackConfig()
        topics = bag_topics(self.bag)
        wanted = set(self.cfg.topics) if self.cfg.topics else set(topics)
        missing = wanted - set(topics)
        if missing:
            raise ValueError(f"{self.bag}: no topic(s) {sorted(missing)}; it has {sorted(topics)}")
        self.topics = {t: topics[t][0] for t in sorted(wanted)}
        qos = _qos(self.cfg.qos, self.cfg.queue_depth)
        self._pubs = {t: node.create_publisher(message_class(ty), t, qos) for t, ty in self.topics.items()}
        self._clock_pub = None
        if self.cfg.publish_clock:
            from rclpy.qos import QoSProfile
            from rosgraph_msgs.msg import Clock

            self._clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def subscription_count(self, topic: str) -> int:
        return self._pubs[topic].get_subscription_count()

    def wait_for_subscribers(self) -> None:
        """Block until every ``wait_for_subscribers`` topic has its subscribers (or time out)."""
        need = self.cfg.wait_for_subscribers
        for t in need:
            if t not in self._pubs:
                raise ValueError(f"wait_for_subscribers: {t} is not played")
        deadline = time.monotonic() + self.cfg.wait_timeout_s
        while not all(self.subscription_count(t) >= n for t, n in need.items()):
            if self._stop.is_set():
                return
            if time.monotonic() > deadline:
                have = {t: self.subscription_count(t) for t in need}
                raise TimeoutError(f"subscribers not matched after {self.cfg.wait_timeout_s} s: have {have}")
            time.sleep(0.05)
        if self.cfg.start_delay_s > 0:
            time.sleep(self.cfg.start_delay_s)

    def play(self, on_clock: Callable[[ReplayClock], None] | None = None) -> PlaybackStats:
        """Play once (or until :meth:`stop` when looping). ``on_clock`` is called at each loop start."""
        stats = PlaybackStats(published={t: 0 for t in self.topics})
        self.wait_for_subscribers()
        t_begin = time.time()
        rate = self.cfg.rate
        while not self._stop.is_set():
            reader = open_reader(self.bag)
            try:
                conns = [c for c in reader.connections if c.topic in self._pubs]
                t0_ns: int | None = None
                wall0 = 0.0
                for conn, t_ns, raw in reader.messages(connections=conns):
                    if self._stop.is_set():
                        break
                    if t0_ns is None:
                        t0_ns, wall0 = t_ns, time.time() + 0.01
                        clock = ReplayClock(wall0, t0_ns // 1000, rate)
                        stats.clocks.append(clock)
                        if on_clock is not None:
                            on_clock(clock)
                    due = wall0 + (t_ns - t0_ns) / (rate * 1e9)
                    # Sleep in slices so stop() is honoured within 50 ms even at slow rates.
                    while (dt := due - time.time()) > 0 and not self._stop.is_set():
                        time.sleep(min(dt, 0.05))
                    if self._clock_pub is not None:
                        self._publish_clock(t_ns)
                    self._pubs[conn.topic].publish(bytes(raw))
                    stats.lateness_ms.append((time.time() - due) * 1000.0)
                    stats.published[conn.topic] += 1
                    stats.first_stamp_ns.setdefault(conn.topic, t_ns)
            finally:
                reader.close()
            stats.loops += 1
            if not self.cfg.loop or t0_ns is None:
                break
        stats.wall_s = time.time() - t_begin
        return stats

    def _publish_clock(self, t_ns: int) -> None:
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock

        msg = Clock()
        msg.clock = Time(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))
        self._clock_pub.publish(msg)


def _parse_waits(items: Sequence[str]) -> dict[str, int]:
    out = {}
    for it in items:
        topic, _, n = it.rpartition(":")
        if not topic or not n.isdigit():
            raise argparse.ArgumentTypeError(f"--wait-subscribers expects TOPIC:N, got {it!r}")
        out[topic] = int(n)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bag_player", description=__doc__.splitlines()[0])
    p.add_argument("bag", type=Path)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--loop", action="store_true")
    p.add_argument("--topics", nargs="*", default=[])
    p.add_argument("--qos", choices=["sensor_data", "reliable"], default="sensor_data")
    p.add_argument("--clock", action="store_true", help="also publish /clock (bag time)")
    p.add_argument("--wait-subscribers", nargs="*", default=[], metavar="TOPIC:N")
    p.add_argument("--wait-timeout", type=float, default=30.0)
    p.add_argument("--start-delay", type=float, default=0.0)
    p.add_argument("--stats-file", type=Path, help="write playback stats + replay clocks (JSON)")
    args = p.parse_args(argv)

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from qd_perception.ros.lifecycle import StopRequest

    cfg = PlaybackConfig(
        rate=args.rate,
        loop=args.loop,
        topics=tuple(args.topics),
        qos=args.qos,
        publish_clock=args.clock,
        wait_for_subscribers=_parse_waits(args.wait_subscribers),
        wait_timeout_s=args.wait_timeout,
        start_delay_s=args.start_delay,
    )
    # SIGINT / SIGTERM end the playback after the current message (exit code 0, stats written);
    # why handlers only set a flag: qd_perception.ros.lifecycle.
    stop = StopRequest.install()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("bag_player")
    try:
        player = BagPlayer(node, args.bag, cfg)
        stop.on_request(player.stop)
        stats = player.play()
    except (FileNotFoundError, ValueError, ImportError, TimeoutError) as e:
        print(f"bag_player: {e}", file=sys.stderr)
        return 2
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    s = stats.summary()
    if args.stats_file:
        atomic_write_json(args.stats_file, s)
    print(
        f"bag_player: {sum(stats.published.values())} messages in {stats.wall_s:.1f} s, "
        f"lateness p99 {s['lateness_ms']['p99']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
