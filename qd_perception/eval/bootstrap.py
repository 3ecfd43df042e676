"""Paired bootstrap of nuScenes mAP / NDS over the evaluation samples (how noisy is a val set?).

The nuscenes-devkit matches predictions to ground truth **within each sample** (greedy by score,
centre distance), so a prediction's match does not depend on which other samples are scored.
:func:`match_submission` therefore runs the devkit's own loading and filtering
(``DetectionEval.__init__``) and its matching rule once per submission, keeping per prediction its
sample, score, TP flag per distance threshold and TP errors. :func:`score_counts` then scores any
multiset of samples (a bootstrap replicate: sample ``i`` taken ``counts[i]`` times) by repeating
those records — exactly what the devkit would compute on a data set where each sample appears
``counts[i]`` times — with the devkit's interpolation, ``calc_ap``, ``calc_tp`` and
``DetectionMetrics`` (NDS). With every count 1 it reproduces ``DetectionEval`` exactly
(``test_eval_bootstrap.py`` checks mAP and NDS against it).

:func:`paired_bootstrap` draws the same replicates for several submissions of one split, so the
spread of a *difference* (INT8 minus FP32) is measured on the same resampled scenes. Keyframes of
one scene are strongly correlated (the same objects 0.5 s apart), so samples are resampled in
blocks of ``block`` consecutive keyframes of a scene (moving-block style); ``block=1`` is the plain
per-sample bootstrap, which understates the noise when frames are correlated.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: devkit TP error names, in ``DetectionMetricData`` field order.
TP_ERRORS = ("trans_err", "vel_err", "scale_err", "orient_err", "attr_err")


@dataclass(frozen=True)
class ClassMatches:
    """Matched predictions of one class at one distance threshold, in the devkit's score order.

    ``sample``/``conf``/``tp``: (P,) sample index, score, 1 for a match; ``errors``: (P, 5) TP
    errors (:data:`TP_ERRORS`; rows of false positives unused); ``ngt``: (S,) GT count per sample.
    """

    sample: np.ndarray
    conf: np.ndarray
    tp: np.ndarray
    errors: np.ndarray
    ngt: np.ndarray


@dataclass(frozen=True)
class MatchedSubmission:
    """A submission matched once: ``matches[(class, dist_th)]``, samples in ``sample_tokens`` order."""

    sample_tokens: tuple[str, ...]
    matches: dict[tuple[str, float], ClassMatches]


class DevkitSplit:
    """The devkit's view of one split (NuScenes tables loaded once) for matching submissions."""

    def __init__(self, dataroot: str | Path, version: str, split: str) -> None:
        from nuscenes import NuScenes
        from nuscenes.eval.common.config import config_factory

        from qd_perception.data.nuscenes import resolve_split

        self.dataroot, self.version = Path(dataroot), version
        self.eval_set, _ = resolve_split(self.dataroot, version, split)
        with contextlib.redirect_stdout(io.StringIO()):
            self.nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
        self.cfg = config_factory("detection_cvpr_2019")

    def scene_blocks(self, sample_tokens: tuple[str, ...], block: int) -> list[np.ndarray]:
        """Indices into ``sample_tokens`` grouped in runs of ``block`` consecutive keyframes per scene."""
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        by_scene: dict[str, list[tuple[int, int]]] = {}
        for i, tok in enumerate(sample_tokens):
            s = self.nusc.get("sample", tok)
            by_scene.setdefault(s["scene_token"], []).append((s["timestamp"], i))
        blocks = []
        for members in by_scene.values():
            idx = [i for _, i in sorted(members)]
            blocks += [np.asarray(idx[k : k + block]) for k in range(0, len(idx), block)]
        return blocks

    def match_submission(self, result_path: str | Path) -> MatchedSubmission:
        """Load + filter ``result_path`` exactly as ``DetectionEval`` does, then match once."""
        from nuscenes.eval.common.utils import attr_acc, scale_iou, velocity_l2, yaw_diff
        from nuscenes.eval.detection.evaluate import DetectionEval

        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            ev = DetectionEval(self.nusc, self.cfg, str(result_path), self.eval_set, tmp, verbose=False)
        gt, pred = ev.gt_boxes, ev.pred_boxes
        tokens = tuple(gt.sample_tokens)
        index = {t: i for i, t in enumerate(tokens)}
        dist = self.cfg.dist_fcn_callable
        matches: dict[tuple[str, float], ClassMatches] = {}
        for cls in self.cfg.class_names:
            ngt = np.array([sum(b.detection_name == cls for b in gt[t]) for t in tokens], np.int64)
            boxes = [b for b in pred.all if b.detection_name == cls]
            # The devkit's order: descending score, ties by descending list index.
            order = [i for _, i in sorted((b.detection_score, i) for i, b in enumerate(boxes))][::-1]
            for th in self.cfg.dist_ths:
                taken: set[tuple[str, int]] = set()
                n = len(order)
                tp = np.zeros(n, np.int64)
                errors = np.zeros((n, len(TP_ERRORS)))
                for k, i in enumerate(order):
                    p = boxes[i]
                    best, best_j = np.inf, None
                    for j, g in enumerate(gt[p.sample_token]):
                        if g.detection_name == cls and (p.sample_token, j) not in taken:
                            d = dist(g, p)
                            if d < best:
                                best, best_j = d, j
                    if best < th:
                        taken.add((p.sample_token, best_j))
                        g = gt[p.sample_token][best_j]
                        period = np.pi if cls == "barrier" else 2 * np.pi
                        tp[k] = 1
                        errors[k] = (
                            dist(g, p),
                            velocity_l2(g, p),
                            1 - scale_iou(g, p),
                            yaw_diff(g, p, period=period),
                            1 - attr_acc(g, p),
                        )
                matches[(cls, th)] = ClassMatches(
                    np.array([index[boxes[i].sample_token] for i in order], np.int64),
                    np.array([boxes[i].detection_score for i in order], float),
                    tp,
                    errors,
                    ngt,
                )
        return MatchedSubmission(tokens, matches)

    def score_counts(self, sub: MatchedSubmission, counts: np.ndarray | None = None) -> tuple[float, float]:
        """(mAP, NDS) of ``sub`` with sample ``i`` counted ``counts[i]`` times (None: once each)."""
        from nuscenes.eval.common.utils import cummean
        from nuscenes.eval.detection.algo import calc_ap, calc_tp
        from nuscenes.eval.detection.constants import TP_METRICS
        from nuscenes.eval.detection.data_classes import DetectionMetricData, DetectionMetrics

        counts = np.ones(len(sub.sample_tokens), np.int64) if counts is None else np.asarray(counts)
        rec_interp = np.linspace(0, 1, DetectionMetricData.nelem)
        data: dict[tuple[str, float], DetectionMetricData] = {}
        for key, m in sub.matches.items():
            npos = int((counts * m.ngt).sum())
            rep = np.repeat(np.arange(len(m.tp)), counts[m.sample])  # copies stay adjacent in score order
            tp = m.tp[rep]
            if npos == 0 or not tp.any():
                data[key] = DetectionMetricData.no_predictions()
                continue
            conf = m.conf[rep]
            tpc = np.cumsum(tp).astype(float)
            fpc = np.cumsum(1 - tp).astype(float)
            prec = np.interp(rec_interp, tpc / npos, tpc / (fpc + tpc), right=0)
            conf_i = np.interp(rec_interp, tpc / npos, conf, right=0)
            errs = {name: np.zeros_like(rec_interp) for name in TP_ERRORS}  # only used at dist_th_tp
            if key[1] == self.cfg.dist_th_tp:
                hit = tp.astype(bool)
                err = m.errors[rep[hit]]
                for e, name in enumerate(TP_ERRORS):
                    tmp = cummean(err[:, e])
                    errs[name] = np.interp(conf_i[::-1], conf[hit][::-1], tmp[::-1])[::-1]
            data[key] = DetectionMetricData(
                recall=rec_interp, precision=prec, confidence=conf_i, **errs
            )  # fmt: skip
        metrics = DetectionMetrics(self.cfg)
        for cls in self.cfg.class_names:
            for th in self.cfg.dist_ths:
                metrics.add_label_ap(
                    cls, th, calc_ap(data[(cls, th)], self.cfg.min_recall, self.cfg.min_precision)
                )
            for name in TP_METRICS:
                md = data[(cls, self.cfg.dist_th_tp)]
                if (cls == "traffic_cone" and name in ("attr_err", "vel_err", "orient_err")) or (
                    cls == "barrier" and name in ("attr_err", "vel_err")
                ):
                    tp_err = np.nan
                else:
                    tp_err = calc_tp(md, self.cfg.min_recall, name)
                metrics.add_label_tp(cls, name, tp_err)
        return float(metrics.mean_ap), float(metrics.nd_score)


