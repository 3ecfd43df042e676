r"""Error bars for the PTQ ablation: calibration-set spread and evaluation (val-sample) noise.

Two independent sources of noise in a row of ``quant_lidar_ablation.py``:

* **calibration-set choice** — ``--subsets`` takes the ``--work`` dirs of runs that differ only
  in ``--calib-subset`` (disjoint calibration frames) and reports, per row, mean +- std over the
  runs of mAP, NDS and their gap to FP32;
* **evaluation noise** of a 120-keyframe val set — ``--bootstrap label=DIR[,DIR...]`` re-scores
  every row kept in those dirs (``<row>/results_nusc.json``) on the same block-bootstrap
  replicates of the val samples (:mod:`qd_perception.eval.bootstrap`, devkit matching), so the
  spread of each row's gap to FP32 is a *paired* one.

    .venv/bin/python benchmarks/quant_error_bars.py --data .cache/bench/cp_val --split val \
        --subsets .cache/bench/stats/S0,.cache/bench/stats/S1,.cache/bench/stats/S2 \
        --bootstrap pillar=.cache/bench/stats/S0 --n-boot 500 --block 10 \
        --png docs/images/quant_lidar_error_bars.png --json .cache/bench/stats/error_bars.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qd_perception.eval.bootstrap import BootstrapResult, DevkitSplit, MatchedSubmission
from qd_perception.fileio import atomic_write_bytes, atomic_write_json
from qd_perception.quant.calib import ACT_PRESETS

RESULTS = "results_nusc.json"
CALIBRATORS = tuple(ACT_PRESETS)  # minmax, percentile, mse, entropy, uh
#: LiDAR-PTQ stage rows in pipeline order (``quant_lidar_ablation.py`` names), then the final model.
STAGES = ("LiDAR-PTQ: max-min", "+ sparsity grid", "+ TGPL", "+ AdaRound", "LiDAR-PTQ")
#: final LiDAR-PTQ row of a --ptq-final-only run -> the same model's row in a stage-by-stage run.
FINAL_ALIASES = {"INT8 LiDAR-PTQ": "INT8 + AdaRound", "W4A8 LiDAR-PTQ": "W4A8 + AdaRound"}


def row_key(name: str) -> tuple:
    """FP32, then W8A8 calibrators, W8A8 LiDAR-PTQ stages, W4A8 stages; each ORT row after its
    fake-quant twin; anything else last (by name)."""
    if name == "FP32":
        return (0,)
    ort = name.startswith("ORT ")
    base = name.removeprefix("ORT ")
    bits, _, rest = base.partition(" ")
    rest = rest.split(" (")[0]
    group = {"INT8": 1, "W4A8": 2}.get(bits, 3)
    if rest in CALIBRATORS:
        pos = CALIBRATORS.index(rest)
    elif rest in STAGES:
        pos = 10 + STAGES.index(rest)
    else:
        pos = 99
    return (group, pos, ort, name)


def stage_steps(res: BootstrapResult) -> list[tuple[str, str, float, float, float]]:
    """Consecutive LiDAR-PTQ stage rows of ``res`` -> (row, previous row, paired mAP difference,
    2.5 and 97.5 percentiles over the replicates)."""
    out = []
    for bits in ("INT8", "W4A8"):
        rows = [f"{bits} {s}" for s in STAGES[:4] if f"{bits} {s}" in res.reps]
        for prev, row in itertools.pairwise(rows):
            d = res.reps[row][:, 0] - res.reps[prev][:, 0]
            lo, hi = np.percentile(d, [2.5, 97.5])
            out.append((row, prev, res.full[row][0] - res.full[prev][0], float(lo), float(hi)))
    return out


def row_dirs(dirs: list[Path]) -> dict[str, Path]:
    """Row name -> row dir over ``dirs`` (first occurrence wins; FP32 repeated by each run)."""
    rows: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            raise SystemExit(f"not a directory: {d}")
        for sub in sorted(
            d.iterdir(), key=lambda p: (p / RESULTS).stat().st_mtime if (p / RESULTS).exists() else 0
        ):
            if (sub / RESULTS).exists() and (sub / "metrics.json").exists():
                rows.setdefault(sub.name, sub)
    return {n: rows[n] for n in sorted(rows, key=row_key)}


def cached_match(split: DevkitSplit, row: Path) -> MatchedSubmission:
    """Matching is the slow part (~15 s per submission): cache it beside the submission."""
    cache = row / "bootstrap_matches.pkl"
    res = row / RESULTS
    if cache.exists() and cache.stat().st_mtime >= res.stat().st_mtime:
        return pickle.loads(cache.read_bytes())
    sub = split.match_submission(res)
    atomic_write_bytes(cache, pickle.dumps(sub))
    return sub


def bootstrap_group(
    split: DevkitSplit, rows: dict[str, Path], n_boot: int, block: int, seed: int
) -> BootstrapResult:
    from tqdm import tqdm

    subs = {name: cached_match(split, d) for name, d in tqdm(rows.items(), desc="match")}
    tokens = next(iter(subs.values())).sample_tokens
    order = {n: np.array([tokens.index(t) for t in s.sample_tokens]) for n, s in subs.items()}
    blocks = split.scene_blocks(tokens, block)
    rng = np.random.default_rng(seed)
    reps = {n: np.zeros((n_boot, 2)) for n in subs}
    for b in tqdm(range(n_boot), desc="bootstrap"):
        counts = np.zeros(len(tokens), np.int64)
        for k in rng.integers(0, len(blocks), len(blocks)):
            counts[blocks[k]] += 1
        for n, s in subs.items():
            reps[n][b] = split.score_counts(s, counts[order[n]])
    full = {n: split.score_counts(s) for n, s in subs.items()}
    return BootstrapResult(tuple(subs), full, reps, block, len(blocks))


def subset_table(dirs: list[Path]) -> tuple[list[str], dict]:
    """Rows present in every subset dir -> per-run (mAP, NDS) and gaps to that run's FP32 (a run
    without an FP32 row uses the first run's)."""
    per_run = []
    for d in dirs:
        rows = {
            p.name: json.loads((p / "metrics.json").read_text())
            for p in d.iterdir()
            if (p / "metrics.json").exists()
        }
        per_run.append(rows)
    for final, last_stage in FINAL_ALIASES.items():  # a staged run's last stage is its final model
        if any(final in r for r in per_run):
            for r in per_run:
                if final not in r and last_stage in r:
                    r[final] = r[last_stage]
    first = next(r["FP32"] for r in per_run if "FP32" in r)
    fp32 = np.array([[r.get("FP32", first)["map"], r.get("FP32", first)["nds"]] for r in per_run])
    names = [n for n in per_run[0] if all(n in r for r in per_run)]
    names = sorted(names, key=row_key)
    out = {}
    for n in names:
        m = np.array([[r[n]["map"], r[n]["nds"]] for r in per_run])
        out[n] = {"runs": m.tolist(), "gap": (m - fp32).tolist()}  # each run against its own FP32
    return names, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--version", default="v1.0-synthetic")
    ap.add_argument("--split", default="val")
    ap.add_argument("--subsets", default="", help="comma list of --work dirs differing in --calib-subset")
    ap.add_argument("--bootstrap", nargs="*", default=[], help="label=dir[,dir...] (rows incl. FP32)")
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--block", type=int, default=10, help="consecutive keyframes per resampled block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    report: dict = {"n_boot": args.n_boot, "block": args.block}

    sub_names: list[str] = []
    sub_rows: dict = {}
    if args.subsets:
        dirs = [Path(p) for p in args.subsets.split(",")]
        sub_names, sub_rows = subset_table(dirs)
        report["subsets"] = {"dirs": [str(d) for d in dirs], "rows": sub_rows}
        print(
            f"\nCalibration-subset spread over {len(dirs)} disjoint calibration sets (mean +- std, ddof=1):\n"
        )
        print("| model | mAP | NDS | mAP gap to FP32 | NDS gap | mAP gap per subset |")
        print("|---|---|---|---|---|---|")
        for n in sub_names:
            m, g = np.array(sub_rows[n]["runs"]), np.array(sub_rows[n]["gap"])
            sd = m.std(0, ddof=1) if len(m) > 1 else np.zeros(2)
            gs = g.std(0, ddof=1) if len(g) > 1 else np.zeros(2)
            per = ", ".join(f"{x:+.4f}" for x in g[:, 0])
            print(
                f"| {n} | {m[:, 0].mean():.4f} ± {sd[0]:.4f} | {m[:, 1].mean():.4f} ± {sd[1]:.4f} | "
                f"{g[:, 0].mean():+.4f} ± {gs[0]:.4f} | {g[:, 1].mean():+.4f} ± {gs[1]:.4f} | {per} |"
            )

    boots: dict[str, BootstrapResult] = {}
    if args.bootstrap:
        split = DevkitSplit(args.data, args.version, args.split)
        for spec in args.bootstrap:
            label, _, dirs = spec.partition("=")
            rows = row_dirs([Path(p) for p in dirs.split(",")])
            if "FP32" not in rows:
                raise SystemExit(f"{label}: no FP32 row in {dirs}")
            res = bootstrap_group(split, rows, args.n_boot, args.block, args.seed)
            boots[label] = res
            print(
                f"\nEvaluation noise, {label}: paired block bootstrap over {args.split} "
                f"({res.n_blocks} blocks of {args.block} keyframes, {args.n_boot} replicates)\n"
            )
            print(
                "| model | mAP | NDS | mAP std | mAP gap to FP32 | gap std (paired) | gap 95 % interval | "
                "NDS gap | NDS gap std |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            rep_rows = {}
            for n in res.names:
                (m, nds), sd = res.full[n], res.std(n)
                d = res.diff(n, "FP32")
                gm, gn = m - res.full["FP32"][0], nds - res.full["FP32"][1]
                lo, hi = np.percentile(d[:, 0], [2.5, 97.5])
                dsd = d.std(0, ddof=1)
                rep_rows[n] = {
                    "map": m, "nds": nds, "map_std": sd[0], "nds_std": sd[1], "gap_map": gm,
                    "gap_nds": gn, "gap_map_std": float(dsd[0]), "gap_nds_std": float(dsd[1]),
                    "gap_map_ci95": [float(lo), float(hi)],
                }  # fmt: skip
                print(
                    f"| {n} | {m:.4f} | {nds:.4f} | {sd[0]:.4f} | {gm:+.4f} | {dsd[0]:.4f} | "
                    f"[{lo:+.4f}, {hi:+.4f}] | {gn:+.4f} | {dsd[1]:.4f} |"
                )
            steps = stage_steps(res)
            if steps:
                print("\nStage steps (paired mAP difference to the previous stage, 95 % interval):\n")
                print("| step | Δ mAP | 95 % interval |")
                print("|---|---|---|")
                for row, prev, d, lo, hi in steps:
                    print(f"| {prev} -> {row} | {d:+.4f} | [{lo:+.4f}, {hi:+.4f}] |")
            report.setdefault("bootstrap", {})[label] = {
                "dirs": dirs, "blocks": res.n_blocks, "rows": rep_rows,
                "stage_steps": [dict(zip(("row", "prev", "d_map", "lo", "hi"), x, strict=True))
                                for x in steps],
            }  # fmt: skip
    if args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.png and (sub_rows or boots):
        plot(args.png, sub_names, sub_rows, boots)


def plot(png: Path, names: list[str], sub_rows: dict, boots: dict[str, BootstrapResult]) -> None:
    """One panel per bootstrap group: grey = the row's mAP gap to FP32 with its paired-bootstrap
    95 % interval (evaluation noise). The first panel also shows the calibration subsets (blue
    dots: each subset's gap; square: mean +- std), when ``--subsets`` was given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, BootstrapResult | None]] = list(boots.items()) or [("calibration subsets", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for k, (ax, (label, res)) in enumerate(zip(axes[0], panels, strict=True)):
        show_subsets = k == 0 and bool(sub_rows)
        rows = [n for n in (res.names if res is not None else names) if n != "FP32"]
        if show_subsets:
            rows += [n for n in names if n != "FP32" and n not in rows]
        for i, n in enumerate(rows):
            if show_subsets and n in sub_rows:
                g = np.array(sub_rows[n]["gap"])[:, 0]
                ax.plot(np.full(len(g), i - 0.12), g, "o", color="C0", ms=3, alpha=0.7)
                sd = g.std(ddof=1) if len(g) > 1 else 0.0
                ax.errorbar(i - 0.12, g.mean(), yerr=sd, fmt="s", color="C0", capsize=4, ms=5)
            if res is not None and n in res.reps:
                d = res.diff(n, "FP32")[:, 0]
                gap = res.full[n][0] - res.full["FP32"][0]
                lo, hi = np.percentile(d, [2.5, 97.5])
                yerr = [[max(gap - lo, 0.0)], [max(hi - gap, 0.0)]]
                ax.errorbar(i + 0.12, gap, yerr=yerr, fmt="D", color="gray", capsize=3, ms=4)
        if show_subsets:
            ax.plot([], [], "s", color="C0", label="calibration subsets: each (dots), mean ± std")
        if res is not None:
            ax.plot(
                [],
                [],
                "D",
                color="gray",
                label=f"one run + eval noise (paired bootstrap 95 %, {res.n_blocks} blocks)",
            )
        ax.axhline(0, color="k", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(rows)), rows, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("mAP gap to FP32 (synthetic val, devkit)")
        ax.set_title(f"CenterPoint PTQ: {label}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(png)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
