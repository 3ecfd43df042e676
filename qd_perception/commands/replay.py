"""``qd-perception replay``: play a rosbag2 through the real node processes and score their output.

::

    qd-perception replay --bag BAG [BAG ...] --launch lidar|bev --out DIR [--rate 1.0] [--gt keyframes|all]

1. starts the node processes of the ``--launch`` graph (:mod:`qd_perception.ros.graph`, the same
   description ``ros2 launch`` and ``qd-perception launch`` use) and a recorder process
   subscribed to every detector's ``~/output/detections`` and diagnostics;
2. once the nodes subscribe to the bag's topics and the recorder sees the detectors' outputs,
   plays the bag with its original timing (``--rate``) from this process (raw CDR, see
   :mod:`qd_perception.ros.bag_player`);
3. waits ``--drain`` seconds for the last outputs, stops the recorder and the nodes by PID
   (SIGINT, then SIGKILL after a timeout), and
4. writes ``DIR/metrics.json`` (atomically) and ``DIR/bev.png``.

Several bags (``--bag A B C``, e.g. the scenes of a synthetic val split) are replayed one after
the other, each through a freshly started graph (logs and recordings in ``DIR/bags/<i>_<name>/``),
and scored together: the devkit metrics pool their ground-truth instants as a split's samples.

**Ground truth** is the bag's own ``/ground_truth/detections`` (the simulator writes it at every
lidar sweep, in ``base_link`` with lidar point counts), so no nuScenes directory is needed and a
replay of one scene is scored on exactly that scene. ``--gt keyframes`` (default) scores the
2 Hz instants at 0.5 s multiples from the first ground-truth stamp, which are the synthetic data
set's keyframes, i.e. what ``qd-perception eval`` and the devkit score; ``--gt all`` scores every
ground-truth message. Metrics use the devkit's definitions (:mod:`qd_perception.eval.streaming`).

**Metrics** (per detector; the first detector of the graph also at the top level):
``nds``, ``map``, ``per_class_ap``, ``tp_errors``: offline scores (output of the input stamped at
the ground-truth instant); ``streaming_nds``, ``streaming_map``, ``streaming``: scores of the most
recent output published before each instant (streaming perception); ``latency_ms``
{p50, p95, p99, mean, max}: publish time (receive time at the recorder, mapped to the bag clock)
minus input stamp (``latency_wall_ms``: the same in wall-clock time, i.e. divided by ``--rate``);
``frames_in`` (messages of the detector's trigger input played), ``frames_out`` (outputs recorded
for distinct played input stamps), ``dropped`` = ``frames_in - frames_out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qd_perception.data.rosbag import pose_track, read_bag, stamp_us
from qd_perception.eval.replay import (
    Segment,
    bev_picture,
    clean_json,
    detector_metrics,
    ground_truth_frames,
    lidar_points_ego,
    picture_instants,
    timed_outputs,
)
from qd_perception.fileio import atomic_write_json
from qd_perception.ros.processes import Processes, ros_env
from qd_perception.topics import (
    DETECTIONS_OUTPUT,
    DIAGNOSTICS_OUTPUT,
    GT_TOPIC,
    LIDAR_TOPIC,
    ODOM_TOPIC,
    image_topic,
)

# ------------------------------------------------------------------------------ processes


def _trigger_topic(node_name: str) -> str:
    """The input topic of a detector node each of whose messages should yield one output."""
    return image_topic("CAM_FRONT") if node_name == "bev_detector" else LIDAR_TOPIC


def _wait_for(pred, timeout_s: float, what: str, procs: Processes) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        procs.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def write_overrides(opts: ReplayOptions, specs: list, out_dir: Path) -> dict[str, str]:
    """Apply ``NODE.PARAM=VALUE`` overrides to the nodes' parameter files; returns node -> new file."""
    import yaml

    from qd_perception.ros import graph

    by_node: dict[str, dict[str, Any]] = {}
    for item in opts.overrides:
        key, sep, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot or not param:
            raise ValueError(f"--set expects NODE.PARAM=VALUE, got {item!r}")
        by_node.setdefault(node, {})[param] = yaml.safe_load(value) if value else ""
    names = {s.name: s for s in specs}
    files = {}
    for node, values in by_node.items():
        if node not in names:
            raise ValueError(f"--set {node}.*: no node {node!r} in graph {opts.launch!r} ({sorted(names)})")
        base = graph.params_path(names[node], opts.params.get(node))
        data = yaml.safe_load(base.read_text()) if base is not None and base.exists() else {}
        ros = data.setdefault(node, {}).setdefault("ros__parameters", {})
        ros.update(values)
        path = out_dir / f"{node}.param.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        files[node] = str(path)
    return files


