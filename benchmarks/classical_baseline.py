r"""The classical lidar baseline (``detector.name: classical``) scored with the nuScenes devkit.

Runs :class:`~qd_perception.models.classical.ClassicalDetector` on every keyframe of a split of a
nuScenes-format data set (synthetic or real), in time order per scene (velocity comes from the
previous keyframe), scores with :func:`qd_perception.eval.nuscenes_eval.evaluate` and prints a
markdown row for docs/benchmarks.md. Generate the data first, e.g.::

    .venv/bin/python -m qd_perception.cli sim --out .cache/bench/classical_sim --scenes 3 \
        --samples 10 --seed 11 --val-fraction 0.99
    nice -n 10 .venv/bin/python benchmarks/classical_baseline.py --data .cache/bench/classical_sim
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.data.nuscenes import NuScenesReader
from qd_perception.eval.nuscenes_eval import evaluate
from qd_perception.runtime.factory import DetectorConfig, build_detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--version", default="v1.0-synthetic")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", default=".cache/bench/classical_eval")
    ap.add_argument("--score-threshold", type=float, default=0.05)
    args = ap.parse_args()
    reader = NuScenesReader(args.data, args.version, args.split, nsweeps=1, load_images=False)
    det = build_detector(DetectorConfig(name="classical", score_threshold=args.score_threshold))
    preds, times, scene = {}, [], None
    for token in tqdm(reader.sample_tokens, desc="classical", unit="frame"):
        frame = reader.frame(token)
        if frame.scene_token != scene:
            det.reset()
            scene = frame.scene_token
        t = time.perf_counter()
        preds[token] = det.detect(frame)
        times.append((time.perf_counter() - t) * 1e3)
    m = evaluate(args.data, args.version, args.split, preds, args.out)
    print(m.summary())
    aps = ", ".join(f"{c} {v:.2f}" for c, v in m.class_ap.items() if v > 0)
    p50, p95 = np.percentile(times, [50, 95])
    print(
        f"| classical (CPU, 1 sweep) | {args.split}: {len(preds)} keyframes | {m.nds:.3f} | {m.map:.3f} "
        f"| {m.mate:.2f} / {m.mase:.2f} / {m.maoe:.2f} / {m.mave:.2f} / {m.maae:.2f} | {aps} "
        f"| {p50:.0f} / {p95:.0f} |"
    )


if __name__ == "__main__":
    main()
