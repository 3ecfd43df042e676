"""Record topics (detector outputs, diagnostics) with their wall-clock receive time.

Messages are taken raw (serialized CDR, no deserialisation in the callback, so recording costs
little and never delays the receive timestamp) and kept in memory; on stop they are written to a
rosbag2 (MCAP) whose **log time is the wall receive time** (ns since the epoch), atomically
(``<out>.partial`` renamed to ``<out>``). Any rosbags-capable tool reads the result; the replay
evaluation maps receive times to the bag clock with the player's
:class:`~qd_perception.eval.latency.ReplayClock`.

Subscriptions copy the reliability of the matched publisher (a reliable subscriber would not
match a best-effort publisher; a best-effort one could lose messages from a reliable publisher),
which is why a topic is subscribed only once its publisher is discovered.

Command line (also the ``recorder`` executable)::

    python -m qd_perception.ros.recorder --out DIR --topics /a /b[=pkg/msg/Type] [--ready-file F]
        [--counts-file C]

It writes ``F`` once every topic has a matched publisher, keeps ``C`` (JSON, topic -> messages
received so far, rewritten atomically at most every 0.2 s while messages arrive) so a caller can
wait until what it expects has arrived, and stops cleanly on SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qd_perception.fileio import atomic_write_json
from qd_perception.ros.bag_player import message_class

#: Seconds between two rewrites of ``--counts-file``.
COUNTS_PERIOD_S = 0.2


@dataclass(frozen=True)
class RecordedMessage:
    topic: str
    recv_wall_ns: int
    data: bytes  # serialized CDR


class Recorder:
    """Subscribes ``topics`` (name -> type, or None to discover the type) on ``node``."""

    def __init__(self, node: Any, topics: dict[str, str | None], depth: int = 100) -> None:
        if not topics:
            raise ValueError("nothing to record: no topics given")
        self.node = node
        self.wanted = dict(topics)
        self.types: dict[str, str] = {}
        self.depth = depth
        self.messages: list[RecordedMessage] = []
        self._subs: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return len(self._subs) == len(self.wanted)

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = dict.fromkeys(self.wanted, 0)
            for m in self.messages:
                out[m.topic] += 1
            return out

    def poll(self) -> None:
        """Subscribe every wanted topic whose publisher is now discovered. Call periodically."""
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        for topic, ty in self.wanted.items():
            if topic in self._subs:
                continue
            infos = self.node.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            msgtype = ty or infos[0].topic_type
            reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
            qos = QoSProfile(
                depth=self.depth,
                history=HistoryPolicy.KEEP_LAST,
                reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.VOLATILE,
            )
            self.types[topic] = msgtype
            self._subs[topic] = self.node.create_subscription(
                message_class(msgtype), topic, self._callback(topic), qos, raw=True
            )

    def _callback(self, topic: str):
        def cb(data: bytes) -> None:
            t = time.time_ns()
            with self._lock:
                self.messages.append(RecordedMessage(topic, t, bytes(data)))

        return cb

    def write(self, out: str | Path) -> Path:
        """Write everything recorded to the rosbag2 ``out`` (MCAP), atomically."""
        from rosbags.rosbag2 import StoragePlugin, Writer

        from qd_perception.sim.rosmsgs import typestore

        out = Path(out)
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        ts = typestore()
        with self._lock:
            msgs = sorted(self.messages, key=lambda m: m.recv_wall_ns)
        writer = Writer(tmp, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        try:
            conns = {t: writer.add_connection(t, ty, typestore=ts) for t, ty in self.types.items()}
            for m in msgs:
                writer.write(conns[m.topic], m.recv_wall_ns, m.data)
        finally:
            writer.close()
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return out


def read_recording(path: str | Path) -> list[tuple[str, int, Any]]:
    """(topic, receive wall time ns, deserialized message) of a recording, in receive order."""
    from qd_perception.ros.bag_player import open_reader
    from qd_perception.sim.rosmsgs import deserialize

    reader = open_reader(path)
    try:
        return [(c.topic, t, deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    finally:
        reader.close()


def _parse_topics(items: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for it in items:
        topic, _, ty = it.partition("=")
        if not topic.startswith("/"):
            raise SystemExit(f"recorder: topic names must be absolute, got {topic!r}")
        out[topic] = ty or None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="recorder", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="rosbag2 directory to write")
    p.add_argument("--topics", nargs="+", required=True, metavar="TOPIC[=TYPE]")
    p.add_argument("--ready-file", type=Path, help="touched once every topic is subscribed")
    p.add_argument("--counts-file", type=Path, help="JSON topic -> messages received, kept current")
    args = p.parse_args(argv)

    import rclpy

    from qd_perception.ros.lifecycle import run_node

    parts: dict[str, Any] = {}

    def build() -> Any:
        node = rclpy.create_node("recorder")
        parts["rec"] = Recorder(node, _parse_topics(args.topics))
        parts["counted"], parts["counted_at"] = -1, 0.0
        return node

    def tick(node: Any) -> None:
        rec = parts["rec"]
        now = time.monotonic()
        if (
            args.counts_file
            and len(rec.messages) != parts["counted"]
            and now - parts["counted_at"] >= COUNTS_PERIOD_S
        ):
            parts["counted"], parts["counted_at"] = len(rec.messages), now
            atomic_write_json(args.counts_file, rec.counts())
        was_ready = rec.ready
        rec.poll()
        if rec.ready and not was_ready:
            node.get_logger().info(f"recording {sorted(rec.types)}")
            if args.ready_file:
                args.ready_file.write_text("ready\n")

    def finish(node: Any) -> None:
        rec = parts["rec"]
        rec.write(args.out)
        node.get_logger().info(f"wrote {len(rec.messages)} messages {rec.counts()} to {args.out}")

    return run_node("recorder", build, tick=tick, finish=finish, period_s=0.05)


if __name__ == "__main__":
    sys.exit(main())
