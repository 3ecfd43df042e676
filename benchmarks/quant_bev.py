r"""QD-BEV rows: every quantized camera model against its FP32 model on the same val scenes.

Each row is an ``eval bev`` output directory (``metrics.json`` + ``results_nusc.json``); the
differences to FP32 get **paired** block-bootstrap intervals (the same resampled scenes for every
row, :func:`qd_perception.eval.bootstrap.paired_bootstrap`), since a 160-keyframe val set moves
NDS by a few hundredths on its own. ``--artefact`` adds the ``quant.yaml`` of the row's
``quantize bev`` directory (size, steps, training seconds, the NDS after every QAT epoch): the
curves of those with ``--val-data`` go into ``--png``::

    python -m benchmarks.quant_bev --data .cache/bev/val --fp32 FP32=.cache/bev/run2/eval_torch \
        --row "PTQ W8A8=.cache/qdbev/ptq_w8a8.eval" --row "QD-BEV W4A6=.cache/qdbev/qdbev_w4a6.eval" \
        --artefact "QD-BEV W4A6=.cache/qdbev/qdbev_w4a6" --png docs/images/qd_bev_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import label_path
from qd_perception.eval.bootstrap import DevkitSplit, paired_bootstrap
from qd_perception.fileio import atomic_write_text


def _interval(d: np.ndarray) -> str:
    lo, hi = np.percentile(d, [5, 95])
    return f"[{lo:+.3f}, {hi:+.3f}]"


def plot_curves(png: Path, curves: dict[str, list[dict]], fp32_nds: float) -> None:
    """NDS after every QAT epoch per row, the FP32 NDS as a line (PNG, atomic). A progressive
    run is scored with the stages enabled at that point (epoch k: the first k stages quantized)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qd_perception.fileio import atomic_output

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, val in curves.items():
        ax.plot([v["epoch"] for v in val], [v["nds"] for v in val], marker="o", label=name)
    ax.axhline(fp32_nds, color="k", ls="--", lw=1, label="FP32")
    ax.set_xlabel("QAT epochs done (progressive: backbone, +neck, +encoder, +decoder, all)")
    ax.set_ylabel("val NDS (synthetic, fresh scenes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="the val dataroot the rows were scored on")
    ap.add_argument("--version", default="v1.0-synthetic")
    ap.add_argument("--split", default="val")
    ap.add_argument("--fp32", required=True, type=label_path, help="LABEL=eval dir of the FP32 model")
    ap.add_argument("--row", type=label_path, action="append", default=[], help="LABEL=eval dir; repeatable")
    ap.add_argument("--artefact", type=label_path, action="append", default=[], help="LABEL=quantize bev dir")
    ap.add_argument("--n-boot", type=int, default=300)
    ap.add_argument("--block", type=int, default=5, help="consecutive keyframes per resampled block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", type=Path, default=None, help="QAT val curves")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    fp_name = args.fp32[0]
    rows = dict([args.fp32, *args.row])
    quant = {n: yaml.safe_load((d / "quant.yaml").read_text()) for n, d in args.artefact}
    metrics = {n: json.loads((d / "metrics.json").read_text()) for n, d in rows.items()}
    split = DevkitSplit(args.data, args.version, args.split)
    boot = paired_bootstrap(split, {n: d / "results_nusc.json" for n, d in rows.items()}, args.n_boot,
                            args.block, args.seed)  # fmt: skip
    print(f"# {args.data} ({args.split}); "
          f"paired bootstrap: {args.n_boot} replicates of {boot.n_blocks} blocks of {args.block} keyframes, "
          "90% intervals of the difference to FP32")  # fmt: skip
    print("| model | NDS | dNDS vs FP32 [90%] | mAP | dmAP [90%] | mATE | mAOE | mAVE | packed MiB | steps |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    out = {}
    for name, m in metrics.items():
        q = quant.get(name, {})
        if name == fp_name:
            d_nds = d_map = "—"
        else:
            diff = boot.diff(name, fp_name)
            d_nds = f"{m['nds'] - metrics[fp_name]['nds']:+.3f} {_interval(diff[:, 1])}"
            d_map = f"{m['map'] - metrics[fp_name]['map']:+.3f} {_interval(diff[:, 0])}"
        size = f"{q['packed_mib']:.2f} ({q['compression']:.1f}x)" if q else "—"
        steps = q.get("steps", "—") if q else "—"
        print(f"| {name} | {m['nds']:.3f} | {d_nds} | {m['map']:.3f} | {d_map} | {m['mate']:.3f} "
              f"| {m['maoe']:.3f} | {m['mave']:.3f} | {size} | {steps} |")  # fmt: skip
        out[name] = {
            "metrics": {k: m[k] for k in ("nds", "map", "mate", "mase", "maoe", "mave", "maae")},
            "bootstrap_nds_std": boot.std(name)[1],
            "quant": {k: q.get(k) for k in ("bits", "method", "packed_mib", "compression", "steps", "val")},
        }
    curves = {n: q["val"] for n, q in quant.items() if q.get("val")}
    if args.png and curves:
        plot_curves(args.png, curves, metrics[fp_name]["nds"])
        print(f"wrote {args.png}")
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