@dataclass(frozen=True)
class BootstrapResult:
    """``full[name]`` = (mAP, NDS) on the whole split; ``reps[name]`` = (B, 2) replicate (mAP, NDS)."""

    names: tuple[str, ...]
    full: dict[str, tuple[float, float]]
    reps: dict[str, np.ndarray]
    block: int
    n_blocks: int

    def std(self, name: str) -> tuple[float, float]:
        s = self.reps[name].std(axis=0, ddof=1)
        return float(s[0]), float(s[1])

    def diff(self, name: str, ref: str) -> np.ndarray:
        """(B, 2) paired replicate differences ``name - ref`` (mAP, NDS)."""
        return self.reps[name] - self.reps[ref]


def paired_bootstrap(
    split: DevkitSplit,
    result_paths: dict[str, str | Path],
    n_boot: int = 500,
    block: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> BootstrapResult:
    """Score every submission on the same ``n_boot`` block-bootstrap replicates of the split."""
    from tqdm import tqdm

    subs = {
        name: split.match_submission(p)
        for name, p in tqdm(result_paths.items(), desc="match", disable=not progress)
    }
    tokens = next(iter(subs.values())).sample_tokens
    for name, s in subs.items():
        if set(s.sample_tokens) != set(tokens):
            raise ValueError(f"{name}: its samples differ from the other submissions'")
    blocks = split.scene_blocks(tokens, block)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(blocks), len(blocks)) for _ in range(n_boot)]
    order = {n: np.array([tokens.index(t) for t in s.sample_tokens]) for n, s in subs.items()}
    full = {n: split.score_counts(s) for n, s in subs.items()}
    reps = {n: np.zeros((n_boot, 2)) for n in subs}
    for b, draw in enumerate(tqdm(draws, desc="bootstrap", disable=not progress)):
        counts = np.zeros(len(tokens), np.int64)
        for k in draw:
            counts[blocks[k]] += 1
        for n, s in subs.items():
            reps[n][b] = split.score_counts(s, counts[order[n]])
    return BootstrapResult(tuple(subs), full, reps, block, len(blocks))
