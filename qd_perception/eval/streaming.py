"""Offline and streaming detection metrics of a replayed sequence, with nuscenes-devkit's metrics.

A replay produces *timed outputs*: each detection set carries the sensor stamp of the input it
was computed from and the moment it was published (on the replay clock, see
:mod:`qd_perception.eval.latency`). Two scores are computed from the same ground truth:

* **offline** — each ground-truth instant ``t`` is scored against the output computed from the
  input stamped ``t`` (what ``qd-perception eval`` measures; a dropped frame scores as an empty
  prediction);
* **streaming** — as in "Towards Streaming Perception" (Li, Wang, Ramanan, ECCV 2020): each
  ground-truth instant ``t`` is scored against the most recent output *published* at or before
  ``t``, whatever input it came from. Slow or dropped processing is thereby penalised: the world has
  moved on while the detector was busy. Boxes are compared in the global frame (output boxes go
  ego(stamp) -> global with the pose of their own input; ground truth with the pose at ``t``),
  so ego motion during the latency is accounted for and object motion is the penalty.

Both are scored by the devkit's own matching and metric functions (``accumulate``, ``calc_ap``,
``calc_tp``, ``DetectionMetrics`` with the standard ``detection_cvpr_2019`` config), fed with
``EvalBoxes`` built here, the same loop as ``DetectionEval.evaluate``. We build the box sets
ourselves instead of going through ``DetectionEval``'s loader because the ground truth of a
replay may come straight from the bag (``/ground_truth/detections``), without a nuScenes
directory. The devkit's class-range and zero-point filters are applied with its definitions
(ego distance to the ego pose at the ground-truth instant; ground-truth boxes with no lidar points
are dropped when point counts are known). Bike-rack filtering needs the nuScenes map of
``static_object.bicycle_rack`` annotations and is skipped (the synthetic world has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qd_perception.classes import CLASS_NAMES
from qd_perception.data.types import Detections
from qd_perception.geometry.boxes import transform_boxes
from qd_perception.geometry.transforms import yaw_to_quat

CONFIG_NAME = "detection_cvpr_2019"


@dataclass(frozen=True)
class GroundTruthFrame:
    """Ground truth valid at one instant. ``gt`` boxes in the ego frame of ``timestamp_us``."""

    token: str
    timestamp_us: int
    ego2global: np.ndarray  # (4, 4)
    gt: Detections


@dataclass(frozen=True)
class TimedOutput:
    """One published detection set.

    stamp_us: sensor stamp of the input it was computed from (message header stamp).
    publish_us: when it became available, on the replay clock (same time base as stamps).
    ego2global: (4, 4) ego pose at ``stamp_us`` (boxes are in that ego frame).
    """

    stamp_us: int
    publish_us: int
    ego2global: np.ndarray
    detections: Detections


@dataclass(frozen=True)
class DetectionScores:
    """nuScenes detection metrics (devkit definitions) over a set of ground-truth instants."""

    nds: float
    map: float
    per_class_ap: dict[str, float]  # mean over the 4 distance thresholds
    tp_errors: dict[str, float]  # mATE, mASE, mAOE, mAVE, mAAE (devkit names trans_err, ...)
    per_class_tp_errors: dict[str, dict[str, float]]  # class -> trans_err, ... (NaN: undefined)
    num_samples: int
    num_gt_boxes: int  # after the devkit's range / zero-point filters
    num_pred_boxes: int

    def to_dict(self) -> dict:
        return {
            "nds": self.nds,
            "map": self.map,
            "per_class_ap": dict(self.per_class_ap),
            "tp_errors": dict(self.tp_errors),
            "per_class_tp_errors": {k: dict(v) for k, v in self.per_class_tp_errors.items()},
            "num_samples": self.num_samples,
            "num_gt_boxes": self.num_gt_boxes,
            "num_pred_boxes": self.num_pred_boxes,
        }


@dataclass(frozen=True)
class ReplayScores:
    offline: DetectionScores
    streaming: DetectionScores
    #: per ground-truth instant: age of the streamed output's input (t - stamp), ms; NaN if none yet
    streaming_staleness_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    offline_missing: int = 0  # ground-truth instants with no output computed from their input
    streaming_missing: int = 0  # ground-truth instants before any output was published


# ------------------------------------------------------------------------------------ pairing


def latest_published(query_us: Sequence[int], publish_us: Sequence[int]) -> np.ndarray:
    """For each query time, the index of the output with the greatest ``publish_us <= query``
    (ties: the later one in the list), or -1 when nothing was published yet. ``publish_us`` may be
    unsorted. Shape ``(len(query_us),)`` int64."""
    pub = np.asarray(publish_us, np.int64)
    q = np.asarray(query_us, np.int64)
    if len(pub) == 0:
        return np.full(len(q), -1, np.int64)
    order = np.argsort(pub, kind="stable")
    pos = np.searchsorted(pub[order], q, side="right") - 1
    return np.where(pos >= 0, order[np.clip(pos, 0, None)], -1).astype(np.int64)


def match_stamps(query_us: Sequence[int], stamps_us: Sequence[int], tol_us: int = 1000) -> np.ndarray:
    """For each query time, the index of the output whose input stamp is within ``tol_us`` of it
    (nearest; -1 when none). Shape ``(len(query_us),)`` int64."""
    st = np.asarray(stamps_us, np.int64)
    q = np.asarray(query_us, np.int64)
    if len(st) == 0:
        return np.full(len(q), -1, np.int64)
    order = np.argsort(st, kind="stable")
    s = st[order]
    pos = np.clip(np.searchsorted(s, q), 1, len(s) - 1) if len(s) > 1 else np.zeros(len(q), np.int64)
    cand = np.stack([pos - 1, pos], 1) if len(s) > 1 else pos[:, None]
    d = np.abs(s[cand] - q[:, None])
    best = cand[np.arange(len(q)), np.argmin(d, 1)]
    ok = d.min(1) <= tol_us
    return np.where(ok, order[best], -1).astype(np.int64)


# ------------------------------------------------------------------------------------ devkit glue


def _devkit():
    # Imported lazily: the devkit pulls in matplotlib, shapely, ... and is only needed here.
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp
    from nuscenes.eval.detection.constants import TP_METRICS
    from nuscenes.eval.detection.data_classes import DetectionBox, DetectionMetricDataList, DetectionMetrics

    return (
        config_factory,
        EvalBoxes,
        accumulate,
        calc_ap,
        calc_tp,
        TP_METRICS,
        DetectionBox,
        DetectionMetricDataList,
        DetectionMetrics,
    )


def _boxes_global(det: Detections, ego2global: np.ndarray) -> np.ndarray:
    return transform_boxes(det.boxes, np.asarray(ego2global, np.float64))


def _detection_boxes(
    token: str,
    det: Detections,
    ego2global: np.ndarray,
    ego_xyz: np.ndarray,
    is_gt: bool,
    max_boxes: int,
    class_range: dict[str, float],
    drop_empty: bool,
):
    """devkit DetectionBox list for one sample, global frame, filtered as the devkit filters."""
    *_, DetectionBox, _, _ = _devkit()
    if len(det) == 0:
        return []
    g = _boxes_global(det, ego2global)
    idx = np.arange(len(det))
    if not is_gt and len(idx) > max_boxes:
        idx = np.argsort(-np.asarray(det.scores), kind="stable")[:max_boxes]
    npts = det.num_lidar_pts if (is_gt and det.num_lidar_pts is not None and drop_empty) else None
    out = []
    for i in idx:
        name = CLASS_NAMES[int(det.labels[i])]
        b = g[i]
        ego_t = (float(b[0] - ego_xyz[0]), float(b[1] - ego_xyz[1]), float(b[2] - ego_xyz[2]))
        if float(np.hypot(ego_t[0], ego_t[1])) >= class_range[name]:
            continue  # devkit filter_eval_boxes: distance first ...
        n = int(npts[i]) if npts is not None else -1
        if n == 0:
            continue  # ... then boxes without points
        attr = det.attributes[i] if det.attributes else ""
        out.append(
            DetectionBox(
                sample_token=token,
                translation=(float(b[0]), float(b[1]), float(b[2])),
                # nuScenes size is (width, length, height); ours (length, width, height).
                size=(float(b[4]), float(b[3]), float(b[5])),
                rotation=tuple(float(v) for v in yaw_to_quat(float(b[6]))),
                velocity=(float(b[7]), float(b[8])),
                ego_translation=ego_t,
                num_pts=n,
                detection_name=name,
                detection_score=-1.0 if is_gt else float(det.scores[i]),
                attribute_name=attr,
            )
        )
    return out


def score(
    gt_frames: Sequence[GroundTruthFrame],
    predictions: Sequence[tuple[Detections, np.ndarray] | None],
    drop_empty_gt: bool = True,
) -> DetectionScores:
    """Score ``predictions[i]`` = (detections in their ego frame, that ego2global) or None against
    ``gt_frames[i]`` with the devkit's ``detection_cvpr_2019`` definitions."""
    if len(gt_frames) != len(predictions):
        raise ValueError("one prediction entry (or None) per ground-truth frame is required")
    if not gt_frames:
        raise ValueError("no ground-truth frames to score")
    (config_factory, EvalBoxes, accumulate, calc_ap, calc_tp, TP_METRICS, _, MDList, DetectionMetrics) = (
        _devkit()
    )
    cfg = config_factory(CONFIG_NAME)
    gt_boxes, pred_boxes = EvalBoxes(), EvalBoxes()
    for f, p in zip(gt_frames, predictions):
        ego_xyz = np.asarray(f.ego2global)[:3, 3]
        gt_boxes.add_boxes(
            f.token,
            _detection_boxes(f.token, f.gt, f.ego2global, ego_xyz, True, 0, cfg.class_range, drop_empty_gt),
        )
        pb = []
        if p is not None:
            det, pose = p
            pb = _detection_boxes(
                f.token, det, pose, ego_xyz, False, cfg.max_boxes_per_sample, cfg.class_range, False
            )
        pred_boxes.add_boxes(f.token, pb)

    # The loop of DetectionEval.evaluate, on our EvalBoxes.
    md_list = MDList()
    for class_name in cfg.class_names:
        for dist_th in cfg.dist_ths:
            md_list.set(
                class_name,
                dist_th,
                accumulate(gt_boxes, pred_boxes, class_name, cfg.dist_fcn_callable, dist_th),
            )
    metrics = DetectionMetrics(cfg)
    for class_name in cfg.class_names:
        for dist_th in cfg.dist_ths:
            metrics.add_label_ap(
                class_name,
                dist_th,
                calc_ap(md_list[(class_name, dist_th)], cfg.min_recall, cfg.min_precision),
            )
        for metric_name in TP_METRICS:
            md = md_list[(class_name, cfg.dist_th_tp)]
            if class_name == "traffic_cone" and metric_name in ("attr_err", "vel_err", "orient_err"):
                tp = np.nan
            elif class_name == "barrier" and metric_name in ("attr_err", "vel_err"):
                tp = np.nan
            else:
                tp = calc_tp(md, cfg.min_recall, metric_name)
            metrics.add_label_tp(class_name, metric_name, tp)
    return DetectionScores(
        nds=float(metrics.nd_score),
        map=float(metrics.mean_ap),
        per_class_ap={k: float(v) for k, v in metrics.mean_dist_aps.items()},
        tp_errors={k: float(v) for k, v in metrics.tp_errors.items()},
        per_class_tp_errors={
            c: {m: float(metrics.get_label_tp(c, m)) for m in TP_METRICS} for c in cfg.class_names
        },
        num_samples=len(gt_frames),
        num_gt_boxes=len(gt_boxes.all),
        num_pred_boxes=len(pred_boxes.all),
    )


