"""The paired bootstrap's re-scoring against the real nuscenes-devkit on a tiny synthetic val set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qd_perception.data.nuscenes import NuScenesReader
from qd_perception.data.types import Detections
from qd_perception.eval.bootstrap import DevkitSplit, paired_bootstrap
from qd_perception.eval.nuscenes_eval import evaluate
from qd_perception.sim import generate as gen
from qd_perception.sim.nuscenes_writer import DEFAULT_VERSION

# 2 val scenes x 4 keyframes, small images (the writer always renders cameras).
CFG = gen.GenerateConfig(scenes=3, samples=4, seed=1, resolution=(32, 56), workers=1, val_fraction=0.6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "ds"
    gen.generate(CFG, out, show_progress=False)
    return out


def noisy_predictions(dataset: Path, seed: int) -> dict[str, Detections]:
    """GT with centre/size/yaw/velocity noise, random scores, some misses and false positives, so
    every AP threshold, TP error and the score ordering matter."""
    rng = np.random.default_rng(seed)
    reader = NuScenesReader(dataset, split="val", nsweeps=0, load_images=False)
    preds = {}
    for t in reader.sample_tokens:
        d = reader.gt(t)
        keep = rng.random(len(d)) > 0.2
        boxes = d.boxes[keep].copy()
        boxes[:, :2] += rng.normal(0, 0.8, (len(boxes), 2))
        boxes[:, 3:6] *= rng.uniform(0.8, 1.2, (len(boxes), 3))
        boxes[:, 6] += rng.normal(0, 0.3, len(boxes))
        boxes[:, 7:9] += rng.normal(0, 0.5, (len(boxes), 2))
        labels = d.labels[keep]
        n_fp = 3
        fp = boxes[rng.integers(0, len(boxes), n_fp)].copy() if len(boxes) else np.zeros((0, 9))
        fp[:, :2] += rng.uniform(-20, 20, (len(fp), 2))
        fp_labels = labels[rng.integers(0, len(labels), len(fp))] if len(labels) else np.zeros(0, np.int64)
        boxes = np.concatenate([boxes, fp])
        labels = np.concatenate([labels, fp_labels])
        scores = rng.uniform(0.05, 1.0, len(boxes)).astype(np.float32)
        scores[: len(scores) // 4] = 0.5  # ties: the devkit's tie order must be reproduced
        preds[t] = Detections(boxes, labels.astype(np.int64), scores)
    return preds


def test_once_per_sample_reproduces_devkit(dataset, tmp_path):
    split = DevkitSplit(dataset, DEFAULT_VERSION, "val")
    for seed in (0, 1):
        m = evaluate(dataset, DEFAULT_VERSION, "val", noisy_predictions(dataset, seed), tmp_path / str(seed))
        assert 0.05 < m.map < 0.95  # a non-trivial score, not all-or-nothing
        sub = split.match_submission(tmp_path / str(seed) / "results_nusc.json")
        got_map, got_nds = split.score_counts(sub)
        assert got_map == pytest.approx(m.map, abs=1e-9)
        assert got_nds == pytest.approx(m.nds, abs=1e-9)
        # dropping samples (count 0) changes the score; doubling every sample leaves AP nearly unchanged
        drop = np.ones(len(sub.sample_tokens), np.int64)
        drop[: len(drop) // 2] = 0
        assert split.score_counts(sub, drop) != (got_map, got_nds)
        assert split.score_counts(sub, np.full(len(drop), 2))[0] == pytest.approx(got_map, abs=0.02)


def test_paired_bootstrap_blocks_and_pairing(dataset, tmp_path):
    split = DevkitSplit(dataset, DEFAULT_VERSION, "val")
    paths = {}
    for name, seed in (("a", 0), ("b", 1)):
        evaluate(dataset, DEFAULT_VERSION, "val", noisy_predictions(dataset, seed), tmp_path / name)
        paths[name] = tmp_path / name / "results_nusc.json"
    paths["a_again"] = paths["a"]
    res = paired_bootstrap(split, paths, n_boot=20, block=2, seed=0, progress=False)
    tokens = split.match_submission(paths["a"]).sample_tokens
    blocks = split.scene_blocks(tokens, 2)
    assert sorted(np.concatenate(blocks).tolist()) == list(range(len(tokens)))  # a partition
    assert res.n_blocks == len(blocks) == 4  # 2 val scenes x 4 keyframes in blocks of 2
    assert all(len({split.nusc.get("sample", tokens[i])["scene_token"] for i in b}) == 1 for b in blocks)
    # the same submission gives identical replicates (pairing), different ones spread
    assert np.array_equal(res.diff("a_again", "a"), np.zeros((20, 2)))
    assert res.std("a")[0] > 0 and np.abs(res.diff("b", "a")).max() > 0
