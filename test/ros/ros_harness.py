"""Helpers for tests with real node processes on loopback DDS (imported by test/ros/*).

* :class:`NodeProcess` starts a node as ``python -m <module> --ros-args ...`` (the same program
  as the installed executable), captures its output to a file and stops it by PID.
* :class:`Driver` is the test's own rclpy node, in its own ``Context``: publishers for the sensor
  topics and recorders for the node's outputs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qd_perception.ros.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]


class NodeProcess:
    """A node in its own process; output in ``log``. Stop with :meth:`stop` (SIGINT, then kill)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._fh = open(log, "wb")
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    @classmethod
    def module(cls, module: str, ros_args: list[str], log: Path, args: list[str] = ()) -> NodeProcess:
        return cls([sys.executable, "-m", module, *args, "--ros-args", *ros_args], log)

    def output(self) -> str:
        if not self._fh.closed:
            self._fh.flush()
        return self.log.read_text(errors="replace")

    def wait_output(self, text: str, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        rc = stop_process(self.proc, timeout, sig)
        self._fh.close()
        return rc


class Driver:
    """The test's rclpy node (own context): publish inputs, record outputs, spin until."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node(f"test_driver_{os.getpid()}", context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._pubs: dict[str, Any] = {}
        self._subs: dict[str, Any] = {}
        self.received: dict[str, list[Any]] = {}

    def publisher(self, msg_type: Any, topic: str) -> Any:
        from rclpy.qos import qos_profile_sensor_data

        if topic not in self._pubs:
            self._pubs[topic] = self.node.create_publisher(msg_type, topic, qos_profile_sensor_data)
        return self._pubs[topic]

    def publish(self, topic: str, msg: Any) -> None:
        self.publisher(type(msg), topic).publish(msg)
        self.spin(0.0)

    def record(self, msg_type: Any, topic: str) -> list[Any]:
        from rclpy.qos import QoSProfile

        buf: list[Any] = self.received.setdefault(topic, [])
        self._subs[topic] = self.node.create_subscription(msg_type, topic, buf.append, QoSProfile(depth=50))
        return buf

    def wait_for_publishers(self, topic: str, n: int = 1, timeout: float = 15.0) -> bool:
        """Until a recorded topic is matched with ``n`` publishers: outputs published before the
        match are lost (volatile durability), which under load can take seconds."""
        sub = self._subs[topic]
        return self.spin_until(lambda: sub.get_publisher_count() >= n, timeout)

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.executor.spin_once(timeout_sec=max(0.0, min(0.05, end - time.monotonic())))
            if time.monotonic() >= end:
                return

    def spin_until(self, cond: Callable[[], bool], timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return cond()

    def wait_for_subscribers(self, topic: str, n: int = 1, timeout: float = 10.0) -> bool:
        pub = self._pubs[topic]
        return self.spin_until(lambda: pub.get_subscription_count() >= n, timeout)

    def interface(self, node: str) -> dict[str, set[tuple[str, str]]]:
        """What ``node`` (root namespace) subscribes, publishes and serves, from the ROS graph:
        ``{"input" | "output" | "service": {(absolute name, type)}}``."""
        n = self.node

        def flat(pairs: list[tuple[str, list[str]]]) -> set[tuple[str, str]]:
            return {(name, t) for name, types in pairs for t in types}

        return {
            "input": flat(n.get_subscriber_names_and_types_by_node(node, "/")),
            "output": flat(n.get_publisher_names_and_types_by_node(node, "/")),
            "service": flat(n.get_service_names_and_types_by_node(node, "/")),
        }

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.ctx.try_shutdown()


def diag_values(msg: Any) -> dict[str, str]:
    """``DiagnosticArray`` of a detector node -> {key: value}."""
    return {kv.key: kv.value for kv in msg.status[0].values}


def expected_interface(
    ports: tuple[Any, ...], node: str, cameras: tuple[str, ...], remaps: dict[str, str]
) -> dict[str, set[tuple[str, str]]]:
    """What a node started with ``remaps`` (private name -> absolute topic) should show in the ROS
    graph according to its ports (``qd_perception.topics.DETECTOR_PORTS``, ...): ports of each
    camera in ``cameras``; ports for cameras are left out when ``cameras`` is empty."""
    from qd_perception.topics import CAMERA, node_topic

    out: dict[str, set[tuple[str, str]]] = {"input": set(), "output": set(), "service": set()}
    for p in ports:
        names = [p.name.replace(CAMERA, c.lower()) for c in cameras] if CAMERA in p.name else [p.name]
        for name in names:
            out[p.role].add((remaps.get(name) or node_topic(node, name), p.type))
    return out


def check_interface(driver: Driver, node: str, expected: dict[str, set[tuple[str, str]]]) -> None:
    """The node subscribes exactly its input ports, publishes exactly its output ports (besides
    every rclpy node's ``/rosout`` and ``/parameter_events``) and serves its service ports (besides
    the parameter services); waits for discovery (the graph fills in as the node is discovered)."""

    def ok() -> bool:
        got = driver.interface(node)
        outputs = {(name, t) for name, t in got["output"] if name not in ("/rosout", "/parameter_events")}
        return (
            got["input"] == expected["input"]
            and outputs == expected["output"]
            and expected["service"] <= got["service"]
        )

    assert driver.spin_until(ok, 15), (driver.interface(node), expected)