def _wait_for_detectors(
    node: Any, specs: list, procs: Processes, timeout_s: float, skipped: list, say
) -> list:
    """Wait until every detector publishes its output topic. A node that exits during start-up
    (e.g. ``bev`` without a trained model) is left out with the reason from its log; the replay
    goes on with the others."""
    from qd_perception.ros import graph

    pending = {s.name: s for s in specs}
    alive = []
    deadline = time.monotonic() + timeout_s
    while pending:
        for name, s in list(pending.items()):
            p = next(p for n, p, _ in procs.procs if n == name)
            if p.poll() is not None:
                log = (procs.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()
                why = log[-1] if log else f"exit code {p.returncode}"
                skipped.append(f"{name}: exited at start-up ({why}), not replayed")
                say(f"replay: {skipped[-1]}")
                procs.forget(name)
                del pending[name]
            elif node.count_publishers(graph.output_topic(s, DETECTIONS_OUTPUT)) > 0:
                alive.append(s)
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{sorted(pending)} did not start within {timeout_s:.0f} s")
        time.sleep(0.1)
    if not alive:
        raise RuntimeError("no detector node started: " + "; ".join(skipped))
    return [s for s in specs if s in alive]


@dataclass(frozen=True)
class ReplayOptions:
    """bags: one or more rosbag2 directories (e.g. one per scene), replayed one after the other
    through a freshly started graph each and scored together."""

    bags: tuple[Path, ...]
    out: Path
    launch: str = "lidar"
    rate: float = 1.0
    gt: str = "keyframes"
    drain_s: float = 2.0
    startup_timeout_s: float = 120.0
    params: dict[str, str] = field(default_factory=dict)  # node name -> parameter file
    overrides: tuple[str, ...] = ()  # "NODE.PARAM=VALUE" (YAML value) on top of the parameter file
    log_level: str = "info"
    plot: bool = True


@dataclass
class BagRun:
    """What one bag's replay produced (before scoring)."""

    bag: Path
    detectors: list[Any]  # NodeSpecs of the detectors that ran
    segments: dict[str, Segment]  # detector name -> its segment
    diagnostics: dict[str, dict[str, str]]  # detector name -> last diagnostics key/values
    player: dict[str, Any]
    exit_codes: dict[str, int | None]


def replay(opts: ReplayOptions, verbose: bool = True) -> dict[str, Any]:
    """Run the replays (see the module docstring); returns the metrics written to metrics.json."""
    from qd_perception.data.rosbag import bag_topics
    from qd_perception.ros import graph

    say = print if verbose else (lambda *a, **k: None)
    if not opts.bags:
        raise ValueError("no bag to replay")
    if len({Path(b).resolve() for b in opts.bags}) != len(opts.bags):
        raise ValueError("the same bag is given twice")
    specs, skipped = graph.nodes(opts.launch, opts.params)
    for s in skipped:
        say(f"replay: {s}")
    if not any(s.detector for s in specs):
        raise ValueError(f"graph {opts.launch!r}: no detector node can run here")
    for bag in opts.bags:  # check every bag before starting anything
        topics = bag_topics(bag)
        if GT_TOPIC not in topics:
            raise ValueError(f"{bag} has no {GT_TOPIC}: nothing to score against")
        for s in specs:
            if s.detector and _trigger_topic(s.name) not in topics:
                raise ValueError(f"{bag} has no {_trigger_topic(s.name)}, the input of {s.name}")
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    if opts.overrides:
        opts = replace(opts, params={**opts.params, **write_overrides(opts, specs, out / "params")})
    t_start = time.time()
    runs = []
    for i, bag in enumerate(opts.bags):
        work = out if len(opts.bags) == 1 else out / "bags" / f"{i:02d}_{Path(bag).name}"
        say(f"replay: [{i + 1}/{len(opts.bags)}] {bag}")
        runs.append(run_bag(opts, Path(bag), work, specs, skipped, say))
    wall = time.time() - t_start

    detectors = [s for s in specs if all(s in r.detectors for r in runs)]
    if not detectors:
        raise RuntimeError("no detector ran on every bag: " + "; ".join(skipped))
    per_det: dict[str, Any] = {}
    for s in detectors:
        block = detector_metrics(
            s.name, graph.output_topic(s, DETECTIONS_OUTPUT), [r.segments[s.name] for r in runs], opts.rate
        )
        diags = [r.diagnostics[s.name] for r in runs if s.name in r.diagnostics]
        if diags:
            block["node_diagnostics"] = diags[-1] if len(diags) == 1 else diags
        per_det[s.name] = block
    first = per_det[detectors[0].name]
    metrics = {
        **{k: v for k, v in first.items() if k not in ("detector", "topic")},
        "detector": first["detector"],
        "bags": [str(b) for b in opts.bags],
        "launch": opts.launch,
        "rate": opts.rate,
        "gt": opts.gt,
        "player": runs[0].player if len(runs) == 1 else [r.player for r in runs],
        "wall_s": wall,
        "skipped_nodes": sorted(set(skipped)),
        "other_nodes": [s.name for s in specs if not s.detector],
        "detectors": per_det,
    }
    atomic_write_json(out / "metrics.json", clean_json(metrics))
    if opts.plot:
        _picture(out / "bev.png", runs[0], detectors[0].name)
    return metrics


def run_bag(opts: ReplayOptions, bag: Path, work: Path, specs: list, skipped: list, say) -> BagRun:
    """Start the graph, play ``bag`` through it, stop everything; outputs paired with the bag's
    ground truth. Logs and the recording go to ``work``."""
    import rclpy

    from qd_perception.ros import graph
    from qd_perception.ros.bag_player import BagPlayer, PlaybackConfig, bag_topics
    from qd_perception.ros.recorder import read_recording

    topics = bag_topics(bag)
    aux = [s for s in specs if not s.detector]
    work.mkdir(parents=True, exist_ok=True)
    env = ros_env()
    for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "FASTDDS_DEFAULT_PROFILES_FILE"):
        if k in env:
            os.environ.setdefault(k, env[k])  # this process publishes the bag: same DDS set-up
    procs = Processes(work / "logs", env)
    recording = work / "recording"
    ready = work / "logs" / "recorder.ready"
    ready.unlink(missing_ok=True)
    stats = None
    rclpy.init()
    node = rclpy.create_node("replay_bag_player")
    try:
        try:
            share = graph.core_share(specs)
            for s in specs:
                params = graph.params_path(s, opts.params.get(s.name))
                argv = [sys.executable, "-m", s.module, *s.arguments]
                procs.start(s.name, [*argv, *graph.ros_arguments(s, params, opts.log_level, share)])
            say(f"replay: started {[s.name for s in specs]}; waiting for the detectors' outputs")
            detectors = _wait_for_detectors(
                node, [s for s in specs if s.detector], procs, opts.startup_timeout_s, skipped, say
            )
            triggers = {s.name: _trigger_topic(s.name) for s in detectors}
            det_topics = {s.name: graph.output_topic(s, DETECTIONS_OUTPUT) for s in detectors}
            diag_topics = {s.name: graph.output_topic(s, DIAGNOSTICS_OUTPUT) for s in detectors}
            rec_topics = [f"{t}=qd_perception/msg/Detection3DArray" for t in det_topics.values()]
            rec_topics += [f"{t}=diagnostic_msgs/msg/DiagnosticArray" for t in diag_topics.values()]
            procs.start(
                "recorder",
                [sys.executable, "-m", "qd_perception.ros.recorder", "--out", str(recording),
                 "--topics", *rec_topics, "--ready-file", str(ready)],
            )  # fmt: skip
            _wait_for(ready.exists, opts.startup_timeout_s, "the recorder to subscribe", procs)
            need: dict[str, int] = {}
            for t in [*triggers.values(), *(_trigger_topic(s.name) for s in aux)]:
                need[t] = need.get(t, 0) + 1
            # Play only what the graph subscribes to: a lidar graph does not pay for images.
            _wait_for(
                lambda: all(node.count_subscribers(t) >= n for t, n in need.items()),
                opts.startup_timeout_s,
                f"the nodes to subscribe to {sorted(need)}",
                procs,
            )
            time.sleep(1.0)  # the nodes' other subscriptions are discovered together with these
            played_topics = tuple(t for t in topics if node.count_subscribers(t) > 0)
            say(f"replay: the graph subscribes to {len(played_topics)} of the bag's {len(topics)} topics")
            cfg = PlaybackConfig(
                rate=opts.rate,
                topics=played_topics,
                wait_for_subscribers=need,
                wait_timeout_s=opts.startup_timeout_s,
                start_delay_s=1.0,  # the nodes must discover the player's publishers too
            )
            player = BagPlayer(node, bag, cfg)
            say(f"replay: playing {bag} at rate {opts.rate}")
            stats = player.play()
            procs.check_alive()
            time.sleep(opts.drain_s)  # the last frames are still being processed
            rc = procs.stop("recorder", timeout_s=30.0)
            if rc != 0 or not recording.exists():
                raise RuntimeError(f"recorder failed (exit code {rc}); see {work / 'logs' / 'recorder.log'}")
        finally:
            codes = procs.stop_all()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    assert stats is not None
    n_msgs = sum(stats.published.values())
    say(f"replay: played {n_msgs} messages in {stats.wall_s:.1f} s; nodes exited {codes}")

    clock = stats.clocks[0]
    bag_msgs = read_bag(bag, {GT_TOPIC, ODOM_TOPIC})
    # Of the (large) trigger inputs only the stamps are needed.
    stamps = read_bag(bag, set(triggers.values()), keep=lambda _t, m: stamp_us(m.header))
    poses = pose_track(bag_msgs.get(ODOM_TOPIC, []))
    gt = ground_truth_frames(bag_msgs[GT_TOPIC], poses, opts.gt)
    if not gt:
        raise ValueError(f"no ground-truth instants in {bag} (--gt {opts.gt})")
    if len(opts.bags) > 1:  # stamps may repeat across scenes: tokens must not
        gt = [replace(f, token=f"{work.name}/{f.token}") for f in gt]  # work dirs are unique
    rec = read_recording(recording)
    segments, diagnostics = {}, {}
    for s in detectors:
        msgs = [(t, m) for topic, t, m in rec if topic == det_topics[s.name]]
        played = [st for _, st in stamps[triggers[s.name]]]
        segments[s.name] = Segment(gt, timed_outputs(msgs, clock, poses), played)
        diags = [m for topic, _, m in rec if topic == diag_topics[s.name]]
        if diags and diags[-1].status:
            diagnostics[s.name] = {kv.key: kv.value for kv in diags[-1].status[0].values}
    player_summary = stats.summary() | {
        "replay_clock": {"wall_start_s": clock.wall_start_s, "bag_start_us": clock.bag_start_us},
        "clocks": None,
    }
    return BagRun(bag, detectors, segments, diagnostics, player_summary, codes)


