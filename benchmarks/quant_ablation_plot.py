r"""Bar chart of mAP per PTQ variant from the logs of several ``quant_lidar_ablation.py`` runs.

The ablation is split over parallel runs (calibrators / LiDAR-PTQ W8A8 / W4A8, per checkpoint);
each prints ``<name>: mAP <x> NDS <y>`` per row. This collects those rows, one panel per model:

    .venv/bin/python benchmarks/quant_ablation_plot.py --png docs/images/quant_lidar_ablation.png \
        pillar=.cache/bench/abl/A.log,.cache/bench/abl/B.log,.cache/bench/abl/C.log \
        voxel=.cache/bench/abl/D.log,.cache/bench/abl/E.log
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROW = re.compile(r"([A-Za-z0-9+: -]{1,60}?): mAP ([0-9.]+) NDS ([0-9.]+)")


def parse(logs: list[Path]) -> dict[str, tuple[float, float]]:
    """Rows ``name -> (mAP, NDS)`` in first-seen order (FP32 repeated by every run kept once)."""
    rows: dict[str, tuple[float, float]] = {}
    for log in logs:
        text = log.read_bytes().decode("utf-8", "replace").replace("\r", "\n")
        for m in ROW.finditer(text):
            rows.setdefault(m.group(1).strip(), (float(m.group(2)), float(m.group(3))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("panels", nargs="+", help="label=log1,log2,...")
    ap.add_argument("--png", type=Path, required=True)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for spec in args.panels:
        label, _, logs = spec.partition("=")
        rows = parse([Path(p) for p in logs.split(",")])
        if "FP32" not in rows:
            raise SystemExit(f"{label}: no FP32 row in {logs}")
        panels.append((label, rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (label, rows) in zip(axes[0], panels, strict=True):
        names = list(rows)
        maps = [rows[n][0] for n in names]
        colors = ["gray" if n == "FP32" else ("C1" if n.startswith("W4") else "C0") for n in names]
        ax.bar(range(len(names)), maps, color=colors)
        ax.axhline(rows["FP32"][0], color="k", lw=0.8, ls="--", label="FP32")
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("mAP (synthetic val, devkit)")
        ax.set_title(f"CenterPoint {label}: PTQ variants (blue W8A8, orange W4A8)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
