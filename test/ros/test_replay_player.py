"""Bag player + recorder over real DDS: a sqlite3 bag played at 2x arrives byte-identical, in
order, with the bag's timing scaled by the rate; the recorder is a real process."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from ros_harness import Driver, NodeProcess

from qd_perception.ros.bag_player import BagPlayer, PlaybackConfig, open_reader
from qd_perception.ros.recorder import read_recording
from qd_perception.sim import rosmsgs as rm

N, PERIOD_NS, T0_NS = 10, 50_000_000, 1_700_000_000_000_000_000


def write_sqlite_bag(path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    w = Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3)
    w.open()
    ts = rm.typestore()
    cl = w.add_connection(rm.LIDAR_TOPIC, rm.POINTCLOUD2, typestore=ts)
    cg = w.add_connection(rm.GT_TOPIC, rm.DETECTION3D_ARRAY, typestore=ts)
    rng = np.random.default_rng(0)
    for k in range(N):
        t_ns = T0_NS + k * PERIOD_NS
        pts = rng.normal(size=(2000, 5)).astype(np.float32)
        cloud = rm.pointcloud2(t_ns // 1000, pts, np.zeros(len(pts)))
        w.write(cl, t_ns, rm.serialize(cloud, rm.POINTCLOUD2))
        gt = rm.detection3d_array(t_ns // 1000, rng.normal(size=(3, 9)), np.array([0, 1, 8]))
        w.write(cg, t_ns, rm.serialize(gt, rm.DETECTION3D_ARRAY))
    w.close()


def test_sqlite_bag_played_raw_with_timing(tmp_path):
    bag = tmp_path / "bag"
    write_sqlite_bag(bag)
    assert (bag / "bag.db3").exists()
    rec_dir, ready, counts = tmp_path / "rec", tmp_path / "ready", tmp_path / "counts.json"
    rec = NodeProcess(
        [
            sys.executable, "-m", "qd_perception.ros.recorder", "--out", str(rec_dir),
            "--topics", rm.LIDAR_TOPIC, rm.GT_TOPIC, "--ready-file", str(ready),
            "--counts-file", str(counts),
        ],
        tmp_path / "recorder.log",
    )  # fmt: skip
    d = Driver()
    try:
        cfg = PlaybackConfig(
            rate=2.0, qos="reliable", wait_for_subscribers={rm.LIDAR_TOPIC: 1, rm.GT_TOPIC: 1}
        )
        player = BagPlayer(d.node, bag, cfg)  # publishers exist: the recorder discovers their types
        end = time.monotonic() + 60
        while not ready.exists():
            assert rec.alive() and time.monotonic() < end, rec.output()
            time.sleep(0.05)
        stats = player.play()
        expected = {rm.LIDAR_TOPIC: N, rm.GT_TOPIC: N}
        end = time.monotonic() + 30  # until the recorder has every message (a reliable stream)
        while not (counts.exists() and json.loads(counts.read_text()) == expected):
            assert rec.alive() and time.monotonic() < end, (
                counts.exists() and counts.read_text(),
                rec.output(),
            )
            time.sleep(0.05)
    finally:
        d.close()
        assert rec.stop() == 0, rec.output()

    assert stats.published == {rm.LIDAR_TOPIC: N, rm.GT_TOPIC: N}
    assert len(stats.clocks) == 1 and stats.clocks[0].bag_start_us == T0_NS // 1000
    got = read_recording(rec_dir)
    assert len(got) == 2 * N
    # Byte-identical: the player forwards the bag's CDR untouched (no deserialisation).
    reader = open_reader(bag)
    try:
        raw_bag = {c.topic: [] for c in reader.connections}
        for c, _, raw in reader.messages():
            raw_bag[c.topic].append(bytes(raw))
    finally:
        reader.close()
    from rosbags.rosbag2 import Reader

    with Reader(rec_dir) as r:
        raw_rec = {c.topic: [] for c in r.connections}
        for c, _, raw in r.messages():
            raw_rec[c.topic].append(bytes(raw))
    assert raw_rec.keys() == raw_bag.keys()
    for topic, msgs in raw_bag.items():
        assert len(raw_rec[topic]) == len(msgs)
        for a, b in zip(msgs, raw_rec[topic]):
            # Same payload; the transport may pad the end of a CDR message to 4 bytes.
            assert b[: len(a)] == a and len(b) - len(a) < 4 and not any(b[len(a) :])
    # Timing: 9 periods of 50 ms at 2x = 225 ms between the first and last lidar message.
    recv = np.array([t for topic, t, _ in got if topic == rm.LIDAR_TOPIC]) / 1e9
    assert 0.15 < recv[-1] - recv[0] < 0.6, recv - recv[0]
    stamps = [rm.stamp_us(m.header) for topic, _, m in got if topic == rm.LIDAR_TOPIC]
    assert stamps == [(T0_NS + k * PERIOD_NS) // 1000 for k in range(N)]
    # Received within a few ms of when the replay clock said they were due.
    due = stats.clocks[0].to_wall_s(np.array(stamps, np.float64))
    assert np.all(recv - due > -0.005) and np.median(recv - due) < 0.1