def _picture(path: Path, run: BagRun, detector: str) -> None:
    from qd_perception.data.rosbag import bag_topics

    seg = run.segments[detector]
    picks = picture_instants(seg.gt, seg.outputs)
    pts = {}
    if LIDAR_TOPIC in bag_topics(run.bag):
        wanted = {seg.gt[i].timestamp_us for i in picks}
        lidar = read_bag(
            run.bag, {LIDAR_TOPIC}, keep=lambda _t, m: m if stamp_us(m.header) in wanted else None
        )[LIDAR_TOPIC]
        pts = lidar_points_ego([(t, m) for t, m in lidar if m is not None])
    bev_picture(path, [seg.gt[i] for i in picks], seg.outputs, f"{detector}, {run.bag.name}", pts)


# ------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bag",
        type=Path,
        nargs="+",
        required=True,
        help="rosbag2 directory (MCAP or sqlite3); several: pooled",
    )
    from qd_perception.ros.graph import GRAPHS

    p.add_argument(
        "--launch",
        default="lidar",
        choices=sorted(GRAPHS),
        help="node graph (bev: every detector; calibration: lidar detector + calibration recorder)",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (metrics.json, bev.png, logs/)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument(
        "--gt", choices=["keyframes", "all"], default="keyframes", help="ground-truth instants scored"
    )
    p.add_argument("--drain", type=float, default=2.0, help="seconds to wait for outputs after the bag ends")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the nodes")
    p.add_argument(
        "--params",
        nargs="*",
        default=[],
        metavar="NODE=FILE",
        help="parameter file of a node (e.g. lidar_detector=my.yaml)",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="override a node parameter, e.g. bev_detector.detector.model_path=bev.pt",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-plot", action="store_true")


def print_summary(m: dict[str, Any]) -> None:
    for name, d in m["detectors"].items():
        lat = d["latency_wall_ms"]
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        print(
            f"{name}: NDS {fmt(d['nds'])}  mAP {fmt(d['map'])}  |  streaming NDS {fmt(d['streaming_nds'])}  "
            f"mAP {fmt(d['streaming_map'])}  |  latency (wall) p50/p95/p99 "
            f"{fmt(lat['p50'])}/{fmt(lat['p95'])}/{fmt(lat['p99'])} ms  |  frames in {d['frames_in']}, "
            f"out {d['frames_out']}, dropped {d['dropped']}"
        )


def run(args: argparse.Namespace) -> int:
    params = {}
    for item in args.params:
        node, _, f = item.partition("=")
        if not f:
            print(f"qd-perception replay: --params expects NODE=FILE, got {item!r}", file=sys.stderr)
            return 2
        params[node] = f
    opts = ReplayOptions(
        bags=tuple(args.bag),
        out=args.out,
        launch=args.launch,
        rate=args.rate,
        gt=args.gt,
        drain_s=args.drain,
        startup_timeout_s=args.startup_timeout,
        params=params,
        overrides=tuple(args.set),
        log_level=args.log_level,
        plot=not args.no_plot,
    )
    try:
        m = replay(opts)
    except (FileNotFoundError, ValueError, KeyError, TimeoutError, RuntimeError) as e:
        print(f"qd-perception replay: {e}", file=sys.stderr)
        return 1
    print_summary(m)
    print(f"wrote {args.out / 'metrics.json'}" + ("" if args.no_plot else f" and {args.out / 'bev.png'}"))
    return 0
