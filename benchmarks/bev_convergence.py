"""Val NDS of camera BEV training runs against their training minutes (the convergence curve).

``train bev --snapshot-minutes N`` keeps the weights every N training minutes in
``<out>.snapshots/minXXXX.X.pt``; this evaluates every snapshot (and the final checkpoint) on a
freshly generated val set with the real devkit (``qd-perception eval bev``), keeps each result
in ``<snapshot>.eval/metrics.json`` (re-running evaluates only what is new), and writes a table
and a PNG of NDS / mAP against training minutes.

    python -m benchmarks.bev_convergence --run .cache/bev/run1/bevformer_nano.pt --data .cache/bev/val \
        --png docs/images/bev_convergence.png

A run continued from another one's weights (``train bev --init``) counts its minutes from zero:
``--offset-minutes`` adds the minutes of the run it started from, ``--prior CSV`` draws the
earlier points (lines ``minutes,nds,map``, ``#`` comments) on the same axes, and several
``--run LABEL=PATH`` (arms of an ablation at the same budget) share one picture.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import label_path
from qd_perception.fileio import atomic_output

Point = tuple[float, float, float]  # (training minutes, NDS, mAP)


def evaluate(model: Path, data: str, threads: int) -> dict:
    out = model.with_suffix(".eval")
    metrics = out / "metrics.json"
    if not metrics.is_file():
        cmd = [sys.executable, "-m", "qd_perception.cli", "eval", "bev", "--model", str(model),
               "--data", data, "--out", str(out), "--pictures", "0", "--threads", str(threads)]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(metrics.read_text())


def read_prior(path: Path) -> list[Point]:
    """``minutes,nds,map`` lines (``#`` starts a comment) -> points; a bad line names its number."""
    points = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            minutes, nds, map_ = (float(v) for v in line.split(","))
        except ValueError:
            raise SystemExit(f"{path}:{i}: expected 'minutes,nds,map', got {line!r}") from None
        points.append((minutes, nds, map_))
    return sorted(points)


def run_points(run: Path, data: str, threads: int, offset: float) -> list[Point]:
    import torch

    models = sorted(run.with_suffix(".snapshots").glob("min*.pt"))
    if run.is_file():
        models.append(run)
    points = []
    for m in models:
        minutes = offset + torch.load(m, map_location="cpu", weights_only=False)["state"]["elapsed_s"] / 60
        r = evaluate(m, data, threads)
        points.append((minutes, r["nds"], r["map"]))
        print(f"{minutes:7.1f} min  NDS {r['nds']:.4f}  mAP {r['map']:.4f}  {m}", flush=True)
    return sorted(set(points))  # the final checkpoint may repeat the last snapshot


def plot(png: str, runs: dict[str, list[Point]], prior: list[Point]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if prior:
        ax.plot(
            [p[0] for p in prior], [p[1] for p in prior], "o-", color="0.45", label="NDS (earlier chunks)"
        )
        ax.plot(
            [p[0] for p in prior], [p[2] for p in prior], "s--", color="0.65", label="mAP (earlier chunks)"
        )
    for label, points in runs.items():
        start = prior[-1:] if prior else []  # each arm continues from the last earlier point
        pts = start + points
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"NDS {label}")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "s--", color=line.get_color(), label=f"mAP {label}")
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("synthetic val (fresh scenes)")
    ax.set_title("camera BEV: convergence")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_output(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, action="append",
                   help="training checkpoint (<out> of train bev) or LABEL=PATH; repeatable")  # fmt: skip
    p.add_argument("--data", required=True, help="val dataroot (scenes the model never saw)")
    p.add_argument("--offset-minutes", type=float, default=0.0, help="training minutes before these runs")
    p.add_argument("--prior", type=Path, help="CSV of earlier points: minutes,nds,map")
    p.add_argument("--png", default="")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    runs = {}
    for text in a.run:
        label, path = label_path(text) if "=" in text else (Path(text).stem, Path(text))
        runs[label] = run_points(path, a.data, a.threads, a.offset_minutes)
    prior = read_prior(a.prior) if a.prior else []
    if a.png:
        plot(a.png, runs, prior)


if __name__ == "__main__":
    main()
