"""nuScenes detection metrics through the real ``nuscenes-devkit`` ``DetectionEval``.

:func:`evaluate` takes predictions in the **ego frame** of each sample (what every detector
returns), converts them to the global frame with the sample's keyframe ego pose, writes the
official submission JSON (with its ``meta`` block) and runs ``DetectionEval`` with the standard
``detection_cvpr_2019`` configuration (class ranges, 0.5/1/2/4 m matching, NDS weights). It
serves the real nuScenes (``v1.0-trainval`` / ``v1.0-mini`` splits) and the synthetic set
(custom splits from ``<version>/splits.json``) alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qd_perception.classes import CLASS_NAMES, attribute_for
from qd_perception.data.nuscenes import DatasetError, NuScenesReader
from qd_perception.data.types import Detections
from qd_perception.geometry.boxes import transform_boxes
from qd_perception.geometry.transforms import yaw_to_quat
from qd_perception.sim.nuscenes_writer import atomic_write_json

#: nuScenes TP error names (``DetectionMetrics.tp_errors`` keys) -> our field names.
_TP = {"trans_err": "mate", "scale_err": "mase", "orient_err": "maoe", "vel_err": "mave", "attr_err": "maae"}
MAX_BOXES_PER_SAMPLE = 500


@dataclass(frozen=True)
class NuScenesMetrics:
    """Official nuScenes detection metrics (``detection_cvpr_2019``); errors in m / 1-IoU / rad / m/s."""

    nds: float
    map: float
    mate: float
    mase: float
    maoe: float
    mave: float
    maae: float
    class_ap: dict[str, float]  # class -> AP averaged over the 4 distance thresholds
    class_tp_errors: dict[str, dict[str, float]]  # class -> {mate, mase, maoe, mave, maae} (NaN: n/a)
    num_samples: int
    num_predictions: int
    eval_time_s: float

    def to_json(self) -> dict:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None  # JSON has no NaN
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            return x

        return clean(asdict(self))

    def summary(self) -> str:
        aps = " ".join(f"{c}={self.class_ap[c]:.3f}" for c in CLASS_NAMES if c in self.class_ap)
        return (
            f"NDS {self.nds:.4f}  mAP {self.map:.4f}  mATE {self.mate:.3f}  mASE {self.mase:.3f}  "
            f"mAOE {self.maoe:.3f}  mAVE {self.mave:.3f}  mAAE {self.maae:.3f}  "
            f"({self.num_samples} samples)\n"
            f"AP: {aps}"
        )


def to_submission(
    reader: NuScenesReader, predictions: dict[str, Detections], meta: dict[str, bool] | None = None
) -> dict:
    """Ego-frame predictions -> the nuScenes result-file dict (global frame, top 500 per sample)."""
    results: dict[str, list[dict]] = {}
    for token, det in predictions.items():
        if len(det) > MAX_BOXES_PER_SAMPLE:
            keep = np.argsort(-np.asarray(det.scores), kind="stable")[:MAX_BOXES_PER_SAMPLE]
            det = Detections(
                det.boxes[keep], det.labels[keep], det.scores[keep],
                tuple(det.attributes[i] for i in keep) if det.attributes else (),
            )  # fmt: skip
        boxes = transform_boxes(det.boxes, reader.ego2global(token)) if len(det) else np.zeros((0, 9))
        recs = []
        for i in range(len(det)):
            b = boxes[i]
            name = CLASS_NAMES[int(det.labels[i])]
            attr = det.attributes[i] if det.attributes else ""
            if not attr and name not in ("barrier", "traffic_cone"):
                attr = attribute_for(name, float(np.hypot(b[7], b[8])))
            if name in ("barrier", "traffic_cone"):
                attr = ""
            recs.append(
                {
                    "sample_token": token,
                    "translation": [float(x) for x in b[0:3]],
                    "size": [float(b[4]), float(b[3]), float(b[5])],
                    "rotation": [float(x) for x in yaw_to_quat(float(b[6]))],
                    "velocity": [float(b[7]), float(b[8])],
                    "detection_name": name,
                    "detection_score": float(det.scores[i]),
                    "attribute_name": attr,
                }
            )
        results[token] = recs
    meta = meta or {
        "use_camera": False,
        "use_lidar": True,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    return {"meta": meta, "results": results}


def evaluate(
    dataroot: str | Path,
    version: str,
    split: str,
    predictions: dict[str, Detections],
    out_dir: str | Path,
    *,
    meta: dict[str, bool] | None = None,
    allow_missing: bool = False,
    verbose: bool = False,
) -> NuScenesMetrics:
    """Score ego-frame ``predictions`` (sample token -> Detections) on ``split``.

    Every sample of the split needs an entry (an empty ``Detections`` is fine); with
    ``allow_missing`` absent samples count as "no detections". Writes ``results_nusc.json``
    (the submission), ``metrics_summary.json`` (the devkit's) and ``metrics.json`` (ours) into
    ``out_dir``.
    """
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    reader = NuScenesReader(dataroot, version, split, nsweeps=0, load_images=False)
    if reader.eval_set == "all":
        raise DatasetError("evaluate needs a named split (train, val, or one of splits.json)")
    tokens = set(reader.sample_tokens)
    extra = sorted(set(predictions) - tokens)
    if extra:
        raise ValueError(f"{len(extra)} predicted sample(s) are not in split {split!r}, e.g. {extra[0]}")
    missing = [t for t in reader.sample_tokens if t not in predictions]
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} sample(s) of split {split!r} have no prediction, e.g. {missing[0]}")
    preds = {t: predictions.get(t, Detections.empty()) for t in reader.sample_tokens}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    submission = to_submission(reader, preds, meta)
    result_path = out_dir / "results_nusc.json"
    atomic_write_json(result_path, submission)

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=verbose)
        ev = DetectionEval(
            nusc,
            config_factory("detection_cvpr_2019"),
            str(result_path),
            reader.eval_set,
            str(out_dir),
            verbose,
        )
        metrics, _ = ev.evaluate()
    s = metrics.serialize()
    atomic_write_json(out_dir / "metrics_summary.json", s)
    result = NuScenesMetrics(
        nds=float(s["nd_score"]),
        map=float(s["mean_ap"]),
        **{ours: float(s["tp_errors"][theirs]) for theirs, ours in _TP.items()},
        class_ap={c: float(v) for c, v in s["mean_dist_aps"].items()},
        class_tp_errors={
            c: {ours: float(errs[theirs]) for theirs, ours in _TP.items()}
            for c, errs in s["label_tp_errors"].items()
        },
        num_samples=len(preds),
        num_predictions=sum(len(d) for d in preds.values()),
        eval_time_s=float(s["eval_time"]),
    )
    atomic_write_json(out_dir / "metrics.json", result.to_json())
    return result


def load_submission(
    path: str | Path, ego2global: dict[str, np.ndarray], score_threshold: float = 0.0
) -> dict[str, Detections]:
    """A nuScenes result JSON (global frame) -> ego-frame Detections of the given samples.

    ``ego2global`` maps each wanted sample token to its keyframe ego pose; a wanted token the
    file lacks raises ``KeyError``.
    """
    from qd_perception.classes import CLASS_ID
    from qd_perception.geometry.transforms import invert, quat_to_yaw

    results = json.loads(Path(path).read_text())["results"]
    out = {}
    for token, pose in ego2global.items():
        recs = [r for r in results[token] if r["detection_score"] >= score_threshold]
        if not recs:
            out[token] = Detections.empty()
            continue
        boxes = np.array(
            [[*r["translation"], r["size"][1], r["size"][0], r["size"][2],
              quat_to_yaw(np.asarray(r["rotation"])), *r["velocity"][:2]] for r in recs]
        )  # fmt: skip
        out[token] = Detections(
            transform_boxes(boxes, invert(pose)),
            np.array([CLASS_ID[r["detection_name"]] for r in recs], np.int64),
            np.array([r["detection_score"] for r in recs], np.float32),
            tuple(r["attribute_name"] for r in recs),
        )
    return out


def load_metrics(path: str | Path) -> dict:
    """``metrics.json`` written by :func:`evaluate` (NaN stored as null)."""
    return json.loads(Path(path).read_text())
