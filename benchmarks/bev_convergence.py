"""Val NDS of a camera BEV training run against its training minutes (the convergence curve).

``train bev --snapshot-minutes N`` keeps the weights every N training minutes in
``<out>.snapshots/minXXXX.X.pt``; this evaluates every snapshot (and the final checkpoint) on a
freshly generated val set with the real devkit (``qd-perception eval bev``), keeps each result
in ``<snapshot>.eval/metrics.json`` (re-running evaluates only what is new), and writes a table
and a PNG of NDS / mAP against training minutes.

    python -m benchmarks.bev_convergence --run .cache/bev/run1/bevformer_nano.pt --data .cache/bev/val \
        --png docs/images/bev_convergence.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.fileio import atomic_output


def evaluate(model: Path, data: str, threads: int) -> dict:
    out = model.with_suffix(".eval")
    metrics = out / "metrics.json"
    if not metrics.is_file():
        cmd = [sys.executable, "-m", "qd_perception.cli", "eval", "bev", "--model", str(model),
               "--data", data, "--out", str(out), "--pictures", "0", "--threads", str(threads)]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(metrics.read_text())


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the training checkpoint (<out> of train bev)")
    p.add_argument("--data", required=True, help="val dataroot (scenes the model never saw)")
    p.add_argument("--png", default="")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    run = Path(a.run)
    models = sorted(run.with_suffix(".snapshots").glob("min*.pt"))
    if run.is_file():
        models.append(run)
    rows = []
    for m in models:
        minutes = torch.load(m, map_location="cpu", weights_only=False)["state"]["elapsed_s"] / 60
        r = evaluate(m, a.data, a.threads)
        rows.append((minutes, r["nds"], r["map"], m.name))
        print(f"{minutes:7.1f} min  NDS {r['nds']:.4f}  mAP {r['map']:.4f}  {m.name}", flush=True)
    rows.sort()  # the final checkpoint may be older than the last snapshot
    if a.png and rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label="NDS")
        ax.plot([r[0] for r in rows], [r[2] for r in rows], "s--", label="mAP")
        ax.set_xlabel("training minutes (2-core CPU)")
        ax.set_ylabel("synthetic val (fresh scenes)")
        ax.set_title(f"{run.name}: convergence")
        ax.grid(alpha=0.3)
        ax.legend()
        with atomic_output(a.png) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
