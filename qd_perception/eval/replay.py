"""Scoring a replay: ground-truth instants and timed outputs from the bags, the metrics block of
one detector, and the BEV picture of detections vs ground truth.

Pure (no ROS): works on what :mod:`qd_perception.data.rosbag` reads from the played bag and the
recording of the nodes' outputs; ``qd-perception replay`` (:mod:`qd_perception.commands.replay`)
drives the processes and calls these. The metrics are the devkit's definitions
(:mod:`qd_perception.eval.streaming`); see the command's docstring for the keys of metrics.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qd_perception.classes import CLASS_NAMES
from qd_perception.data.rosbag import PoseTrack, detections_from_msg, stamp_us
from qd_perception.eval.latency import ReplayClock, latency_stats
from qd_perception.eval.streaming import GroundTruthFrame, TimedOutput, evaluate_segments

#: Keyframe period of the synthetic data set (2 Hz): ``--gt keyframes`` scores these instants.
KEYFRAME_PERIOD_US = 500_000


def ground_truth_frames(
    gt_msgs: list[tuple[int, Any]], poses: PoseTrack, mode: str = "keyframes"
) -> list[GroundTruthFrame]:
    """Ground-truth instants of a bag (see the module docstring for ``mode``)."""
    frames = []
    t0 = None
    for _, m in gt_msgs:
        t = stamp_us(m.header)
        t0 = t if t0 is None else t0
        if mode == "keyframes" and (t - t0) % KEYFRAME_PERIOD_US:
            continue
        frames.append(GroundTruthFrame(f"gt_{t}", t, poses.at(t), detections_from_msg(m)))
    return frames


def timed_outputs(rec_msgs: list[tuple[int, Any]], clock: ReplayClock, poses: PoseTrack) -> list[TimedOutput]:
    """Recorded ``(receive wall ns, Detection3DArray)`` -> outputs on the bag clock."""
    out = []
    for wall_ns, m in rec_msgs:
        s = stamp_us(m.header)
        pub = int(clock.to_bag_us(wall_ns / 1e9))
        out.append(TimedOutput(s, pub, poses.at(s), detections_from_msg(m)))
    return out


@dataclass(frozen=True)
class Segment:
    """One bag's replay as seen by one detector: ground truth, outputs, played trigger stamps."""

    gt: list[GroundTruthFrame]
    outputs: list[TimedOutput]
    played_stamps_us: list[int]


def clean_json(x: Any) -> Any:
    """``x`` with numpy scalars as Python numbers and non-finite floats as ``None`` (strict JSON)."""
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def detector_metrics(name: str, topic: str, segments: list[Segment], rate: float = 1.0) -> dict[str, Any]:
    """The metrics.json block of one detector over one or more bags (pooled). ``latency_ms`` is
    on the replay clock (bag time, what streaming AP sees); ``latency_wall_ms`` the same divided
    by ``rate``: wall-clock time, what the machine spent (equal at rate 1)."""
    frames_in = frames_out = unmatched = 0
    for seg in segments:
        played = set(seg.played_stamps_us)
        out_stamps = {o.stamp_us for o in seg.outputs}
        frames_in += len(played)
        frames_out += len(out_stamps & played)
        unmatched += len(out_stamps - played)
    scores = evaluate_segments([(seg.gt, seg.outputs) for seg in segments])
    outputs = [o for seg in segments for o in seg.outputs]
    lat_ms = np.array([(o.publish_us - o.stamp_us) / 1000.0 for o in outputs])
    lat = latency_stats(lat_ms)
    stale = latency_stats(scores.streaming_staleness_ms)
    return clean_json(
        {
            "detector": name,
            "topic": topic,
            "nds": scores.offline.nds,
            "map": scores.offline.map,
            "per_class_ap": scores.offline.per_class_ap,
            "tp_errors": scores.offline.tp_errors,
            "streaming_nds": scores.streaming.nds,
            "streaming_map": scores.streaming.map,
            "streaming": {
                **scores.streaming.to_dict(),
                "staleness_ms": stale.to_dict(),
                "instants_without_output": scores.streaming_missing,
            },
            "latency_ms": lat.to_dict(),
            "latency_wall_ms": latency_stats(lat_ms / rate).to_dict(),
            "frames_in": frames_in,
            "frames_out": frames_out,
            "dropped": frames_in - frames_out,
            "outputs_total": len(outputs),
            "outputs_unmatched": unmatched,
            "gt_instants": scores.offline.num_samples,
            "gt_instants_without_output": scores.offline_missing,
            "num_gt_boxes": scores.offline.num_gt_boxes,
        }
    )


def lidar_points_ego(
    lidar_msgs: list[tuple[int, Any]], rig_name: str = "nuscenes_like"
) -> dict[int, np.ndarray]:
    """stamp (us) -> (P, 3) points in the ego frame, for the pictures."""
    from qd_perception.geometry.rig import load_rig
    from qd_perception.sim.rosmsgs import pointcloud2_to_array

    T = load_rig(rig_name).lidar2ego()
    out = {}
    for _, m in lidar_msgs:
        try:
            a = pointcloud2_to_array(m)
        except ValueError:
            continue  # another point layout: picture without points
        xyz = np.stack([a["x"], a["y"], a["z"]], 1).astype(np.float64)
        out[stamp_us(m.header)] = xyz @ T[:3, :3].T + T[:3, 3]
    return out


def picture_instants(gt: list[GroundTruthFrame], outputs: list[TimedOutput], n: int = 4) -> list[int]:
    """Indices of ``n`` ground-truth instants spread over the replay, preferring instants whose
    input produced an output."""
    stamps = {o.stamp_us for o in outputs}
    cand = [i for i, f in enumerate(gt) if f.timestamp_us in stamps] or list(range(len(gt)))
    pos = np.linspace(0, len(cand) - 1, min(n, len(cand))).round().astype(int)
    return sorted({cand[p] for p in pos})


def bev_picture(
    path: Path,
    gt: list[GroundTruthFrame],
    outputs: list[TimedOutput],
    title: str,
    points: dict[int, np.ndarray] | None = None,
    extent: float = 50.0,
) -> Path:
    """One panel per ground-truth instant: GT solid, the detector's output for the same input
    dashed, in the ego frame (eval.viz.draw_bev), lidar points when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from qd_perception.eval.viz import CLASS_COLORS, draw_bev, save_figure

    by_stamp = {o.stamp_us: o for o in outputs}
    fig, axes = plt.subplots(1, len(gt), figsize=(4.2 * len(gt), 4.6), squeeze=False)
    present: set[int] = set()
    for ax, f in zip(axes[0], gt):
        o = by_stamp.get(f.timestamp_us)
        pred = o.detections if o is not None else None
        draw_bev(ax, (points or {}).get(f.timestamp_us), f.gt, pred, extent)
        lat = f"latency {(o.publish_us - o.stamp_us) / 1000:.0f} ms" if o is not None else "no output"
        ax.set_title(f"stamp {f.timestamp_us / 1e6:.2f} s, {lat}", fontsize=9)
        ax.tick_params(labelsize=7)
        present |= {int(x) for x in f.gt.labels} | (
            {int(x) for x in pred.labels} if pred is not None else set()
        )
    handles = [Line2D([], [], color=CLASS_COLORS[c], label=CLASS_NAMES[c]) for c in sorted(present)]
    handles += [
        Line2D([], [], color="k", ls="-", label="ground truth"),
        Line2D([], [], color="k", ls="--", label="detection"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    fig.suptitle(f"replay: {title} (ego frame, BEV)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return save_figure(fig, path, dpi=90)