def evaluate_replay(
    gt_frames: Sequence[GroundTruthFrame],
    outputs: Sequence[TimedOutput],
    stamp_tol_us: int = 1000,
    drop_empty_gt: bool = True,
) -> ReplayScores:
    """Offline and streaming scores of a replay (see the module docstring)."""
    return evaluate_segments([(gt_frames, outputs)], stamp_tol_us, drop_empty_gt)


def evaluate_segments(
    segments: Sequence[tuple[Sequence[GroundTruthFrame], Sequence[TimedOutput]]],
    stamp_tol_us: int = 1000,
    drop_empty_gt: bool = True,
) -> ReplayScores:
    """Like :func:`evaluate_replay` over several replays (e.g. one per scene): outputs are paired
    with ground truth within their own segment (stamps may repeat across segments), then all
    instants are scored together (pooled, as the devkit pools the samples of a split). Ground-truth
    tokens must be unique over all segments."""
    gts: list[GroundTruthFrame] = []
    off_preds: list = []
    stream_preds: list = []
    stale: list[float] = []
    off_missing = stream_missing = 0
    for gt_frames, outputs in segments:
        t = [f.timestamp_us for f in gt_frames]
        off = match_stamps(t, [o.stamp_us for o in outputs], stamp_tol_us)
        stream = latest_published(t, [o.publish_us for o in outputs])
        gts += list(gt_frames)
        off_preds += [None if i < 0 else (outputs[i].detections, outputs[i].ego2global) for i in off]
        stream_preds += [None if i < 0 else (outputs[i].detections, outputs[i].ego2global) for i in stream]
        stale += [np.nan if i < 0 else (ti - outputs[i].stamp_us) / 1000.0 for ti, i in zip(t, stream)]
        off_missing += int(np.sum(off < 0))
        stream_missing += int(np.sum(stream < 0))
    if len({f.token for f in gts}) != len(gts):
        raise ValueError("ground-truth tokens repeat across segments")
    return ReplayScores(
        offline=score(gts, off_preds, drop_empty_gt),
        streaming=score(gts, stream_preds, drop_empty_gt),
        streaming_staleness_ms=np.array(stale, np.float64),
        offline_missing=off_missing,
        streaming_missing=stream_missing,
    )
